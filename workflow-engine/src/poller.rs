//! The poller (docs/architecture.md, "The engine" (Scheduling) and "Recovery"): every poll
//! interval (jittered), or when kicked, claims due and orphaned sagas in batches — as many as
//! there are free driver slots — and hands each to a driver.

use std::sync::{Arc, atomic::Ordering};

use sagaflow_telemetry::{propagation, semconv};

use crate::{
    driver, metrics as saga_metrics, planner,
    shared::{Shared, jitter},
};

/// How often the poller counts due sagas of unknown definitions, milliseconds.
const UNKNOWN_COUNT_INTERVAL_MS: i64 = 30_000;

/// The poller: claims due and orphaned sagas in batches, as many as there are free driver slots.
pub(crate) async fn run_poller(inner: Arc<Shared>) {
    if inner.sole_owner {
        match inner.store.expire_leases().await {
            Ok(0) => {}
            Ok(orphaned) => {
                tracing::info!(
                    orphaned,
                    "resuming the sagas a crashed predecessor left running"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot expire the leases left at start-up; they expire on their own")
            }
        }
    }
    let mut again = true;
    loop {
        if !again {
            // Jittered (0.5–1.5 × the interval), so that replicas started together do not poll
            // in lockstep and a recovering fleet spreads its claims.
            let nap = inner.poll_interval.mul_f64(0.5 + jitter());
            tokio::select! {
                () = inner.shutdown.cancelled() => break,
                () = tokio::time::sleep(nap) => {}
                () = inner.kick.notified() => {}
            }
        }
        if inner.shutdown.is_cancelled() {
            break;
        }
        again = false;
        let mut permits = Vec::new();
        while permits.len() < inner.batch_size as usize {
            match inner.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if permits.is_empty() {
            // Every driver slot is busy and there may be more work: the next driver to finish
            // wakes the poller instead of leaving its slot idle until the next interval.
            inner.backlog.store(true, Ordering::Relaxed);
            continue;
        }
        let limit = u32::try_from(permits.len()).unwrap_or(inner.batch_size);
        inner.sync_clock().await;
        let now = inner.now();
        count_unknown_definitions(&inner, now).await;
        let plan = planner::claim_plan(&inner.owner, now.saturating_add(inner.lease_ms));
        match inner.store.claim_due(now, limit, &inner.known, &plan).await {
            Ok(claimed) => {
                if claimed.is_empty() {
                    continue;
                }
                fail::fail_point!("after_claim");
                again = claimed.len() == permits.len();
                if again {
                    inner.backlog.store(true, Ordering::Relaxed);
                }
                saga_metrics::claimed(claimed.len());
                // The recovery's own span (a new trace: the poller serves no request). It links
                // to each saga's trace and each step the drivers run links back to it. Created
                // only when something was claimed, so idle polls export nothing.
                let claim = tracing::info_span!(
                    parent: None,
                    "saga.claim",
                    { semconv::SAGA_OWNER } = %inner.owner,
                    { semconv::SAGA_CLAIMED } = i64::try_from(claimed.len()).unwrap_or(i64::MAX),
                );
                for state in &claimed {
                    if let Some(tp) = &state.trace_context {
                        propagation::link_to_traceparent(&claim, tp);
                    }
                }
                let claimed_by = propagation::traceparent_of(&claim);
                let _entered = claim.enter();
                tracing::debug!(count = claimed.len(), "claimed sagas");
                for state in claimed {
                    let Some(permit) = permits.pop() else { break };
                    tracing::debug!(saga.id = %state.id, fencing_token = state.fencing_token, "saga claimed");
                    driver::spawn(&inner, state, Some(permit), now, claimed_by.clone());
                }
            }
            Err(err) => tracing::warn!(error = %err, "claiming due sagas failed"),
        }
    }
}

/// Every [`UNKNOWN_COUNT_INTERVAL_MS`], counts the due sagas of definitions this engine does
/// not know (it never claims them) into a gauge, and warns when there are any.
async fn count_unknown_definitions(shared: &Shared, now: i64) {
    let last = shared.unknown_counted_at.load(Ordering::Relaxed);
    let local = shared.clock.local_ms();
    if last != i64::MIN && local.saturating_sub(last) < UNKNOWN_COUNT_INTERVAL_MS {
        return;
    }
    shared.unknown_counted_at.store(local, Ordering::Relaxed);
    match shared.store.count_due_elsewhere(now, &shared.known).await {
        Ok(count) => {
            #[allow(clippy::cast_precision_loss)] // a count of sagas fits an f64 exactly
            metrics::gauge!(saga_metrics::UNKNOWN_DEFINITION_DUE).set(count as f64);
            if count > 0 {
                tracing::warn!(count, known = ?shared.known,
                    "due sagas of a definition version this engine does not know: left to a replica that knows it");
            }
        }
        Err(err) => tracing::debug!(error = %err, "cannot count sagas of unknown definitions"),
    }
}
