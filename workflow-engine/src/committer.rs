//! The group committer (docs/architecture.md, "The engine" (Scheduling)): takes the writes of
//! every driver and commits them in batches, one transaction per batch. There is one committer
//! per parallel writer of the store ([`SagaStore::write_parallelism`]); a saga's writes always
//! go to the committer its id hashes to, so they stay in order.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use metrics::counter;

use crate::{
    definition::FINALIZER,
    journal::{Event, FailureOutcome},
    metrics::{
        self as saga_metrics, COMPENSATIONS, LABEL_DEFINITION, LABEL_PHASE, LABEL_STEP,
        LOSS_FENCED, SAGAS_COMPENSATED, SAGAS_COMPLETED, SAGAS_NEEDS_ATTENTION, SAGAS_STARTED,
        STEP_RETRIES,
    },
    state::Phase,
    store::{SagaStore, StoreError, Write, WriteOutcome},
};

/// Capacity of the committer's queue: drivers wait when it is full (back-pressure).
pub(crate) const COMMIT_QUEUE_CAPACITY: usize = 4096;
/// Longest pause between retries of a failing database write, milliseconds.
const MAX_WRITE_BACKOFF_MS: u64 = 1_000;

struct CommitRequest {
    write: Write,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// The senders to every committer: where drivers and starts send their writes.
#[derive(Debug, Clone)]
pub(crate) struct Committers {
    /// One queue per committer; a saga's writes always go to the same one.
    queues: Vec<mpsc::Sender<CommitRequest>>,
}

impl std::fmt::Debug for CommitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitRequest").finish_non_exhaustive()
    }
}

/// The running committers: their tasks and the token that stops them.
#[derive(Debug)]
pub(crate) struct CommitterTasks {
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl CommitterTasks {
    /// Stops the committers (they answer what is queued first) and waits for them.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::error!(%err, "saga committer failed");
            }
        }
    }
}

/// Starts one committer per parallel writer of `store` on `runtime`, each committing at most
/// `batch_size` writes per transaction.
pub(crate) fn start(
    store: &Arc<dyn SagaStore>,
    batch_size: usize,
    runtime: &tokio::runtime::Handle,
) -> (Committers, CommitterTasks) {
    let writers = store.write_parallelism().max(1);
    let stop = CancellationToken::new();
    let mut queues = Vec::with_capacity(writers);
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let (tx, rx) = mpsc::channel::<CommitRequest>(COMMIT_QUEUE_CAPACITY);
        queues.push(tx);
        tasks.push(runtime.spawn(run_committer(
            store.clone(),
            rx,
            batch_size.max(1),
            stop.clone(),
        )));
    }
    (Committers { queues }, CommitterTasks { tasks, stop })
}

impl Committers {
    /// Sends a write to its committer and waits for its outcome; counts what the write made
    /// true once it committed ([`crate::metrics`]).
    pub(crate) async fn commit(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let id = match &write {
            Write::Create { state, .. } | Write::Transition { state, .. } => state.id,
        };
        let facts = Facts::of(&write);
        let shard = usize::try_from(id.0.as_u128() % self.queues.len() as u128).unwrap_or(0);
        self.queues[shard]
            .send(CommitRequest { write, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        let outcome = outcome.await.map_err(|_| StoreError::Stopped)??;
        facts.record(&outcome);
        Ok(outcome)
    }
}

/// The committer: takes writes from every driver and commits them in batches (group commit).
/// Transient database errors are retried indefinitely with capped backoff until the engine
/// stops; a batch failing otherwise is split so that only the bad write fails.
async fn run_committer(
    store: Arc<dyn SagaStore>,
    mut requests: mpsc::Receiver<CommitRequest>,
    batch_size: usize,
    stop: CancellationToken,
) {
    let mut batch: Vec<CommitRequest> = Vec::with_capacity(batch_size);
    loop {
        tokio::select! {
            biased;
            received = requests.recv_many(&mut batch, batch_size) => {
                if received == 0 {
                    break;
                }
            }
            () = stop.cancelled() => {
                // Drivers have finished; answer anything left and stop.
                requests.close();
                while let Ok(req) = requests.try_recv() {
                    batch.push(req);
                }
                if batch.is_empty() {
                    break;
                }
            }
        }
        let writes: Vec<Write> = batch.iter().map(|r| r.write.clone()).collect();
        let outcomes = commit_with_retry(store.as_ref(), &writes, &stop).await;
        match outcomes {
            Ok(outcomes) => {
                for (req, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = req.reply.send(Ok(outcome));
                }
            }
            Err(err) if batch.len() > 1 && !err.is_transient() => {
                tracing::warn!(error = %err, "group commit failed; committing its writes one by one");
                for req in batch.drain(..) {
                    let result =
                        commit_with_retry(store.as_ref(), std::slice::from_ref(&req.write), &stop)
                            .await
                            .and_then(|mut o| {
                                o.pop()
                                    .ok_or_else(|| StoreError::Corrupt("no outcome".into()))
                            });
                    let _ = req.reply.send(result);
                }
            }
            Err(err) => {
                // Every write of the batch reports the batch's one error.
                let err = Arc::new(err);
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Batch(err.clone())));
                }
            }
        }
        if stop.is_cancelled() && requests.is_closed() && requests.is_empty() {
            break;
        }
    }
}

async fn commit_with_retry(
    store: &dyn SagaStore,
    writes: &[Write],
    stop: &CancellationToken,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut backoff_ms = 10;
    loop {
        match store.commit(writes).await {
            Err(err) if err.is_transient() && !stop.is_cancelled() => {
                tracing::warn!(error = %err, backoff_ms, "saga store write failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    () = stop.cancelled() => return Err(err),
                }
                backoff_ms = (backoff_ms * 2).min(MAX_WRITE_BACKOFF_MS);
            }
            other => return other,
        }
    }
}

/// What a write makes true once committed: taken from the write before it goes to the
/// committer, recorded with its outcome ([`Facts::record`]).
#[derive(Debug)]
pub(crate) struct Facts {
    definition: String,
    create: bool,
    counted: Vec<Counted>,
}

#[derive(Debug, PartialEq)]
enum Counted {
    Retry(String, Phase),
    Compensation(String),
    Completed,
    Compensated,
    NeedsAttention,
}

impl Facts {
    /// The facts of `write` (only the events that some metric counts are kept).
    pub(crate) fn of(write: &Write) -> Self {
        let (state, entries, create) = match write {
            Write::Create { state, entries } => (state, entries, true),
            Write::Transition { state, entries, .. } => (state, entries, false),
        };
        let counted = entries
            .iter()
            .filter_map(|entry| match &entry.event {
                Event::StepFailed {
                    step,
                    outcome: FailureOutcome::Retry,
                    ..
                } => Some(Counted::Retry(step.clone(), Phase::Forward)),
                Event::CompensationFailed {
                    step,
                    next_attempt_at: Some(_),
                    ..
                } => Some(Counted::Retry(step.clone(), Phase::Compensating)),
                Event::FinalizerFailed {
                    next_attempt_at: Some(_),
                    ..
                } => Some(Counted::Retry(FINALIZER.to_owned(), Phase::Finalizing)),
                Event::CompensationSucceeded { step, .. } => {
                    Some(Counted::Compensation(step.clone()))
                }
                Event::SagaCompleted {} => Some(Counted::Completed),
                Event::SagaCompensated {} => Some(Counted::Compensated),
                Event::SagaNeedsAttention { .. } => Some(Counted::NeedsAttention),
                _ => None,
            })
            .collect();
        Self {
            definition: state.definition_name.clone(),
            create,
            counted,
        }
    }

    /// Counts the facts if the write took effect (`Created`, `Applied`); a fenced write counts
    /// as a lost lease and nothing else.
    pub(crate) fn record(self, outcome: &WriteOutcome) {
        match outcome {
            WriteOutcome::Created | WriteOutcome::Applied => {}
            WriteOutcome::Fenced => {
                saga_metrics::lease_lost(LOSS_FENCED);
                return;
            }
            WriteOutcome::Exists(_) => return,
        }
        let definition = || self.definition.clone();
        if self.create {
            counter!(SAGAS_STARTED, LABEL_DEFINITION => definition()).increment(1);
        }
        for fact in &self.counted {
            match fact {
                Counted::Retry(step, phase) => counter!(
                    STEP_RETRIES,
                    LABEL_DEFINITION => definition(),
                    LABEL_STEP => step.clone(),
                    LABEL_PHASE => phase.as_str(),
                )
                .increment(1),
                Counted::Compensation(step) => counter!(
                    COMPENSATIONS,
                    LABEL_DEFINITION => definition(),
                    LABEL_STEP => step.clone(),
                )
                .increment(1),
                Counted::Completed => {
                    counter!(SAGAS_COMPLETED, LABEL_DEFINITION => definition()).increment(1);
                }
                Counted::Compensated => {
                    counter!(SAGAS_COMPENSATED, LABEL_DEFINITION => definition()).increment(1);
                }
                Counted::NeedsAttention => {
                    counter!(SAGAS_NEEDS_ATTENTION, LABEL_DEFINITION => definition()).increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        definition::{CallKind, StepError},
        journal::{self, JournalEntry},
        metrics::{InFlight, OUTCOME_OK, attempt_finished, claimed},
        state::SagaId,
    };

    fn render(record: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, record);
        recorder.handle().render()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// The state and entries of a new saga of definition `order` with `business_key`.
    fn started(business_key: &str) -> (crate::state::SagaState, Vec<JournalEntry>) {
        journal::begin(
            SagaId::new(),
            1,
            vec![Event::SagaStarted {
                definition_name: "order".into(),
                definition_version: 1,
                business_key: business_key.into(),
                input: json!({}),
                deadline_at: None,
                trace_context: None,
            }],
        )
        .unwrap()
    }

    /// The create of a new saga with `business_key`.
    fn create(business_key: &str) -> Write {
        let (state, entries) = started(business_key);
        Write::Create { state, entries }
    }

    /// A committer that stopped answers every later write with the typed, transient
    /// `StoreError::Stopped`, and nothing of that write reaches the store.
    #[tokio::test]
    async fn a_stopped_committer_answers_stopped() {
        let store: Arc<dyn SagaStore> = Arc::new(crate::store::MemorySagaStore::new());
        let (committers, tasks) = start(&store, 8, &tokio::runtime::Handle::current());
        assert_eq!(
            committers.commit(create("before")).await.unwrap(),
            WriteOutcome::Created
        );
        tasks.stop().await;
        let err = committers.commit(create("after")).await.unwrap_err();
        assert!(matches!(err, StoreError::Stopped), "{err:?}");
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "the saga engine's committer has stopped");
        assert!(
            store
                .find_by_business_key("before")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(store.find_by_business_key("after").await.unwrap(), None);
        assert_eq!(store.commits(), 1);
    }

    /// A committer that stops holding a write, without answering it, makes the writer's commit
    /// answer `StoreError::Stopped` instead of waiting forever.
    #[tokio::test]
    async fn a_write_dropped_unanswered_answers_stopped() {
        let (queue, mut requests) = mpsc::channel::<CommitRequest>(1);
        let committers = Committers {
            queues: vec![queue],
        };
        let committer = tokio::spawn(async move {
            let request = requests.recv().await.expect("the write arrives");
            matches!(request.write, Write::Create { .. })
        });
        let err = committers.commit(create("dropped")).await.unwrap_err();
        assert!(matches!(err, StoreError::Stopped), "{err:?}");
        assert!(
            committer.await.unwrap(),
            "the committer received the create"
        );
    }

    /// A write of a saga of definition `order` carrying `events` (the state is not checked).
    fn write(create: bool, events: Vec<Event>) -> Write {
        let (state, _) = started("k");
        let id = state.id;
        let entries = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| JournalEntry {
                saga_id: id,
                seq: i64::try_from(i).unwrap() + 2,
                at: 2,
                event,
            })
            .collect();
        if create {
            Write::Create { state, entries }
        } else {
            Write::Transition {
                expected_token: 1,
                expected_seq: 1,
                state,
                entries,
            }
        }
    }

    fn failed(outcome: FailureOutcome, next_attempt_at: Option<i64>) -> Event {
        Event::StepFailed {
            step: "pay".into(),
            attempt: 1,
            error: StepError::transient("down"),
            outcome,
            next_attempt_at,
            backoff_cap_ms: None,
        }
    }

    /// Committed events count what they say, once; the others, and fenced or existing writes,
    /// count nothing (a fenced one counts a lost lease).
    #[test]
    fn committed_writes_count_what_they_say() {
        let transition = || {
            write(
                false,
                vec![
                    failed(FailureOutcome::Retry, Some(10)),
                    failed(FailureOutcome::Unknown, None),
                    Event::CompensationFailed {
                        step: "reserve".into(),
                        attempt: 1,
                        error: StepError::transient("down"),
                        next_attempt_at: Some(20),
                        backoff_cap_ms: Some(100),
                    },
                    Event::CompensationSucceeded {
                        step: "reserve".into(),
                        attempt: 2,
                        output: Value::Null,
                    },
                    Event::FinalizerFailed {
                        attempt: 1,
                        error: StepError::business("NOPE", "no"),
                        next_attempt_at: None,
                        backoff_cap_ms: None,
                    },
                    Event::SagaCompensated {},
                    Event::SagaNeedsAttention { reason: "x".into() },
                ],
            )
        };
        let text = render(|| {
            Facts::of(&write(true, vec![])).record(&WriteOutcome::Created);
            Facts::of(&write(true, vec![])).record(&WriteOutcome::Exists(SagaId::new()));
            Facts::of(&transition()).record(&WriteOutcome::Applied);
            Facts::of(&transition()).record(&WriteOutcome::Fenced);
            attempt_finished("order", "pay", CallKind::Action, OUTCOME_OK, 0.02);
            claimed(3);
            let in_flight = InFlight::enter();
            drop(in_flight);
        });
        let get = |series: &str| value(&text, series);
        assert_eq!(
            get(r#"sagaflow_sagas_started_total{definition="order"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            get(
                r#"sagaflow_saga_step_retries_total{definition="order",step="pay",phase="forward"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            get(
                r#"sagaflow_saga_step_retries_total{definition="order",step="reserve",phase="compensating"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains(r#"phase="finalizing""#), "{text}");
        assert_eq!(
            get(r#"sagaflow_saga_compensations_total{definition="order",step="reserve"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"sagaflow_sagas_compensated_total{definition="order"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"sagaflow_sagas_needs_attention_total{definition="order"}"#),
            Some(1.0)
        );
        assert_eq!(get("sagaflow_sagas_completed_total"), None);
        assert_eq!(
            get(
                r#"sagaflow_saga_step_duration_seconds_count{definition="order",step="pay",phase="forward",outcome="ok"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(get("sagaflow_saga_lease_claims_total"), Some(3.0));
        assert_eq!(
            get(r#"sagaflow_saga_lease_losses_total{cause="fenced"}"#),
            Some(1.0)
        );
        assert_eq!(get("sagaflow_sagas_in_flight"), Some(0.0));
    }
}
