//! The distributed mode on the Kafka transport, against a real Kafka-protocol broker (Tansu)
//! each test starts (a broker that cannot start fails the test): every service a
//! `sagaflow serve` process on PostgreSQL with `--event-bus kafka://…` (harness:
//! `sagaflow_tests::chaos`, module `kafka`).
//!
//! - `distributed_run_of_500_mixed_orders`: 500 orders of the chaos mix (plain, coupons, points,
//!   declines, out of stock, …) all end; every invariant holds, Ranking's sales and product view
//!   included, and the databases agree (one saga per order, each event once in the inbox).
//! - `broker_stopped_for_30_s_mid_run`: SIGSTOP of the broker while orders are placed, SIGCONT
//!   after 30 s: nothing lost, nothing applied twice, per-order event order kept, the order
//!   service's `sagaflow_outbox_pending` rises during the stop and drains to 0 after it.
//! - `consumer_crash_after_the_effect_before_the_offset_commit`: Ranking aborted at the
//!   consumer's failpoint between a handler's commit and the offset commit: records with their
//!   effect in the inbox are left past the group's committed offsets; the restarted Ranking
//!   consumes them again, and the data shows they had no effect.
//! - `two_orchestrator_replicas_share_the_group_and_survive_a_kill`.
//! - `poison_records_are_dead_lettered_and_the_partitions_keep_flowing`.
//!
//! The chaos suite's Kafka variant is `chaos::run_kafka`; the one-trace-per-order check with
//! Kafka is in `observability`.

use std::time::Duration;

use sagaflow_events::kafka::DEAD_LETTER_TOPIC;
use sagaflow_tests::chaos::{self, ChaosConfig, ChaosReport};

fn assert_clean(report: &ChaosReport) {
    assert!(
        report.violations.is_empty(),
        "{} violations:\n  {}",
        report.violations.len(),
        report.violations.join("\n  ")
    );
}

fn assert_mixed(outcomes: &std::collections::BTreeMap<String, usize>) {
    assert!(outcomes.contains_key("COMPLETED"), "{outcomes:?}");
    assert!(
        outcomes.keys().any(|k| k.starts_with("FAILED")),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_run_of_500_mixed_orders() {
    let broker = tokio::task::spawn_blocking(sagaflow_testkit::kafka::Broker::start)
        .await
        .unwrap();
    let config = ChaosConfig {
        chaos: false,
        clients: 12,
        load_limit: Duration::from_secs(180),
        settle_limit: Duration::from_secs(60),
        ..ChaosConfig::short(500)
    }
    .with_kafka(broker.bootstrap());
    let report = chaos::run(&config).await.unwrap();
    eprintln!("{report}");
    assert_clean(&report);
    assert_eq!(report.orders_placed, 500, "{report}");
    assert_eq!(report.outcomes.values().sum::<usize>(), 500, "{report}");
    assert_mixed(&report.outcomes);
    assert!(report.checks > 500 * 10, "{report}");
    assert_eq!(report.total_kills(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_for_30_s_mid_run() {
    let report = chaos::broker_outage(240, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!("{report:?}");
    assert_clean(&report.report);
    assert_eq!(report.unfinished, 0, "{report:?}");
    assert_eq!(
        report.outcomes.values().sum::<usize>(),
        report.orders,
        "{report:?}"
    );
    assert_mixed(&report.outcomes);
    assert!(report.outage_ms >= 30_000, "{report:?}");
    assert!(
        report.placed_during_outage > 0,
        "orders were placed during the outage: {report:?}"
    );
    assert!(
        report.pending_peak > 0.0,
        "the outbox backlog rose while the broker was stopped: {report:?}"
    );
    assert_eq!(report.pending_after, 0.0, "the backlog drained: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_crash_after_the_effect_before_the_offset_commit() {
    let report = chaos::consumer_crash(120).await.unwrap();
    eprintln!("{report:?}");
    assert!(report.aborted, "{report:?}");
    // The crash window was real: records whose effect was committed were left uncommitted.
    assert!(
        report.uncommitted_with_effect >= 1,
        "no handled record past the committed offsets: {report:?}"
    );
    // The restarted Ranking got them again and went past them.
    assert!(report.caught_up, "{report:?}");
    // And the redelivery changed nothing: each event once in the inbox, sales and product view
    // equal to what the completed orders and the stock changes imply.
    assert_clean(&report.report);
    assert_eq!(report.unfinished, 0, "{report:?}");
    assert_eq!(
        report.outcomes.values().sum::<usize>(),
        report.orders,
        "{report:?}"
    );
    assert_mixed(&report.outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_orchestrator_replicas_share_the_group_and_survive_a_kill() {
    let report = chaos::replicas(180).await.unwrap();
    eprintln!("{report:?}");
    // Both members consumed: each had partitions and started sagas before the kill.
    assert_eq!(report.assigned_before.len(), 2, "{report:?}");
    for (replica, partitions) in &report.assigned_before {
        assert!(!partitions.is_empty(), "{replica}: {report:?}");
        assert!(
            report
                .started_before_kill
                .get(replica)
                .is_some_and(|&n| n > 0),
            "{replica} started no saga before the kill: {report:?}"
        );
    }
    // The survivor took the dead member's partitions.
    assert_eq!(report.survivor_after.len(), report.partitions, "{report:?}");
    // Every saga started exactly once (one saga per order is among the database checks) and
    // every order ended.
    assert_clean(&report.report);
    assert_eq!(report.unfinished, 0, "{report:?}");
    assert_eq!(
        report.outcomes.values().sum::<usize>(),
        report.orders,
        "{report:?}"
    );
    assert_eq!(
        report.started.values().sum::<usize>(),
        report.orders,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_dead_lettered_and_the_partitions_keep_flowing() {
    let report = chaos::poison(60).await.unwrap();
    eprintln!("{report:?}");
    assert_eq!(
        report.dead_letters.len(),
        report.partitions + 2,
        "{report:?}"
    );
    for letter in &report.dead_letters {
        assert!(
            letter.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "a dead letter without its reason: {letter:?}"
        );
        assert_eq!(
            letter.original_topic.as_deref(),
            Some(sagaflow_events::Family::Order.topic()),
            "{letter:?}"
        );
    }
    // Each poison OrderCreated, from its own partition, refused by the orchestrator as
    // undecodable.
    for (partition, key) in &report.poison {
        let letters: Vec<_> = report
            .dead_letters
            .iter()
            .filter(|l| &l.key == key)
            .collect();
        assert_eq!(letters.len(), 1, "{key}: {letters:?}");
        assert_eq!(letters[0].original_partition, Some(*partition));
        assert!(
            letters[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("does not decode")),
            "{letters:?}"
        );
    }
    // The headerless record, by both groups.
    let headerless: Vec<_> = report
        .dead_letters
        .iter()
        .filter(|l| l.key == report.headerless)
        .collect();
    assert_eq!(headerless.len(), 2, "{headerless:?} in {DEAD_LETTER_TOPIC}");
    for letter in headerless {
        assert!(
            letter
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("missing header")),
            "{letter:?}"
        );
    }
    // Orders placed after the poison, on every partition, still complete.
    assert_clean(&report.report);
    assert_eq!(report.unfinished, 0, "{report:?}");
    assert_eq!(report.outcomes.values().sum::<usize>(), report.orders);
    assert!(report.outcomes.get("COMPLETED").is_some_and(|&n| n > 0));
}
