//! The per-saga driver (docs/architecture.md, "The engine" (Scheduling)): owns one saga while
//! it holds the lease, asks the [`crate::planner`] what is next, calls the action with the
//! step's idempotency key, and records the result together with the next step's start in
//! **one** fenced commit. A fenced commit means the lease was lost: the result is thrown away
//! and the driver stops.
//!
//! Before every call the driver checks that its lease is valid for at least a third of the
//! lease duration (renewing it if not) and renews it every third of the lease while the call
//! runs; so no step of a saga starts after another engine took it over or after it ended.
//!
//! Tracing (docs/operations.md, "Watching"): every attempt of a step, compensation or finalizer
//! runs inside a `saga.step` span (`saga.id`, `saga.definition`, `saga.step`, `saga.attempt`,
//! `saga.phase`, `saga.outcome`) whose parent is the trace context saved when the saga started, set
//! before the span is first entered, so the service calls the step makes (through traced channels)
//! and their server spans join the trace of the request that started the saga — also after a crash
//! or on another replica. A driver whose saga was claimed by the poller (an orphaned lease after a
//! crash, or a saga resumed after a released lease) links each step span to the poller's
//! `saga.claim` span; one resumed by CancelSaga/RetrySaga links to the operator's request. Metrics:
//! [`crate::metrics`].

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt;
use sagaflow_telemetry::{propagation, semconv};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, field::Empty};

use crate::{
    definition::{
        ActionRef, CallKind, FINALIZER, SagaDefinition, StepContext, StepError, StepKind,
    },
    journal::{self, Event},
    metrics::{self as saga_metrics, InFlight},
    planner::{self, Next},
    shared::{Shared, jitter},
    state::{SagaId, SagaState, SagaStatus},
    store::{Write, WriteOutcome},
};

/// Spawns a tracked driver for a leased saga; `permit` is taken when `None`. `claimed_by`
/// is the `traceparent` of the span that claimed the saga (its step spans link to it).
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    state: SagaState,
    permit: Option<OwnedSemaphorePermit>,
    leased_at: i64,
    claimed_by: Option<String>,
) {
    let inner = shared.clone();
    shared.spawn_tracked(async move {
        let permit = match permit {
            Some(p) => p,
            None => match inner.permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        Driver::new(inner.clone(), state, leased_at, claimed_by)
            .run()
            .await;
        drop(permit);
        inner.slot_freed();
    });
}

/// Claims saga `id` and drives it, in a tracked task (after CancelSaga and RetrySaga). The
/// steps it runs link to the current span (the operator's request).
pub(crate) fn spawn_claim(shared: &Arc<Shared>, id: SagaId) {
    let inner = shared.clone();
    let requested_by = propagation::current_traceparent();
    shared.spawn_tracked(async move {
        let Ok(permit) = inner.permits.clone().acquire_owned().await else {
            return;
        };
        inner.sync_clock().await;
        let now = inner.now();
        let claimed = {
            let plan = planner::claim_plan(&inner.owner, now.saturating_add(inner.lease_ms));
            inner.store.claim(id, now, &plan).await
        };
        match claimed {
            Ok(Some(state)) => {
                fail::fail_point!("after_claim");
                saga_metrics::claimed(1);
                Driver::new(inner, state, now, requested_by).run().await;
                drop(permit);
            }
            Ok(None) => inner.kick.notify_one(),
            Err(err) => {
                tracing::warn!(saga.id = %id, error = %err, "claim failed; the poller will retry");
            }
        }
    });
}

/// Why a driver stops driving its saga.
#[derive(Debug)]
enum Stop {
    /// The saga is at rest or no longer ours.
    Done,
}

/// Drives one leased saga until it rests, waits long, loses its lease or the engine stops.
struct Driver {
    inner: Arc<Shared>,
    state: SagaState,
    /// Unix ms until which this driver knows its lease is valid (measured from before the write
    /// that set it, so it errs early).
    lease_valid_until: i64,
    /// `traceparent` of the span that claimed the saga (the poller's `saga.claim`, an
    /// operator's request): every step span of this driver links to it. `None` for a saga this
    /// engine started.
    claimed_by: Option<String>,
}

impl Driver {
    fn new(
        inner: Arc<Shared>,
        state: SagaState,
        leased_at: i64,
        claimed_by: Option<String>,
    ) -> Self {
        let lease_valid_until = leased_at.saturating_add(inner.lease_ms);
        Self {
            inner,
            state,
            lease_valid_until,
            claimed_by,
        }
    }

    async fn run(mut self) {
        let _in_flight = InFlight::enter();
        let _ = self.drive().await;
        if !self.state.status().is_active() {
            let _ = self.inner.rested.send((self.state.id, self.state.status()));
        }
    }

    async fn drive(&mut self) -> Result<(), Stop> {
        let def = match self.inner.definition_of(&self.state) {
            Ok(def) => def,
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "cannot drive saga: releasing it");
                return self.release().await;
            }
        };
        loop {
            if self.inner.shutdown.is_cancelled() {
                return self.release().await;
            }
            let now = self.inner.now();
            let next = match planner::next(&def, &self.state, now) {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(saga.id = %self.state.id, error = %err, "ALERT: saga parked in NEEDS_ATTENTION");
                    let reason = err.to_string();
                    self.record(vec![Event::SagaNeedsAttention { reason }])
                        .await?;
                    continue;
                }
            };
            match next {
                Next::Idle => return Ok(()),
                Next::Record(events) => self.record(events).await?,
                Next::WaitUntil(at) => {
                    if at - now > self.inner.max_local_wait_ms {
                        return self.release().await;
                    }
                    self.wait_until(at).await?;
                }
                Next::Forward(index) => {
                    let step = &def.steps()[index];
                    let mut timeout_ms = step.timeout();
                    if let (Some(deadline), true) =
                        (self.state.deadline_at, index < def.point_of_no_return())
                    {
                        let left = u64::try_from(deadline - now).unwrap_or(0).max(1);
                        timeout_ms = timeout_ms.min(left);
                    }
                    self.ensure_lease().await?;
                    fail::fail_point!("before_step_call");
                    let result = self
                        .call(
                            &def,
                            step.action(),
                            step.name(),
                            CallKind::Action,
                            timeout_ms,
                        )
                        .await?;
                    fail::fail_point!("after_step_reply_before_record");
                    let answered = self.inner.now();
                    let events = planner::after_forward(
                        &def,
                        &self.state,
                        index,
                        result,
                        answered,
                        jitter(),
                    )
                    .map_err(|e| self.plan_failed(&e))?;
                    self.record_at(answered, events).await?;
                    fail::fail_point!("after_step_recorded");
                }
                Next::Compensate(index) => {
                    let step = &def.steps()[index];
                    let Some(compensation) = step.compensation_action() else {
                        tracing::error!(saga.id = %self.state.id, step = step.name(), "no compensation to run");
                        return Err(Stop::Done);
                    };
                    self.ensure_lease().await?;
                    let result = self
                        .call(
                            &def,
                            compensation,
                            step.name(),
                            CallKind::Compensation,
                            step.timeout(),
                        )
                        .await?;
                    fail::fail_point!("in_compensation");
                    if let Err(err) = &result
                        && !err.retryable
                    {
                        tracing::error!(saga.id = %self.state.id, step = step.name(), error = %err,
                            "ALERT: compensation failed for good; saga needs attention");
                    }
                    let answered = self.inner.now();
                    let events = planner::after_compensation(
                        &def,
                        &self.state,
                        index,
                        result,
                        answered,
                        jitter(),
                    )
                    .map_err(|e| self.plan_failed(&e))?;
                    self.record_at(answered, events).await?;
                }
                Next::Finalize => {
                    let Some(finalizer) = def.finalizer() else {
                        return Err(Stop::Done);
                    };
                    self.ensure_lease().await?;
                    let result = self
                        .call(
                            &def,
                            finalizer,
                            FINALIZER,
                            CallKind::Finalizer,
                            def.finalizer_timeout_ms(),
                        )
                        .await?;
                    if let Err(err) = &result
                        && !err.retryable
                    {
                        tracing::error!(saga.id = %self.state.id, error = %err,
                            "ALERT: failure finalizer failed for good; saga needs attention");
                    }
                    let answered = self.inner.now();
                    let events =
                        planner::after_finalizer(&def, &self.state, result, answered, jitter());
                    self.record_at(answered, events).await?;
                }
            }
        }
    }

    fn plan_failed(&self, err: &planner::PlanError) -> Stop {
        tracing::error!(saga.id = %self.state.id, error = %err, "cannot plan the saga's next step");
        Stop::Done
    }

    /// The complete context of one attempt of `step` (`kind`) that starts now and may run for
    /// `timeout_ms`: its key, its inputs, and its deadline on both clocks.
    fn context(
        &self,
        def: &SagaDefinition,
        step: &'static str,
        kind: CallKind,
        timeout_ms: u64,
    ) -> StepContext {
        // After an operator retry, calls carry the next key generation — except the pivot's
        // action: a pivot is parked only when its outcome is unknown, and its retry must learn
        // the fate of the original request under the original key.
        let pivot = kind == CallKind::Action
            && def
                .step(step)
                .is_some_and(|(_, s)| s.kind() == StepKind::Pivot);
        let generation = if pivot { 0 } else { self.state.generation };
        let started = self.inner.now();
        let timer = tokio::time::Instant::now();
        StepContext {
            saga_id: self.state.id,
            step,
            kind,
            attempt: self.state.attempt,
            idempotency_key: planner::idempotency_key(self.state.id, step, kind, generation),
            input: self.state.input.clone(),
            outputs: self.state.outputs.clone(),
            deadline_ms: started.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX)),
            deadline: timer
                .checked_add(Duration::from_millis(timeout_ms))
                .unwrap_or_else(|| timer + Duration::from_secs(86_400)),
            failure_reason: self.state.failure_reason.clone(),
            trace_context: self.state.trace_context.clone(),
        }
    }

    /// Runs one attempt of `action` (step `step`, `kind`) with its timeout, renewing the lease
    /// while it runs. A panicking action counts as a transient INTERNAL failure. `Err` when the
    /// lease was lost meanwhile.
    async fn call(
        &mut self,
        def: &SagaDefinition,
        action: &ActionRef,
        step: &'static str,
        kind: CallKind,
        timeout_ms: u64,
    ) -> Result<Result<Value, StepError>, Stop> {
        let timer = tokio::time::Instant::now();
        let ctx = self.context(def, step, kind, timeout_ms);
        let attempt = ctx.attempt;
        let deadline = ctx.deadline;
        let span = self.step_span(step, attempt, kind);
        let run = AssertUnwindSafe(action.run(ctx).instrument(span.clone())).catch_unwind();
        let attempt_fut = tokio::time::timeout_at(deadline, run);
        tokio::pin!(attempt_fut);
        let renew_every =
            Duration::from_millis(u64::try_from(self.inner.lease_ms / 3).unwrap_or(1).max(1));
        loop {
            tokio::select! {
                outcome = &mut attempt_fut => {
                    let result = match outcome {
                        Err(_) => Err(StepError::timed_out(timeout_ms)),
                        Ok(Err(_panic)) => Err(StepError::internal(format!("the {step} call panicked"))),
                        Ok(Ok(result)) => result,
                    };
                    let outcome = match &result {
                        Ok(_) => saga_metrics::OUTCOME_OK,
                        Err(err) if err.retryable => saga_metrics::OUTCOME_TRANSIENT_ERROR,
                        Err(_) => saga_metrics::OUTCOME_BUSINESS_ERROR,
                    };
                    saga_metrics::attempt_finished(
                        &self.state.definition_name,
                        step,
                        kind,
                        outcome,
                        timer.elapsed().as_secs_f64(),
                    );
                    span.record(semconv::SAGA_OUTCOME, outcome);
                    if let Err(err) = &result {
                        span.record(semconv::OTEL_STATUS_CODE, "error");
                        span.in_scope(|| {
                            tracing::debug!(saga.id = %self.state.id, saga.step = step, saga.attempt = attempt,
                                error = %err, "step attempt failed");
                        });
                    }
                    return Ok(result);
                }
                () = tokio::time::sleep(renew_every) => self.renew().await?,
            }
        }
    }

    /// The span of one attempt: parented to the saga's stored trace context (before it is first
    /// entered: tracing-opentelemetry ignores a parent set later) and linked to the claim that
    /// handed the saga to this driver.
    fn step_span(&self, step: &'static str, attempt: u32, kind: CallKind) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "saga.step",
            { semconv::SAGA_ID } = %self.state.id,
            { semconv::SAGA_DEFINITION } = %self.state.definition_name,
            { semconv::SAGA_STEP } = step,
            // i64: tracing-opentelemetry exports unsigned integers as strings.
            { semconv::SAGA_ATTEMPT } = i64::from(attempt),
            { semconv::SAGA_PHASE } = saga_metrics::phase_of(kind),
            { semconv::SAGA_OUTCOME } = Empty,
            { semconv::OTEL_STATUS_CODE } = Empty,
        );
        if let Some(tp) = &self.state.trace_context {
            propagation::set_parent_from_traceparent(&span, tp);
        }
        if let Some(tp) = &self.claimed_by {
            propagation::link_to_traceparent(&span, tp);
        }
        span
    }

    /// Makes sure the lease stays valid for at least a third of its duration before a call.
    async fn ensure_lease(&mut self) -> Result<(), Stop> {
        if self.inner.now().saturating_add(self.inner.lease_ms / 3) >= self.lease_valid_until {
            self.renew().await?;
        }
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), Stop> {
        let now = self.inner.now();
        let until = now.saturating_add(self.inner.lease_ms);
        match self
            .inner
            .store
            .renew_lease(
                self.state.id,
                &self.inner.owner,
                self.state.fencing_token,
                until,
            )
            .await
        {
            Ok(true) => {
                self.lease_valid_until = until;
                self.state.lease_expires_at = Some(until);
                Ok(())
            }
            Ok(false) => {
                saga_metrics::lease_lost(saga_metrics::LOSS_RENEWAL);
                if self.inner.was_taken_over(self.state.id) {
                    tracing::debug!(saga.id = %self.state.id, "an operator command took the saga over");
                } else {
                    tracing::warn!(saga.id = %self.state.id, "lease lost; stopping this saga's driver");
                }
                Err(Stop::Done)
            }
            Err(err) if now < self.lease_valid_until => {
                tracing::warn!(saga.id = %self.state.id, error = %err, "lease renewal failed; lease still valid");
                Ok(())
            }
            Err(err) => {
                saga_metrics::lease_lost(saga_metrics::LOSS_RENEWAL);
                tracing::warn!(saga.id = %self.state.id, error = %err, "lease renewal failed and the lease expired");
                Err(Stop::Done)
            }
        }
    }

    async fn wait_until(&mut self, at: i64) -> Result<(), Stop> {
        loop {
            let now = self.inner.now();
            if now >= at {
                return Ok(());
            }
            self.ensure_lease().await?;
            let nap = u64::try_from(at - now)
                .unwrap_or(0)
                .min(u64::try_from(self.inner.lease_ms / 3).unwrap_or(1).max(1));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(nap)) => {}
                () = self.inner.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Journals `events` and the resulting state in one fenced commit (renewing the lease).
    async fn record(&mut self, events: Vec<Event>) -> Result<(), Stop> {
        let now = self.inner.now();
        self.record_at(now, events).await
    }

    /// [`Self::record`] with the entries stamped `now` (the time the planner decided them at,
    /// so that a retry's `next_attempt_at` and its entry's time are one time line).
    async fn record_at(&mut self, now: i64, events: Vec<Event>) -> Result<(), Stop> {
        let (mut next, entries) = match journal::append(&self.state, now, events) {
            Ok(x) => x,
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "invalid transition");
                return Err(Stop::Done);
            }
        };
        if next.lease_owner.is_some() {
            next.lease_expires_at = Some(now.saturating_add(self.inner.lease_ms));
        }
        let write = Write::Transition {
            expected_token: self.state.fencing_token,
            expected_seq: self.state.last_seq,
            state: next.clone(),
            entries,
        };
        match self.inner.commit(write).await {
            Ok(WriteOutcome::Applied) => {
                if next.lease_owner.is_some() {
                    self.lease_valid_until = now.saturating_add(self.inner.lease_ms);
                }
                if next.status() == SagaStatus::NeedsAttention
                    && self.state.status() != next.status()
                {
                    tracing::error!(saga.id = %next.id, step = ?next.current_step(),
                        error = ?next.last_error, "ALERT: saga needs attention");
                }
                if next.status().is_finished() && !self.state.status().is_finished() {
                    // The one INFO line of a saga (docs/operations.md, "Watching"); outside the
                    // step's span so that it carries only its own fields.
                    tracing::info!(parent: None, saga.id = %next.id, saga.definition = %next.definition_name,
                        status = next.status().as_str(), reason = next.failure_reason.as_deref().unwrap_or(""),
                        took_ms = now.saturating_sub(next.created_at), "saga finished");
                }
                self.state = next;
                Ok(())
            }
            Ok(_) => {
                if self.inner.was_taken_over(self.state.id) {
                    tracing::debug!(saga.id = %self.state.id, "an operator command took the saga over; result thrown away");
                } else {
                    tracing::warn!(saga.id = %self.state.id, "write fenced: lease lost, result thrown away");
                }
                Err(Stop::Done)
            }
            Err(err) => {
                tracing::error!(saga.id = %self.state.id, error = %err, "cannot record; the lease will expire and the saga be recovered");
                Err(Stop::Done)
            }
        }
    }

    async fn release(&mut self) -> Result<(), Stop> {
        if self.state.lease_owner.as_deref() != Some(self.inner.owner.as_str()) {
            return Ok(());
        }
        let owner = self.inner.owner.clone();
        self.record(vec![Event::LeaseReleased { owner }]).await
    }
}
