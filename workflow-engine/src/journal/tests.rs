//! Unit tests of the journal: encoding, the fold and its invariants.

use super::*;
use crate::state::{Cursor, Outcome, SagaState, SagaStatus, StepAt};

fn entry(seq: i64, event: Event) -> JournalEntry {
    JournalEntry {
        saga_id: SagaId(uuid::Uuid::nil()),
        seq,
        at: 1_000 + seq,
        event,
    }
}

fn started() -> Event {
    Event::SagaStarted {
        definition_name: "d".into(),
        definition_version: 1,
        business_key: "k".into(),
        input: serde_json::json!({"a": 1}),
        deadline_at: None,
        trace_context: None,
    }
}

#[test]
fn events_round_trip_through_their_columns() {
    let events = vec![
        started(),
        Event::StepStarted {
            step: "a".into(),
            index: 0,
            attempt: 1,
        },
        Event::StepFailed {
            step: "a".into(),
            attempt: 1,
            error: StepError::transient("down"),
            outcome: FailureOutcome::Retry,
            next_attempt_at: Some(5),
            backoff_cap_ms: Some(100),
        },
        Event::OperatorRetry { operator: None },
        Event::FinalizerStarted { attempt: 1 },
    ];
    for event in events {
        let encoded = encode(&event);
        assert_eq!(encoded.event_type, event.event_type());
        assert_eq!(decode(&encoded).unwrap(), event);
    }
    let encoded = encode(&Event::StepSucceeded {
        step: "a".into(),
        attempt: 2,
        output: Value::Null,
    });
    assert_eq!(encoded.step.as_deref(), Some("a"));
    assert_eq!(encoded.attempt, Some(2));
}

#[test]
fn fold_rejects_invalid_histories() {
    assert!(fold(&[entry(1, Event::SagaCompleted {})]).is_err());
    assert!(fold(&[entry(1, started()), entry(3, Event::SagaCompleted {})]).is_err());
    assert!(fold(&[entry(1, started()), entry(2, started())]).is_err());
    assert!(fold(&[]).is_err());
}

#[test]
fn fold_tracks_a_failure_and_its_compensation() {
    let journal = vec![
        entry(1, started()),
        entry(
            2,
            Event::LeaseAcquired {
                owner: "e1".into(),
                fencing_token: 1,
                lease_expires_at: 99,
            },
        ),
        entry(
            3,
            Event::StepStarted {
                step: "a".into(),
                index: 0,
                attempt: 1,
            },
        ),
        entry(
            4,
            Event::StepSucceeded {
                step: "a".into(),
                attempt: 1,
                output: serde_json::json!(7),
            },
        ),
        entry(
            5,
            Event::StepStarted {
                step: "b".into(),
                index: 1,
                attempt: 1,
            },
        ),
        entry(
            6,
            Event::StepFailed {
                step: "b".into(),
                attempt: 1,
                error: StepError::business("OUT_OF_STOCK", "none left"),
                outcome: FailureOutcome::Business,
                next_attempt_at: None,
                backoff_cap_ms: None,
            },
        ),
        entry(
            7,
            Event::SagaCompensating {
                cause: CompensationCause::BusinessFailure,
                reason: "OUT_OF_STOCK".into(),
                plan: vec!["a".into()],
            },
        ),
        entry(
            8,
            Event::CompensationStarted {
                step: "a".into(),
                index: 0,
                attempt: 1,
            },
        ),
    ];
    let s = fold(&journal).unwrap();
    assert_eq!(s.status(), SagaStatus::Compensating);
    assert_eq!(s.current_step(), Some("a"));
    assert_eq!(s.failure_reason.as_deref(), Some("OUT_OF_STOCK"));
    assert_eq!(s.outputs.get("a"), Some(&serde_json::json!(7)));
    assert_eq!(s.fencing_token, 1);
    assert_eq!(s.last_seq, 8);
    let progress = step_progress(&["a", "b", "c"], &journal);
    assert_eq!(
        progress,
        vec![
            (StepProgress::Compensating, 1),
            (StepProgress::Failed, 1),
            (StepProgress::Pending, 0)
        ]
    );
    let (done, entries) = append(
        &s,
        2_000,
        vec![
            Event::CompensationSucceeded {
                step: "a".into(),
                attempt: 1,
                output: Value::Null,
            },
            Event::SagaCompensated {},
        ],
    )
    .unwrap();
    assert_eq!(done.status(), SagaStatus::Compensated);
    assert_eq!(done.lease_owner, None);
    assert_eq!(entries.last().map(|e| e.seq), Some(10));
    let mut all = journal;
    all.extend(entries);
    assert_eq!(fold(&all).unwrap(), done);
}

/// A saga leased by `e1` (token 1) whose step `a` (index 0) is current, attempt 1.
fn running_at_a() -> SagaState {
    fold(&[
        entry(1, started()),
        entry(
            2,
            Event::LeaseAcquired {
                owner: "e1".into(),
                fencing_token: 1,
                lease_expires_at: 99,
            },
        ),
        entry(
            3,
            Event::StepStarted {
                step: "a".into(),
                index: 0,
                attempt: 1,
            },
        ),
    ])
    .unwrap()
}

/// Asserts that `event` is refused on `state` as an illegal transition naming the event, the
/// state and a rule containing `rule`; nothing changes.
fn assert_illegal(state: &SagaState, event: Event, rule: &str) {
    let event_type = event.event_type();
    match append(state, 5_000, vec![event]) {
        Err(err @ JournalError::Illegal { .. }) => {
            let JournalError::Illegal {
                event,
                status,
                rule: broken,
                ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(*event, event_type);
            assert_eq!(*status, state.status());
            assert!(
                broken.contains(rule),
                "{event_type}: {broken:?} is not {rule:?}"
            );
            let message = err.to_string();
            assert!(message.contains(event_type), "{message}");
            assert!(message.contains(state.status().as_str()), "{message}");
        }
        other => panic!(
            "{event_type} on {:?}: expected an illegal transition, got {other:?}",
            state.status()
        ),
    }
}

fn succeeded(step: &str, attempt: u32) -> Event {
    Event::StepSucceeded {
        step: step.into(),
        attempt,
        output: Value::Null,
    }
}

#[test]
fn events_that_cannot_happen_in_the_current_state_are_refused() {
    let s = running_at_a();
    assert_eq!(
        *s.cursor(),
        Cursor::Forward(StepAt {
            index: 0,
            name: "a".into()
        })
    );
    // Forward, at step a.
    assert_illegal(&s, succeeded("b", 1), "only the current forward step");
    assert_illegal(&s, succeeded("a", 2), "only the current attempt");
    assert_illegal(
        &s,
        Event::CompensationSucceeded {
            step: "a".into(),
            attempt: 1,
            output: Value::Null,
        },
        "COMPENSATING",
    );
    assert_illegal(
        &s,
        Event::CompensationStarted {
            step: "a".into(),
            index: 0,
            attempt: 1,
        },
        "COMPENSATING",
    );
    assert_illegal(&s, Event::FinalizerStarted { attempt: 1 }, "COMPENSATING");
    assert_illegal(
        &s,
        Event::FinalizerSucceeded {
            attempt: 1,
            output: Value::Null,
        },
        "COMPENSATING",
    );
    assert_illegal(
        &s,
        Event::StepStarted {
            step: "b".into(),
            index: 1,
            attempt: 1,
        },
        "once the current one succeeded",
    );
    assert_illegal(&s, Event::SagaCompleted {}, "current step succeeded");
    assert_illegal(&s, Event::SagaCompensated {}, "COMPENSATING");
    assert_illegal(
        &s,
        Event::OperatorRetry { operator: None },
        "NEEDS_ATTENTION",
    );
    assert_illegal(
        &s,
        Event::LeaseAcquired {
            owner: "e2".into(),
            fencing_token: 1,
            lease_expires_at: 5,
        },
        "newer fencing token",
    );
    assert_illegal(
        &s,
        Event::LeaseReleased { owner: "e2".into() },
        "lease holder",
    );
    // A step that succeeded answers no more, and an earlier step does not start again.
    let (at_b, _) = append(
        &s,
        1_100,
        vec![
            succeeded("a", 1),
            Event::StepStarted {
                step: "b".into(),
                index: 1,
                attempt: 1,
            },
        ],
    )
    .unwrap();
    assert_illegal(&at_b, succeeded("a", 1), "only the current forward step");
    let (a_done, _) = append(&s, 1_100, vec![succeeded("a", 1)]).unwrap();
    assert_illegal(&a_done, succeeded("a", 1), "answers no more");
    assert_illegal(
        &at_b,
        Event::StepSkipped {
            step: "a".into(),
            index: 0,
        },
        "once the current one succeeded",
    );
    // Compensating step a: forward answers and other compensations are refused.
    let (compensating, _) = append(
        &a_done,
        1_200,
        vec![
            Event::SagaCompensating {
                cause: CompensationCause::Canceled,
                reason: "CANCELED".into(),
                plan: vec!["a".into()],
            },
            Event::CompensationStarted {
                step: "a".into(),
                index: 0,
                attempt: 1,
            },
        ],
    )
    .unwrap();
    assert_illegal(&compensating, succeeded("a", 1), "RUNNING");
    assert_illegal(
        &compensating,
        Event::CompensationSucceeded {
            step: "b".into(),
            attempt: 1,
            output: Value::Null,
        },
        "only the current compensation",
    );
    assert_illegal(
        &compensating,
        Event::CompensationStarted {
            step: "b".into(),
            index: 1,
            attempt: 1,
        },
        "order of the compensation plan",
    );
    assert_illegal(
        &compensating,
        Event::SagaCompensating {
            cause: CompensationCause::Canceled,
            reason: "CANCELED".into(),
            plan: vec![],
        },
        "forward steps",
    );
    assert_illegal(
        &compensating,
        Event::Canceled {
            fencing_token: 9,
            operator: None,
        },
        "not yet compensating",
    );
    // After the end, nothing happens — not even a claim.
    let (done, _) = append(&a_done, 1_300, vec![Event::SagaCompleted {}]).unwrap();
    assert_eq!(*done.cursor(), Cursor::Finished(Outcome::Completed));
    for event in [
        Event::LeaseAcquired {
            owner: "e2".into(),
            fencing_token: 7,
            lease_expires_at: 9_999,
        },
        Event::Recovered {
            previous_owner: "e1".into(),
            previous_fencing_token: 1,
        },
        Event::StepStarted {
            step: "b".into(),
            index: 1,
            attempt: 1,
        },
        Event::SagaNeedsAttention { reason: "x".into() },
        Event::OperatorRetry { operator: None },
        Event::SagaCompleted {},
        Event::SagaCompensated {},
    ] {
        assert_illegal(&done, event, "end of a saga");
    }
}
