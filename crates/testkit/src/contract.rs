//! The command contract of docs/architecture.md, "The service contract", as one test suite that
//! every service with commands runs on both backends (in the style of a catalog's shared
//! interface tests: one generic suite, a small adapter per service).
//!
//! A service implements [`Command`] (and [`Compensatable`] for a saga action with a
//! compensation) for one of its commands: how to prepare a fresh subject (an order, with what it
//! needs), how to send the command with a key, how to send another request with the same key,
//! how to send its compensation, and how to read the command's effect. Then [`run`] (or
//! [`run_idempotent`] for a command without a compensation) checks:
//!
//! 1. a repeat returns the stored reply ([`Command::repeat_of`] the first) and applies once;
//! 2. the same key with another request is ALREADY_EXISTS `IDEMPOTENCY_KEY_REUSED` and changes
//!    nothing;
//! 3. concurrent repeats ([`CONCURRENT_REPEATS`] at once) apply once and all get the same reply
//!    (one of them the first reply, when a repeat's differs from it);
//! 4. (compensatable) the compensation first makes the late action fail with FAILED_PRECONDITION
//!    `COMPENSATED_BEFORE_ACTION`, change nothing, and answer the same when repeated.

use std::{fmt::Debug, future::Future, pin::Pin, sync::Arc};

use tonic::{Code, Status};

use crate::service::assert_reason;

/// A boxed, sendable future (what adapter methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What sending a request returns: the service's answer, or its status.
pub type Answer<'a, T> = BoxFuture<'a, Result<T, Status>>;

/// How many identical requests [`run`] sends at once.
pub const CONCURRENT_REPEATS: usize = 20;

/// One command of a service under test (see the module docs).
pub trait Command: Send + Sync + 'static {
    /// What identifies one independent use of the command (for example an order id, with the
    /// sku or user prepared for it).
    type Subject: Clone + Debug + Send + Sync + 'static;
    /// The command's reply, compared between repeats.
    type Reply: Clone + PartialEq + Debug + Send + 'static;
    /// What the command changes, read back from the service or its database, in values that do
    /// not name the subject (so two subjects' effects compare equal after the same commands).
    type Effect: PartialEq + Debug + Send + 'static;

    /// Prepares a fresh subject (for example stocks a new sku) and returns it.
    fn subject(&self) -> BoxFuture<'_, Self::Subject>;
    /// Sends the command for `subject` under `key`: the request the suite repeats (`other`
    /// false), or a different one (other amount, lines, …) that reuses the key (`other` true).
    fn send(&self, subject: &Self::Subject, key: &str, other: bool) -> Answer<'_, Self::Reply>;
    /// Reads the command's effect on `subject`.
    fn effect(&self, subject: &Self::Subject) -> BoxFuture<'_, Self::Effect>;

    /// What a repeat answers when the first call answered `first`: the stored reply itself,
    /// unless the reply says whether this very call applied (Ranking's `applied`, false on a
    /// repeat).
    fn repeat_of(&self, first: &Self::Reply) -> Self::Reply {
        first.clone()
    }
}

/// A saga action whose compensation follows the late-action rule.
pub trait Compensatable: Command {
    /// Sends the compensation of the command for `subject` under `key`.
    fn compensate(&self, subject: &Self::Subject, key: &str) -> Answer<'_, ()>;
}

/// Runs the whole suite, the late-action rule included.
///
/// # Panics
/// When the service breaks a rule of the contract.
pub async fn run<A: Compensatable>(adapter: A) {
    let adapter = Arc::new(adapter);
    run_idempotent_arc(&adapter).await;
    compensation_first_refuses_the_late_action(&*adapter).await;
}

/// Runs the idempotency part of the suite (for a command without a compensation).
///
/// # Panics
/// When the service breaks a rule of the contract.
pub async fn run_idempotent<A: Command>(adapter: A) {
    run_idempotent_arc(&Arc::new(adapter)).await;
}

async fn run_idempotent_arc<A: Command>(adapter: &Arc<A>) {
    let (once, first) = repeat_returns_the_stored_reply_and_applies_once(&**adapter).await;
    same_key_other_request_is_already_exists(&**adapter).await;
    let repeats_differ = adapter.repeat_of(&first) != first;
    concurrent_repeats_apply_once(adapter, &once, repeats_differ).await;
}

/// Returns the effect of one application, for comparisons on other subjects, and the first
/// reply.
async fn repeat_returns_the_stored_reply_and_applies_once<A: Command>(
    adapter: &A,
) -> (A::Effect, A::Reply) {
    let subject = adapter.subject().await;
    let before = adapter.effect(&subject).await;
    let first = adapter
        .send(&subject, "contract:repeat", false)
        .await
        .unwrap_or_else(|status| panic!("first command for {subject:?}: {status:?}"));
    let once = adapter.effect(&subject).await;
    assert_ne!(once, before, "the command has an effect");
    for _ in 0..2 {
        let again = adapter
            .send(&subject, "contract:repeat", false)
            .await
            .unwrap_or_else(|status| panic!("repeat for {subject:?}: {status:?}"));
        assert_eq!(
            again,
            adapter.repeat_of(&first),
            "a repeat returns the stored reply"
        );
        assert_eq!(
            adapter.effect(&subject).await,
            once,
            "a repeat applies nothing"
        );
    }
    (once, first)
}

async fn same_key_other_request_is_already_exists<A: Command>(adapter: &A) {
    let subject = adapter.subject().await;
    adapter
        .send(&subject, "contract:reuse", false)
        .await
        .unwrap_or_else(|status| panic!("first command for {subject:?}: {status:?}"));
    let after = adapter.effect(&subject).await;
    let err = adapter
        .send(&subject, "contract:reuse", true)
        .await
        .expect_err("the same key with another request is refused");
    assert_reason(&err, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        adapter.effect(&subject).await,
        after,
        "the refused request applies nothing"
    );
}

/// `repeats_differ`: a repeat's reply differs from the first reply, so exactly one racer gets
/// the first reply and the others its repeat form.
async fn concurrent_repeats_apply_once<A: Command>(
    adapter: &Arc<A>,
    once: &A::Effect,
    repeats_differ: bool,
) {
    let subject = adapter.subject().await;
    let calls: Vec<_> = (0..CONCURRENT_REPEATS)
        .map(|_| {
            let (adapter, subject) = (Arc::clone(adapter), subject.clone());
            tokio::spawn(async move { adapter.send(&subject, "contract:race", false).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(calls.len());
    for call in calls {
        replies.push(call.await.expect("the call task"));
    }
    // A racer may be told to retry while the first holds the key; its retry gets the reply.
    let mut settled = Vec::with_capacity(replies.len());
    for reply in replies {
        let reply = match reply {
            Err(status) if status.code() == Code::Unavailable => {
                adapter.send(&subject, "contract:race", false).await
            }
            other => other,
        };
        settled.push(reply.unwrap_or_else(|status| panic!("concurrent repeat: {status:?}")));
    }
    let as_repeats: Vec<A::Reply> = settled.iter().map(|r| adapter.repeat_of(r)).collect();
    assert!(
        as_repeats.iter().all(|r| *r == as_repeats[0]),
        "every repeat gets the one reply: {settled:?}"
    );
    let firsts = settled
        .iter()
        .zip(&as_repeats)
        .filter(|(reply, repeat)| reply != repeat)
        .count();
    assert_eq!(
        firsts,
        usize::from(repeats_differ),
        "one racer applied, the others were answered as repeats: {settled:?}"
    );
    assert_eq!(
        &adapter.effect(&subject).await,
        once,
        "concurrent repeats apply once"
    );
}

async fn compensation_first_refuses_the_late_action<A: Compensatable>(adapter: &A) {
    let subject = adapter.subject().await;
    adapter
        .compensate(&subject, "contract:late:compensate")
        .await
        .unwrap_or_else(|status| panic!("compensation without its action: {status:?}"));
    let after = adapter.effect(&subject).await;
    for _ in 0..2 {
        let err = adapter
            .send(&subject, "contract:late", false)
            .await
            .expect_err("the late action is refused");
        assert_reason(&err, Code::FailedPrecondition, "COMPENSATED_BEFORE_ACTION");
        assert_eq!(
            adapter.effect(&subject).await,
            after,
            "the late action changes nothing"
        );
    }
    // A repeated compensation changes nothing either.
    adapter
        .compensate(&subject, "contract:late:compensate")
        .await
        .unwrap_or_else(|status| panic!("repeated compensation: {status:?}"));
    assert_eq!(adapter.effect(&subject).await, after);
}
