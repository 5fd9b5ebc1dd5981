//! The engine's metrics (docs/operations.md, "Watching"), recorded through the [`metrics`] facade
//! where the facts are known: the committer's one path to the store counts the journal events of
//! each write once it has committed, so a counter never counts a result that a fenced write threw
//! away, and the drivers time each attempt. Without an installed recorder (the default;
//! `--metrics-listen` installs one) every call is a no-op.
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `sagaflow_sagas_started_total` | counter | definition | sagas created by this engine |
//! | `sagaflow_sagas_completed_total` | counter | definition | sagas that reached COMPLETED |
//! | `sagaflow_sagas_compensated_total` | counter | definition | sagas that reached COMPENSATED |
//! | `sagaflow_sagas_needs_attention_total` | counter | definition | entries into NEEDS_ATTENTION |
//! | `sagaflow_sagas_in_flight` | gauge | — | sagas this engine drives now (holding their lease) |
//! | `sagaflow_saga_step_duration_seconds` | histogram | definition, step, phase, outcome | step, compensation and finalizer attempts |
//! | `sagaflow_saga_step_retries_total` | counter | definition, step, phase | retries scheduled after a transient failure |
//! | `sagaflow_saga_compensations_total` | counter | definition, step | compensations that succeeded |
//! | `sagaflow_saga_lease_claims_total` | counter | — | sagas claimed by the poller or an operator's command (recovery after a crash, resumption after a released lease) |
//! | `sagaflow_saga_lease_losses_total` | counter | cause | leases found lost: `fenced` (a write refused by its fencing token), `renewal` (renewal refused or failed past expiry) |
//!
//! `phase` is `forward`, `compensating` or `finalizing`; `outcome` is [`OUTCOME_OK`],
//! [`OUTCOME_BUSINESS_ERROR`] or [`OUTCOME_TRANSIENT_ERROR`] (a timeout is transient). The
//! per-saga counters are per engine: sum them over replicas.

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::{definition::CallKind, state::Phase};

/// Sagas created (counter; label `definition`).
pub const SAGAS_STARTED: &str = "sagaflow_sagas_started_total";
/// Sagas that reached COMPLETED (counter; label `definition`).
pub const SAGAS_COMPLETED: &str = "sagaflow_sagas_completed_total";
/// Sagas that reached COMPENSATED (counter; label `definition`).
pub const SAGAS_COMPENSATED: &str = "sagaflow_sagas_compensated_total";
/// Entries into NEEDS_ATTENTION (counter; label `definition`).
pub const SAGAS_NEEDS_ATTENTION: &str = "sagaflow_sagas_needs_attention_total";
/// Sagas driven by this engine right now (gauge).
pub const SAGAS_IN_FLIGHT: &str = "sagaflow_sagas_in_flight";
/// Duration of each attempt (histogram, seconds; labels `definition`, `step`, `phase`,
/// `outcome`).
pub const STEP_DURATION: &str = "sagaflow_saga_step_duration_seconds";
/// Retries scheduled after a transient failure (counter; labels `definition`, `step`, `phase`).
pub const STEP_RETRIES: &str = "sagaflow_saga_step_retries_total";
/// Compensations that succeeded (counter; labels `definition`, `step`).
pub const COMPENSATIONS: &str = "sagaflow_saga_compensations_total";
/// Sagas claimed by the poller or for an operator's command (counter).
pub const LEASE_CLAIMS: &str = "sagaflow_saga_lease_claims_total";
/// Leases found lost (counter; label `cause`: [`LOSS_FENCED`] or [`LOSS_RENEWAL`]).
pub const LEASE_LOSSES: &str = "sagaflow_saga_lease_losses_total";
/// Counter: sagas whose state row did not decode, parked in NEEDS_ATTENTION by a claim.
pub const UNREADABLE_PARKED: &str = "sagaflow_saga_unreadable_parked_total";
/// Gauge: due sagas of a definition (name, version) this engine does not know, sampled by the
/// poller; a value above 0 for long means no replica runs that version.
pub const UNKNOWN_DEFINITION_DUE: &str = "sagaflow_saga_unknown_definition_due";

/// Label: the definition's name.
pub const LABEL_DEFINITION: &str = "definition";
/// Label: the step's name (`finalize` for the failure finalizer).
pub const LABEL_STEP: &str = "step";
/// Label: `forward`, `compensating` or `finalizing`.
pub const LABEL_PHASE: &str = "phase";
/// Label: how an attempt ended.
pub const LABEL_OUTCOME: &str = "outcome";
/// Label: why a lease was lost.
pub const LABEL_CAUSE: &str = "cause";

/// The attempt succeeded.
pub const OUTCOME_OK: &str = "ok";
/// The attempt failed for good (not retried).
pub const OUTCOME_BUSINESS_ERROR: &str = "business_error";
/// The attempt failed transiently (UNAVAILABLE, a timeout, …): retried.
pub const OUTCOME_TRANSIENT_ERROR: &str = "transient_error";

/// A write was refused because its fencing token no longer matched.
pub const LOSS_FENCED: &str = "fenced";
/// The lease could not be renewed (another engine holds it, or it expired while the database
/// was unreachable).
pub const LOSS_RENEWAL: &str = "renewal";

/// Registers the help text and units of every engine metric with the installed recorder. Call
/// it once after installing the recorder (descriptions given before are lost).
pub fn describe() {
    describe_counter!(SAGAS_STARTED, Unit::Count, "Sagas created by this engine.");
    describe_counter!(
        SAGAS_COMPLETED,
        Unit::Count,
        "Sagas that reached COMPLETED on this engine."
    );
    describe_counter!(
        SAGAS_COMPENSATED,
        Unit::Count,
        "Sagas that reached COMPENSATED on this engine."
    );
    describe_counter!(
        SAGAS_NEEDS_ATTENTION,
        Unit::Count,
        "Sagas parked in NEEDS_ATTENTION by this engine (each entry counts)."
    );
    describe_gauge!(
        SAGAS_IN_FLIGHT,
        Unit::Count,
        "Sagas this engine is driving now (holding their lease)."
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Duration of each step, compensation and finalizer attempt."
    );
    describe_counter!(
        STEP_RETRIES,
        Unit::Count,
        "Retries scheduled after a transient failure of a step, compensation or finalizer."
    );
    describe_counter!(COMPENSATIONS, Unit::Count, "Compensations that succeeded.");
    describe_counter!(
        LEASE_CLAIMS,
        Unit::Count,
        "Sagas claimed by the poller (orphaned or due) or for an operator's command."
    );
    describe_counter!(
        UNREADABLE_PARKED,
        Unit::Count,
        "Sagas whose state row did not decode, parked in NEEDS_ATTENTION by a claim."
    );
    describe_gauge!(
        UNKNOWN_DEFINITION_DUE,
        Unit::Count,
        "Due sagas of a definition version this engine does not know (left to other replicas)."
    );
    describe_counter!(
        LEASE_LOSSES,
        Unit::Count,
        "Leases found lost: a fenced write or a refused renewal; the result is thrown away."
    );
}

/// The `phase` label of a call kind.
pub(crate) fn phase_of(kind: CallKind) -> &'static str {
    match kind {
        CallKind::Action => Phase::Forward.as_str(),
        CallKind::Compensation => Phase::Compensating.as_str(),
        CallKind::Finalizer => Phase::Finalizing.as_str(),
    }
}

/// One attempt took `seconds` and ended with `outcome`.
pub(crate) fn attempt_finished(
    definition: &str,
    step: &'static str,
    kind: CallKind,
    outcome: &'static str,
    seconds: f64,
) {
    metrics::histogram!(
        STEP_DURATION,
        LABEL_DEFINITION => definition.to_owned(),
        LABEL_STEP => step,
        LABEL_PHASE => phase_of(kind),
        LABEL_OUTCOME => outcome,
    )
    .record(seconds);
}

/// Exports every engine counter at zero for `definitions` (names), so that the first saga to
/// park, compensate or lose a lease after a start is an increase an alert rule can see (a series
/// that first appears at 1 is no increase).
pub(crate) fn initialize<'a>(definitions: impl IntoIterator<Item = &'a str>) {
    for definition in definitions {
        for name in [
            SAGAS_STARTED,
            SAGAS_COMPLETED,
            SAGAS_COMPENSATED,
            SAGAS_NEEDS_ATTENTION,
        ] {
            counter!(name, LABEL_DEFINITION => definition.to_owned()).increment(0);
        }
    }
    counter!(LEASE_CLAIMS).increment(0);
    for cause in [LOSS_FENCED, LOSS_RENEWAL] {
        counter!(LEASE_LOSSES, LABEL_CAUSE => cause).increment(0);
    }
    counter!(UNREADABLE_PARKED).increment(0);
}

/// `count` sagas were claimed.
pub(crate) fn claimed(count: usize) {
    counter!(LEASE_CLAIMS).increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// A lease was found lost.
pub(crate) fn lease_lost(cause: &'static str) {
    counter!(LEASE_LOSSES, LABEL_CAUSE => cause).increment(1);
}

/// Counts a driver in [`SAGAS_IN_FLIGHT`] from creation to drop (also when its task is aborted).
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn enter() -> Self {
        gauge!(SAGAS_IN_FLIGHT).increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(SAGAS_IN_FLIGHT).decrement(1.0);
    }
}
