//! The conformance suite every [`SagaStore`] passes (one shared suite, not a test set per
//! implementation), run by the integration tests against SQLite and PostgreSQL. Each check uses its
//! own business keys, so one empty store serves them all: `conformance::run(&store).await`.
//!
//! It panics on the first violation (it is test code).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};

use super::{ListFilter, OperatorError, PrunedSagas, SagaStore, Write, WriteOutcome};
use crate::{
    definition::{SagaDefinition, Step, StepContext, StepError},
    journal::{self, Event, FailureOutcome},
    planner::{self, Refusal},
    state::{SagaId, SagaState, SagaStatus},
};

const LEASE_MS: i64 = 1_000;

async fn noop(_ctx: StepContext) -> Result<Value, StepError> {
    Ok(Value::Null)
}

fn definition() -> SagaDefinition {
    SagaDefinition::builder("conformance", 1)
        .step(Step::compensatable("a", noop).compensation(noop))
        .step(Step::pivot("p", noop))
        .build()
        .expect("valid definition")
}

/// Runs every check against `store`.
pub async fn run(store: &dyn SagaStore) {
    create_is_idempotent_on_the_business_key(store).await;
    transitions_are_fenced(store).await;
    a_batch_commits_each_write_on_its_own_fence(store).await;
    claims_take_due_and_orphaned_sagas(store).await;
    claims_skip_future_and_resting_sagas(store).await;
    leases_renew_only_for_their_holder(store).await;
    operator_updates_apply_or_refuse(store).await;
    lists_filter_and_paginate(store).await;
    // Last: it deletes sagas (only its own, by their times, but other checks need not care).
    prunes_exactly_the_old_finished_sagas(store).await;
}

async fn create(store: &dyn SagaStore, key: &str, owner: &str, now: i64) -> SagaState {
    let def = definition();
    let events = planner::start_events(
        &def,
        key,
        &json!({"key": key}),
        Some("00-trace-01".into()),
        None,
        owner,
        now + LEASE_MS,
    );
    let (state, entries) = journal::begin(SagaId::new(), now, events).unwrap();
    let outcome = store
        .commit(&[Write::Create {
            state: state.clone(),
            entries,
        }])
        .await
        .unwrap();
    assert_eq!(outcome, vec![WriteOutcome::Created]);
    state
}

/// Claims saga `id` for `owner` at `now` with the planner's claim, leased for [`LEASE_MS`].
async fn claim(store: &dyn SagaStore, id: SagaId, owner: &str, now: i64) -> Option<SagaState> {
    let plan = planner::claim_plan(owner, now + LEASE_MS);
    store.claim(id, now, &plan).await.unwrap()
}

/// Claims up to 1000 due sagas of any definition for `owner` at `now`.
async fn claim_due(store: &dyn SagaStore, owner: &str, now: i64) -> Vec<SagaState> {
    let plan = planner::claim_plan(owner, now + LEASE_MS);
    store.claim_due(now, 1_000, &[], &plan).await.unwrap()
}

fn transition(state: &SagaState, at: i64, events: Vec<Event>) -> (SagaState, Write) {
    let (next, entries) = journal::append(state, at, events).unwrap();
    let write = Write::Transition {
        expected_token: state.fencing_token,
        expected_seq: state.last_seq,
        state: next.clone(),
        entries,
    };
    (next, write)
}

/// Asserts the stored row equals the fold of the stored journal (and `expected`).
pub async fn assert_row_is_fold(store: &dyn SagaStore, id: SagaId) -> SagaState {
    let row = store.get(id).await.unwrap().expect("saga row exists");
    let journal = store.journal(id).await.unwrap();
    let folded = journal::fold(&journal).unwrap();
    assert_eq!(
        row.journaled_view(),
        folded.journaled_view(),
        "row of {id} = fold of its journal"
    );
    assert_eq!(row.last_seq, journal.len() as i64, "journal has no gaps");
    row
}

async fn create_is_idempotent_on_the_business_key(store: &dyn SagaStore) {
    let state = create(store, "c-create", "e1", 1_000).await;
    let row = assert_row_is_fold(store, state.id).await;
    assert_eq!(row, state);
    assert_eq!(row.status(), SagaStatus::Running);
    assert_eq!(row.current_step(), Some("a"));
    assert_eq!(row.trace_context.as_deref(), Some("00-trace-01"));
    // A second create with the same business key writes nothing and names the first saga.
    let def = definition();
    let events = planner::start_events(&def, "c-create", &json!({}), None, None, "e2", 5);
    let (other, entries) = journal::begin(SagaId::new(), 2_000, events).unwrap();
    let outcome = store
        .commit(&[Write::Create {
            state: other.clone(),
            entries,
        }])
        .await
        .unwrap();
    assert_eq!(outcome, vec![WriteOutcome::Exists(state.id)]);
    assert!(store.get(other.id).await.unwrap().is_none());
    assert!(store.journal(other.id).await.unwrap().is_empty());
    assert_eq!(
        store.find_by_business_key("c-create").await.unwrap(),
        Some(state.id)
    );
}

async fn transitions_are_fenced(store: &dyn SagaStore) {
    let state = create(store, "c-fence", "e1", 1_000).await;
    let def = definition();
    let events = planner::after_forward(&def, &state, 0, Ok(json!({"x": 1})), 1_100, 0.5).unwrap();
    let (next, write) = transition(&state, 1_100, events);
    // A writer holding an older token is refused and writes nothing.
    let Write::Transition {
        state: s, entries, ..
    } = write.clone()
    else {
        unreachable!()
    };
    let stale = Write::Transition {
        expected_token: state.fencing_token - 1,
        expected_seq: state.last_seq,
        state: s,
        entries,
    };
    assert_eq!(
        store.commit(&[stale]).await.unwrap(),
        vec![WriteOutcome::Fenced]
    );
    assert_eq!(assert_row_is_fold(store, state.id).await, state);
    // The holder's write applies; replaying it (same expected seq) is fenced.
    assert_eq!(
        store.commit(std::slice::from_ref(&write)).await.unwrap(),
        vec![WriteOutcome::Applied]
    );
    assert_eq!(assert_row_is_fold(store, state.id).await, next);
    assert_eq!(
        store.commit(&[write]).await.unwrap(),
        vec![WriteOutcome::Fenced]
    );
    assert_eq!(next.outputs.get("a"), Some(&json!({"x": 1})));
    assert_eq!(next.current_step(), Some("p"));
}

async fn a_batch_commits_each_write_on_its_own_fence(store: &dyn SagaStore) {
    let one = create(store, "c-batch-1", "e1", 1_000).await;
    let two = create(store, "c-batch-2", "e1", 1_000).await;
    let release =
        |s: &SagaState| transition(s, 1_200, vec![Event::LeaseReleased { owner: "e1".into() }]);
    let (one_next, one_write) = release(&one);
    let (_, two_write) = release(&two);
    let Write::Transition { state, entries, .. } = two_write else {
        unreachable!()
    };
    let two_stale = Write::Transition {
        expected_token: 99,
        expected_seq: two.last_seq,
        state,
        entries,
    };
    let outcomes = store.commit(&[two_stale, one_write]).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Fenced, WriteOutcome::Applied]);
    assert_eq!(assert_row_is_fold(store, one.id).await, one_next);
    assert_eq!(assert_row_is_fold(store, two.id).await, two);
}

async fn claims_take_due_and_orphaned_sagas(store: &dyn SagaStore) {
    // Sagas of other checks are claimable too; this check works on a far-future clock and
    // follows its own saga.
    let base = 10_000_000;
    let state = create(store, "c-claim", "e1", base).await;
    // A live lease is not claimed.
    let claimed = claim(store, state.id, "e2", base + 10).await;
    assert!(claimed.is_none());
    // After it expired, e2 claims it: new token, lease_acquired and recovered journaled.
    let after_expiry = base + LEASE_MS + 1;
    let claimed = claim(store, state.id, "e2", after_expiry)
        .await
        .expect("expired lease is claimable");
    assert_eq!(claimed.fencing_token, state.fencing_token + 1);
    assert_eq!(claimed.lease_owner.as_deref(), Some("e2"));
    assert_eq!(claimed.lease_expires_at, Some(after_expiry + LEASE_MS));
    let journal = store.journal(state.id).await.unwrap();
    let tail: Vec<&str> = journal[journal.len() - 2..]
        .iter()
        .map(|e| e.event.event_type())
        .collect();
    assert_eq!(tail, ["lease_acquired", "recovered"]);
    assert_eq!(assert_row_is_fold(store, state.id).await, claimed);
    // The old holder's result is thrown away.
    let def = definition();
    let events = planner::after_forward(&def, &state, 0, Ok(json!(1)), after_expiry, 0.5).unwrap();
    let (_, stale) = transition(&state, after_expiry, events);
    assert_eq!(
        store.commit(&[stale]).await.unwrap(),
        vec![WriteOutcome::Fenced]
    );
    // claim_due takes orphaned sagas in batches (including this one once e2's lease expired).
    let later = after_expiry + LEASE_MS + 1;
    let batch = claim_due(store, "e3", later).await;
    assert!(
        batch
            .iter()
            .any(|s| s.id == state.id && s.lease_owner.as_deref() == Some("e3"))
    );
    for s in &batch {
        assert_row_is_fold(store, s.id).await;
    }
    let again = claim_due(store, "e4", later).await;
    assert!(again.is_empty(), "live leases are not claimed twice");
}

async fn claims_skip_future_and_resting_sagas(store: &dyn SagaStore) {
    let base = 20_000_000;
    let state = create(store, "c-skip", "e1", base).await;
    let def = definition();
    // A transient failure schedules the retry in the future and releases the lease.
    let mut events = planner::after_forward(
        &def,
        &state,
        0,
        Err(StepError::transient("down")),
        base,
        1.0,
    )
    .unwrap();
    let Event::StepFailed {
        outcome,
        next_attempt_at: Some(retry_at),
        ..
    } = events[0].clone()
    else {
        panic!("expected a scheduled retry")
    };
    assert_eq!(outcome, FailureOutcome::Retry);
    events.push(Event::LeaseReleased { owner: "e1".into() });
    let (next, write) = transition(&state, base, events);
    assert_eq!(
        store.commit(&[write]).await.unwrap(),
        vec![WriteOutcome::Applied]
    );
    assert_eq!(next.next_attempt_at, retry_at);
    assert!(retry_at > base);
    let stored = assert_row_is_fold(store, state.id).await;
    assert_eq!(stored.next_attempt_at, retry_at);
    assert_eq!(stored.attempt, 2);
    // Not due yet: claim_due leaves it (a direct claim may still take it).
    let early = claim_due(store, "e2", retry_at - 1).await;
    assert!(early.iter().all(|s| s.id != state.id));
    let due = claim_due(store, "e2", retry_at).await;
    let claimed = due
        .into_iter()
        .find(|s| s.id == state.id)
        .expect("due saga claimed");
    // Completed sagas are never claimed.
    let (mut done, mut write) = transition(
        &claimed,
        retry_at,
        planner::after_forward(&def, &claimed, 0, Ok(json!(1)), retry_at, 0.5).unwrap(),
    );
    assert_eq!(
        store.commit(&[write]).await.unwrap(),
        vec![WriteOutcome::Applied]
    );
    (done, write) = transition(
        &done,
        retry_at,
        planner::after_forward(&def, &done, 1, Ok(json!(2)), retry_at, 0.5).unwrap(),
    );
    assert_eq!(
        store.commit(&[write]).await.unwrap(),
        vec![WriteOutcome::Applied]
    );
    assert_eq!(done.status(), SagaStatus::Completed);
    assert_eq!(done.lease_owner, None);
    assert!(claim(store, state.id, "e3", i64::MAX / 2).await.is_none());
    let far = claim_due(store, "e3", i64::MAX / 2).await;
    assert!(far.iter().all(|s| s.id != state.id));
    assert_row_is_fold(store, state.id).await;
}

async fn leases_renew_only_for_their_holder(store: &dyn SagaStore) {
    let state = create(store, "c-renew", "e1", 1_000).await;
    assert!(
        store
            .renew_lease(state.id, "e1", state.fencing_token, 9_999)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(state.id).await.unwrap().unwrap().lease_expires_at,
        Some(9_999)
    );
    assert!(
        !store
            .renew_lease(state.id, "e2", state.fencing_token, 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_lease(state.id, "e1", state.fencing_token + 1, 1)
            .await
            .unwrap()
    );
    assert_row_is_fold(store, state.id).await;
}

async fn operator_updates_apply_or_refuse(store: &dyn SagaStore) {
    let state = create(store, "c-operator", "e1", 1_000).await;
    let def = definition();
    // RetrySaga of a running saga is refused and writes nothing.
    let refused = store
        .operator_update(state.id, 1_100, &|s: &SagaState| {
            planner::retry_events(s, None)
        })
        .await;
    assert!(matches!(
        refused,
        Err(OperatorError::Refused(Refusal::NotNeedsAttention))
    ));
    // CancelSaga before the pivot revokes the lease and compensates the current step.
    let cancel = |s: &SagaState| planner::cancel_events(&def, s, s.fencing_token + 1, None);
    let canceled = store
        .operator_update(state.id, 1_200, &cancel)
        .await
        .unwrap();
    assert_eq!(canceled.status(), SagaStatus::Compensating);
    assert_eq!(canceled.failure_reason.as_deref(), Some("CANCELED"));
    assert_eq!(canceled.compensation_plan, vec!["a"]);
    assert_eq!(canceled.fencing_token, state.fencing_token + 1);
    assert_eq!(canceled.lease_owner, None);
    assert_eq!(assert_row_is_fold(store, state.id).await, canceled);
    // The old lease holder is fenced out.
    let events = planner::after_forward(&def, &state, 0, Ok(json!(1)), 1_300, 0.5).unwrap();
    let (_, stale) = transition(&state, 1_300, events);
    assert_eq!(
        store.commit(&[stale]).await.unwrap(),
        vec![WriteOutcome::Fenced]
    );
    // Canceling again changes nothing.
    let again = store
        .operator_update(state.id, 1_400, &cancel)
        .await
        .unwrap();
    assert_eq!(again, canceled);
    let missing = store
        .operator_update(SagaId::new(), 1_500, &|s: &SagaState| {
            planner::retry_events(s, None)
        })
        .await;
    assert!(matches!(missing, Err(OperatorError::NotFound)));
}

async fn lists_filter_and_paginate(store: &dyn SagaStore) {
    let base = 30_000_000;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(store, &format!("c-list-{i}"), "e1", base + i)
                .await
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        created_after: Some(base),
        created_before: Some(base + 5),
        limit: 2,
        ..ListFilter::default()
    };
    for _ in 0..5 {
        let page = store.list(&filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        let last = page.last().unwrap();
        filter.after = Some((last.created_at, last.id));
        seen.extend(page.iter().map(|s| s.id));
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, every saga once");
    let running = store
        .list(&ListFilter {
            status: Some(SagaStatus::Running),
            definition_name: Some("conformance".into()),
            created_after: Some(base),
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 5);
    let none = store
        .list(&ListFilter {
            status: Some(SagaStatus::Completed),
            created_after: Some(base),
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let other = store
        .list(&ListFilter {
            definition_name: Some("other".into()),
            limit: 100,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(other.is_empty());
}

/// Commits `events` on `state` and returns the new state.
async fn apply(store: &dyn SagaStore, state: &SagaState, at: i64, events: Vec<Event>) -> SagaState {
    let (next, write) = transition(state, at, events);
    assert_eq!(
        store.commit(&[write]).await.unwrap(),
        vec![WriteOutcome::Applied]
    );
    next
}

/// Runs both steps of `state` to success at `at` and commits it: COMPLETED.
async fn complete(store: &dyn SagaStore, state: &SagaState, at: i64) -> SagaState {
    let def = definition();
    let mut events = planner::after_forward(&def, state, 0, Ok(json!(1)), at, 0.5).unwrap();
    let (at_pivot, _) = journal::append(state, at, events.clone()).unwrap();
    events.extend(planner::after_forward(&def, &at_pivot, 1, Ok(json!(2)), at, 0.5).unwrap());
    apply(store, state, at, events).await
}

async fn assert_pruned(store: &dyn SagaStore, state: &SagaState) {
    assert!(
        store.get(state.id).await.unwrap().is_none(),
        "{} pruned",
        state.id
    );
    assert!(store.journal(state.id).await.unwrap().is_empty());
    assert_eq!(
        store
            .find_by_business_key(&state.business_key)
            .await
            .unwrap(),
        None
    );
}

async fn prunes_exactly_the_old_finished_sagas(store: &dyn SagaStore) {
    // Before every other check's sagas (created at 1_000 and later).
    let def = definition();
    let cancel =
        |s: &SagaState| planner::cancel_events(&def, s, s.fencing_token + 1, None).unwrap();
    // Finished before the cutoff (500): pruned.
    let s = create(store, "c-prune-done-1", "e1", 100).await;
    let done_1 = complete(store, &s, 200).await;
    let s = create(store, "c-prune-compensated", "e1", 110).await;
    let mut events = cancel(&s);
    events.push(Event::SagaCompensated {});
    let compensated = apply(store, &s, 210, events).await;
    let s = create(store, "c-prune-done-2", "e1", 120).await;
    let done_2 = complete(store, &s, 220).await;
    assert_eq!(done_1.status(), SagaStatus::Completed);
    assert_eq!(compensated.status(), SagaStatus::Compensated);
    // Finished after the cutoff: kept.
    let s = create(store, "c-prune-recent", "e1", 130).await;
    let recent = complete(store, &s, 900).await;
    // Old but not finished: kept, whatever their age.
    let running = create(store, "c-prune-running", "e1", 140).await;
    let s = create(store, "c-prune-attention", "e1", 150).await;
    let attention = apply(
        store,
        &s,
        160,
        vec![Event::SagaNeedsAttention {
            reason: "conformance".into(),
        }],
    )
    .await;
    let s = create(store, "c-prune-compensating", "e1", 170).await;
    let compensating = apply(store, &s, 180, cancel(&s)).await;
    assert_eq!(attention.status(), SagaStatus::NeedsAttention);
    assert_eq!(compensating.status(), SagaStatus::Compensating);
    let kept = [&running, &attention, &compensating, &recent];

    let cost = |s: &SagaState| 1 + s.last_seq as u32;
    let pruned = |s: &[&SagaState]| PrunedSagas {
        sagas: s.len() as u64,
        journal_entries: s.iter().map(|s| s.last_seq as u64).sum(),
    };
    // One saga whatever its size, oldest first, never a part of a journal.
    assert!(cost(&done_1) > 1);
    assert_eq!(
        store.prune_finished(500, 1).await.unwrap(),
        pruned(&[&done_1])
    );
    assert_pruned(store, &done_1).await;
    // Whole sagas within the row bound: the second does not fit.
    let bound = cost(&compensated) + cost(&done_2) - 1;
    assert_eq!(
        store.prune_finished(500, bound).await.unwrap(),
        pruned(&[&compensated])
    );
    assert_pruned(store, &compensated).await;
    assert_eq!(
        store.prune_finished(500, 1_000).await.unwrap(),
        pruned(&[&done_2])
    );
    assert_pruned(store, &done_2).await;
    assert_eq!(
        store.prune_finished(500, 1_000).await.unwrap(),
        PrunedSagas::default(),
        "nothing finished before the cutoff is left"
    );
    assert_eq!(
        store.prune_finished(500, 0).await.unwrap(),
        PrunedSagas::default()
    );
    for s in kept {
        assert_eq!(
            &assert_row_is_fold(store, s.id).await,
            s,
            "{} kept",
            s.business_key
        );
    }
    // A later cutoff takes the recent one, and still no saga that is not finished.
    assert_eq!(
        store.prune_finished(1_000, 1_000).await.unwrap(),
        pruned(&[&recent])
    );
    assert_pruned(store, &recent).await;
    for s in [&running, &attention, &compensating] {
        assert_eq!(&assert_row_is_fold(store, s.id).await, s);
    }
    // The business key of a pruned saga is free again: a start creates a new saga.
    create(store, "c-prune-done-1", "e1", 1_000).await;
}
