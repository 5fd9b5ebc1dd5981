//! Property test over random step outcomes (success, business failure, transient then success,
//! unknown outcome) and compensation outcomes, run through the real engine on both stores: the
//! state row always equals the fold of its journal, the final status is the one the model
//! predicts, and the compensations mirror the completed steps in reverse order.

use std::{sync::Arc, time::Duration};

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    Engine, SagaStatus,
    journal::{Event, JournalEntry},
};
use serde_json::{Value, json};

use crate::support::{Harness, Recorder, WAIT, check_fold, open, script, scripted};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Success,
    Business,
    TransientThenSuccess(usize),
    Unknown,
}

impl Outcome {
    fn script(self) -> Vec<String> {
        match self {
            Self::Success => vec![],
            Self::Business => vec!["business:NO".into()],
            Self::TransientThenSuccess(n) => vec!["transient".into(); n],
            // fast_retry() gives 3 attempts.
            Self::Unknown => vec!["transient".into(); 3],
        }
    }
}

fn forward() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Success),
        1 => Just(Outcome::Business),
        1 => (1..=2_usize).prop_map(Outcome::TransientThenSuccess),
        1 => Just(Outcome::Unknown),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Outcomes of a, b, c and the pivot p.
    before: [Outcome; 4],
    /// Transient failures of r before it succeeds.
    retriable: usize,
    /// Transient failures of each compensation (a, b, c) before it succeeds.
    compensation: [usize; 3],
}

fn case() -> impl Strategy<Value = Case> {
    (
        [forward(), forward(), forward(), forward()],
        0..=4_usize,
        [0..=2_usize, 0..=2_usize, 0..=2_usize],
    )
        .prop_map(|(before, retriable, compensation)| Case {
            before,
            retriable,
            compensation,
        })
}

const STEPS: [&str; 4] = ["a", "b", "c", "p"];

/// The model: expected status and compensation order.
fn expect(case: &Case) -> (SagaStatus, Vec<&'static str>) {
    let mut completed = Vec::new();
    for (step, outcome) in STEPS.iter().zip(case.before) {
        match outcome {
            Outcome::Success | Outcome::TransientThenSuccess(_) => completed.push(*step),
            Outcome::Business => {
                completed.retain(|s| *s != "p");
                completed.reverse();
                return (SagaStatus::Compensated, completed);
            }
            Outcome::Unknown if *step == "p" => return (SagaStatus::NeedsAttention, vec![]),
            Outcome::Unknown => {
                completed.push(*step);
                completed.reverse();
                return (SagaStatus::Compensated, completed);
            }
        }
    }
    (SagaStatus::Completed, vec![])
}

fn input(case: &Case) -> Value {
    let mut plan = serde_json::Map::new();
    for (step, outcome) in STEPS.iter().zip(case.before) {
        plan.insert((*step).into(), json!(outcome.script()));
    }
    plan.insert("r".into(), json!(vec!["transient"; case.retriable]));
    let mut compensation = serde_json::Map::new();
    for (step, n) in ["a", "b", "c"].iter().zip(case.compensation) {
        compensation.insert((*step).into(), json!(vec!["transient"; n]));
    }
    script(Value::Object(plan), Value::Object(compensation))
}

fn journaled_compensations(journal: &[JournalEntry]) -> Vec<String> {
    journal
        .iter()
        .filter_map(|e| match &e.event {
            Event::CompensationSucceeded { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

async fn run_case(
    h: &Harness,
    engine: &Engine,
    rec: &Recorder,
    n: usize,
    case: &Case,
) -> Result<(), TestCaseError> {
    let (id, _) = engine
        .start("s", &format!("prop-{n}"), input(case), None, None)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let done = engine
        .wait_finished(id, WAIT)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (expected_status, expected_compensations) = expect(case);
    prop_assert_eq!(done.status(), expected_status);
    let (row, journal) = check_fold(h, id).await;
    prop_assert_eq!(&row, &done);
    prop_assert_eq!(rec.compensations(id), expected_compensations.clone());
    prop_assert_eq!(journaled_compensations(&journal), expected_compensations);
    Ok(())
}

fn property(kind: Kind) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let (h, engine) = rt.block_on(async {
        let h = open(kind, "property").await;
        let engine = h.engine(vec![scripted("s", &rec)]);
        (h, engine)
    });
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&case(), |case| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(run_case(&h, &engine, &rec, n, &case))
    });
    rt.block_on(engine.shutdown(Duration::from_secs(5)));
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[test]
fn state_row_is_the_fold_and_compensations_mirror_completed_steps_sqlite() {
    property(Kind::Sqlite);
}

#[test]
fn state_row_is_the_fold_and_compensations_mirror_completed_steps_postgres() {
    property(Kind::Postgres);
}

#[test]
fn the_model_itself() {
    use Outcome::*;
    let case = |before, retriable| Case {
        before,
        retriable,
        compensation: [0; 3],
    };
    assert_eq!(
        expect(&case([Success; 4], 0)),
        (SagaStatus::Completed, vec![])
    );
    assert_eq!(
        expect(&case([Success, Unknown, Success, Success], 0)),
        (SagaStatus::Compensated, vec!["b", "a"])
    );
    assert_eq!(
        expect(&case([Success, Success, Success, Business], 0)),
        (SagaStatus::Compensated, vec!["c", "b", "a"])
    );
    assert_eq!(
        expect(&case([Success, Success, Success, Unknown], 0)),
        (SagaStatus::NeedsAttention, vec![])
    );
}
