//! Unit tests of the journal: encoding, the fold and its invariants.

use super::*;
use crate::state::SagaStatus;

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
        Event::OperatorRetry {},
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
    assert_eq!(s.status, SagaStatus::Compensating);
    assert_eq!(s.current_step.as_deref(), Some("a"));
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
    assert_eq!(done.status, SagaStatus::Compensated);
    assert_eq!(done.lease_owner, None);
    assert_eq!(entries.last().map(|e| e.seq), Some(10));
    let mut all = journal;
    all.extend(entries);
    assert_eq!(fold(&all).unwrap(), done);
}
