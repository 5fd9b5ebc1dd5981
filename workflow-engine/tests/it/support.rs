//! Test support: databases on both backends, a scripted fake service whose outcomes come from the
//! saga input, and a call recorder that checks no step runs twice at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sagaflow_server::{Db, PoolConfig, db::now_ms};
use sagaflow_testkit::{Kind, TestDatabase};
use sagaflow_workflow_engine::{
    Engine, MIGRATIONS, RetryPolicy, SagaDefinition, SagaId, SagaState, SqlSagaStore, Step,
    StepContext, StepError,
    definition::{CallKind, Jitter},
    journal::{Event, JournalEntry},
    store::conformance,
};
use serde_json::{Value, json};

/// How long a test waits for a saga at most.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Harness {
    pub(crate) tdb: TestDatabase,
    pub(crate) db: Db,
    pub(crate) store: Arc<SqlSagaStore>,
}

pub(crate) async fn open(kind: Kind, name: &str) -> Harness {
    let tdb = TestDatabase::new(kind, name);
    let db = Db::connect(&tdb.url, MIGRATIONS, &PoolConfig::default())
        .await
        .expect("connect to the test database");
    let store = Arc::new(SqlSagaStore::new(db.clone()));
    Harness { tdb, db, store }
}

impl Harness {
    pub(crate) fn engine(&self, definitions: Vec<SagaDefinition>) -> Engine {
        let mut builder = Engine::builder(self.store.clone())
            .owner(format!("test-{}", uuid::Uuid::new_v4().simple()))
            .lease_ms(5_000)
            .poll_interval_ms(50);
        for d in definitions {
            builder = builder.definition(d);
        }
        builder.build().expect("engine builds")
    }
}

/// One call the fake service received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) saga_id: SagaId,
    pub(crate) step: &'static str,
    pub(crate) kind: CallKind,
    pub(crate) attempt: u32,
    pub(crate) key: String,
    pub(crate) failure_reason: Option<String>,
    pub(crate) started_ms: i64,
}

/// Records calls; answers from the script in the saga input; flags overlapping calls of one key.
///
/// It also keeps the business data of a real service: the effect of every action that applied
/// (`ok`, or `lost`: applied with its reply lost) until a compensation undoes it, and, like the
/// idempotency store, a stored rejection (`stored:REASON`) replayed for every later call under
/// the very same key.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    calls: Mutex<Vec<Call>>,
    counts: Mutex<HashMap<String, usize>>,
    in_flight: Mutex<HashMap<String, usize>>,
    overlaps: Mutex<Vec<String>>,
    /// Steps whose action applied and was not compensated, per saga.
    applied: Mutex<HashMap<SagaId, Vec<&'static str>>>,
    /// Rejections stored under an exact idempotency key.
    stored: Mutex<HashMap<String, StepError>>,
}

impl Recorder {
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn calls_of(&self, id: SagaId) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.saga_id == id)
            .collect()
    }

    /// Step names of the actions of saga `id`, in call order, deduplicated by consecutive repeats.
    pub(crate) fn actions(&self, id: SagaId) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for c in self.calls_of(id) {
            if c.kind == CallKind::Action && out.last() != Some(&c.step) {
                out.push(c.step);
            }
        }
        out
    }

    /// Step names of the compensations of saga `id`, in call order, consecutive repeats merged.
    pub(crate) fn compensations(&self, id: SagaId) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for c in self.calls_of(id) {
            if c.kind == CallKind::Compensation && out.last() != Some(&c.step) {
                out.push(c.step);
            }
        }
        out
    }

    pub(crate) fn finalizer_calls(&self, id: SagaId) -> Vec<Call> {
        self.calls_of(id)
            .into_iter()
            .filter(|c| c.kind == CallKind::Finalizer)
            .collect()
    }

    /// Steps of saga `id` whose action took effect and was not compensated, in action order.
    pub(crate) fn net_effects(&self, id: SagaId) -> Vec<&'static str> {
        self.applied
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (at most [`WAIT`]) until an action of `step` of saga `id` was called.
    pub(crate) async fn until_called(&self, id: SagaId, step: &str) {
        sagaflow_testkit::eventually(
            format!("{step} of saga {id} to be called"),
            WAIT,
            || async {
                self.calls_of(id)
                    .iter()
                    .any(|c| c.kind == CallKind::Action && c.step == step)
                    .then_some(())
            },
        )
        .await;
    }

    pub(crate) fn overlaps(&self) -> Vec<String> {
        self.overlaps.lock().unwrap().clone()
    }

    async fn answer(&self, ctx: StepContext) -> Result<Value, StepError> {
        let section = match ctx.kind {
            CallKind::Action => "plan",
            CallKind::Compensation => "compensation_plan",
            CallKind::Finalizer => "finalizer_plan",
        };
        let n = {
            // Scripts count calls per call site, across key generations (`…:retry-<n>`).
            let base = ctx
                .idempotency_key
                .split(":retry-")
                .next()
                .unwrap_or_default()
                .to_owned();
            let mut counts = self.counts.lock().unwrap();
            let n = counts.entry(base).or_insert(0);
            *n += 1;
            *n
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let running = in_flight.entry(ctx.idempotency_key.clone()).or_insert(0);
            *running += 1;
            if *running > 1 {
                self.overlaps
                    .lock()
                    .unwrap()
                    .push(ctx.idempotency_key.clone());
            }
        }
        self.calls.lock().unwrap().push(Call {
            saga_id: ctx.saga_id,
            step: ctx.step,
            kind: ctx.kind,
            attempt: ctx.attempt,
            key: ctx.idempotency_key.clone(),
            failure_reason: ctx.failure_reason.clone(),
            started_ms: now_ms(),
        });
        let replay = self
            .stored
            .lock()
            .unwrap()
            .get(&ctx.idempotency_key)
            .cloned();
        let script = ctx.input[section][ctx.step]
            .get(n - 1)
            .and_then(Value::as_str)
            .unwrap_or("ok")
            .to_owned();
        let result = match replay {
            Some(stored) => Err(stored),
            None => outcome(&script, &ctx).await,
        };
        let applied = result.is_ok() || script == "lost";
        if let (Err(err), Some(_)) = (&result, script.strip_prefix("stored:")) {
            self.stored
                .lock()
                .unwrap()
                .insert(ctx.idempotency_key.clone(), err.clone());
        }
        if applied {
            let mut effects = self.applied.lock().unwrap();
            let steps = effects.entry(ctx.saga_id).or_default();
            match ctx.kind {
                CallKind::Action if !steps.contains(&ctx.step) => steps.push(ctx.step),
                CallKind::Compensation => steps.retain(|s| *s != ctx.step),
                _ => {}
            }
        }
        *self
            .in_flight
            .lock()
            .unwrap()
            .get_mut(&ctx.idempotency_key)
            .unwrap() -= 1;
        result
    }
}

async fn outcome(script: &str, ctx: &StepContext) -> Result<Value, StepError> {
    let (word, arg) = script.split_once(':').unwrap_or((script, ""));
    match word {
        "ok" => Ok(json!({"step": ctx.step, "key": ctx.idempotency_key})),
        "business" => Err(StepError::business(
            if arg.is_empty() { "REJECTED" } else { arg },
            format!("{} says no", ctx.step),
        )),
        "transient" => Err(StepError::transient(format!("{} unavailable", ctx.step))),
        // Applied, but the reply was lost: the caller sees a transient failure.
        "lost" => Err(StepError::transient("reply lost")),
        // Refused before the handler with a bare gRPC code (a proxy, an auth layer, a fault).
        "code" => Err(StepError::from(tonic::Status::new(
            grpc_code(arg),
            "refused before the handler",
        ))),
        // The idempotency layer: this key was used with another request.
        "keyreuse" => Err(StepError {
            code: "ALREADY_EXISTS".into(),
            message: "idempotency key used with another request".into(),
            reason: Some("IDEMPOTENCY_KEY_REUSED".into()),
            retryable: false,
            not_delivered: false,
        }),
        // A rejection the service stores under the key and replays for the same key.
        "stored" => Err(StepError::business(arg, format!("{} refuses", ctx.step))),
        // An output nested deeper than serde_json reads back (128 levels).
        "deep" => {
            let mut value = json!(1);
            for _ in 0..200 {
                value = json!([value]);
            }
            Ok(value)
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
            Ok(json!({"step": ctx.step, "slow": true}))
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Value::Null)
        }
        other => panic!("unknown script word {other:?}"),
    }
}

fn grpc_code(name: &str) -> tonic::Code {
    match name {
        "unimplemented" => tonic::Code::Unimplemented,
        "unauthenticated" => tonic::Code::Unauthenticated,
        "permission_denied" => tonic::Code::PermissionDenied,
        "failed_precondition" => tonic::Code::FailedPrecondition,
        other => panic!("unknown code {other:?} in a script"),
    }
}

/// Retry policy of the scripted steps: 3 attempts, delays capped at 5, 10, 20 ms … 40 ms.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(3, 5, 40)
}

/// `a`, `b`, `c` compensatable (all with compensations), pivot `p`, retriable `r`, and a failure
/// finalizer, all answered by `recorder` from the saga input's script.
pub(crate) fn scripted(name: &str, recorder: &Arc<Recorder>) -> SagaDefinition {
    scripted_with(name, recorder, fast_retry(), 2_000)
}

pub(crate) fn scripted_with(
    name: &str,
    recorder: &Arc<Recorder>,
    retry: RetryPolicy,
    timeout_ms: u64,
) -> SagaDefinition {
    let act = |recorder: &Arc<Recorder>| {
        let recorder = recorder.clone();
        move |ctx: StepContext| {
            let recorder = recorder.clone();
            async move { recorder.answer(ctx).await }
        }
    };
    let mut builder = SagaDefinition::builder(name, 1);
    for step in ["a", "b", "c"] {
        builder = builder.step(
            Step::compensatable(step, act(recorder))
                .compensation(act(recorder))
                .retry(retry)
                .timeout_ms(timeout_ms),
        );
    }
    builder
        .step(
            Step::pivot("p", act(recorder))
                .retry(retry)
                .timeout_ms(timeout_ms),
        )
        .step(
            Step::retriable("r", act(recorder))
                .retry(retry)
                .timeout_ms(timeout_ms),
        )
        .failure_finalizer(act(recorder))
        .finalizer_retry(retry)
        .build()
        .unwrap()
}

/// A saga input scripting the answers: `plan` for actions, `compensation_plan` for compensations,
/// by step name, one word per call (`ok`, `business[:REASON]`, `transient`, `slow:MS`, `hang`,
/// `lost`, `code:NAME`, `keyreuse`, `stored:REASON`, `deep`).
pub(crate) fn script(plan: Value, compensation_plan: Value) -> Value {
    json!({"plan": plan, "compensation_plan": compensation_plan})
}

pub(crate) fn fixed_retry(base_ms: u64) -> RetryPolicy {
    RetryPolicy::new(10, base_ms, 10_000).with_jitter(Jitter::None)
}

/// Checks that the state row equals the fold of the stored journal, and returns both.
pub(crate) async fn check_fold(harness: &Harness, id: SagaId) -> (SagaState, Vec<JournalEntry>) {
    let row = conformance::assert_row_is_fold(harness.store.as_ref(), id).await;
    let journal = sagaflow_workflow_engine::SagaStore::journal(harness.store.as_ref(), id)
        .await
        .unwrap();
    (row, journal)
}

pub(crate) fn event_types(journal: &[JournalEntry]) -> Vec<&'static str> {
    journal.iter().map(|e| e.event.event_type()).collect()
}

/// Unix ms of the saga's terminal entry (completed or compensated).
pub(crate) fn ended_at(journal: &[JournalEntry]) -> Option<i64> {
    journal
        .iter()
        .find(|e| matches!(e.event, Event::SagaCompleted {} | Event::SagaCompensated {}))
        .map(|e| e.at)
}
