//! The Kafka transport end to end: publisher → broker → consumer group → handler.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::future::join_all;
use rdkafka::{
    ClientConfig, Message as _,
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use sagaflow_events::{
    Envelope, FailureKind, Family, Publisher as _,
    kafka::{
        self, CONSUMED, CONSUMER_LAG, DEAD_LETTER_TOPIC, DEAD_LETTERED, HANDLER_FAILURES,
        HEADER_DEAD_LETTER_REASON, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_ORIGINAL_OFFSET,
        HEADER_ORIGINAL_PARTITION, HEADER_ORIGINAL_TOPIC, HEADER_SCHEMA_VERSION, HEADER_SEQUENCE,
        HEADER_TRACEPARENT, KafkaPublisher, KafkaPublisherConfig,
    },
};
use sagaflow_testkit::{eventually, kafka::Broker};

use crate::support::{
    CountingRecorder, FileInboxHandler, Inbox, TestHandler, WITHIN, consumer_config, envelope,
    publisher, read_inbox_file, read_topic, spawn_consumer,
};

const ORDER: &str = "sagaflow.order.events.v1";

fn header<'a>(message: &'a rdkafka::message::OwnedMessage, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_envelope_arrives_with_every_header() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &kafka::all_topics(1))
        .await
        .unwrap();
    // Creating again is not an error.
    kafka::ensure_topics(&brokers, &kafka::all_topics(1))
        .await
        .unwrap();

    let traced = envelope(Family::Order, "order-1", 1);
    let untraced = Envelope {
        traceparent: None,
        ..envelope(Family::Order, "order-1", 2)
    };
    let publisher = publisher(&brokers);
    publisher.publish(&traced).await.unwrap();
    publisher.publish(&untraced).await.unwrap();

    // The record as it is on the broker.
    let records = read_topic(&brokers, ORDER, 2).await;
    let first = &records[0];
    assert_eq!(first.key(), Some(b"order-1".as_slice()));
    assert_eq!(first.payload(), Some(traced.payload.as_slice()));
    assert_eq!(
        header(first, HEADER_EVENT_ID),
        Some(traced.event_id.as_str())
    );
    assert_eq!(header(first, HEADER_EVENT_TYPE), Some("OrderCreated"));
    assert_eq!(header(first, HEADER_SCHEMA_VERSION), Some("1"));
    assert_eq!(header(first, HEADER_SEQUENCE), Some("1"));
    assert_eq!(
        header(first, HEADER_TRACEPARENT),
        traced.traceparent.as_deref()
    );
    assert_eq!(header(&records[1], HEADER_TRACEPARENT), None);

    // And as a consumer's handler gets it back.
    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let running = spawn_consumer(
        consumer_config(&brokers, "round-trip", &[ORDER]),
        Arc::clone(&handler),
    );
    eventually("both envelopes handled", WITHIN, || async {
        (inbox.len() == 2).then_some(())
    })
    .await;
    running.stop().await;
    assert_eq!(inbox.get(&traced.event_id), Some(traced));
    assert_eq!(inbox.get(&untraced.event_id), Some(untraced));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_key_is_handled_in_order_while_keys_run_concurrently() {
    const KEYS: usize = 24;
    const PER_KEY: i64 = 12;
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 3)]).await.unwrap();
    let publisher = Arc::new(publisher(&brokers));
    // Each key's events one after the other (as the relay does), the keys concurrently.
    let published: Vec<Vec<Envelope>> = join_all((0..KEYS).map(|k| {
        let publisher = Arc::clone(&publisher);
        async move {
            let mut sent = Vec::new();
            for sequence in 1..=PER_KEY {
                let e = envelope(Family::Order, &format!("order-{k}"), sequence);
                publisher.publish(&e).await.unwrap();
                sent.push(e);
            }
            sent
        }
    }))
    .await;

    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler {
        delay_ms: 5,
        ..TestHandler::with_inbox(Arc::clone(&inbox))
    });
    let mut config = consumer_config(&brokers, "order", &[ORDER]);
    config.handler_concurrency = 8;
    let running = spawn_consumer(config, Arc::clone(&handler));
    let total = KEYS * PER_KEY as usize;
    eventually(
        std::fmt::from_fn(|f| write!(f, "{total} events handled ({} so far)", inbox.len())),
        WITHIN,
        || async { (inbox.len() == total).then_some(()) },
    )
    .await;
    running.stop().await;

    let order = inbox.order();
    for sent in &published {
        let key = &sent[0].aggregate_id;
        assert_eq!(
            order[key],
            (1..=PER_KEY).collect::<Vec<_>>(),
            "{key} applied out of order"
        );
    }
    assert!(
        handler.max_in_flight.load(Ordering::SeqCst) > 1,
        "different keys were handled concurrently"
    );
    assert!(handler.max_in_flight.load(Ordering::SeqCst) <= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_goes_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let recorder = CountingRecorder::global();
    let dead_before = recorder.counter(DEAD_LETTERED, ("topic", ORDER));
    let poison_before = recorder.counter(HANDLER_FAILURES, ("kind", "poison"));
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 1), (DEAD_LETTER_TOPIC, 1)])
        .await
        .unwrap();
    let publisher = publisher(&brokers);
    let first = envelope(Family::Order, "order-a", 1);
    publisher.publish(&first).await.unwrap();
    // Garbage: no headers at all (offset 1).
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    raw.send(
        FutureRecord::to(ORDER)
            .key("order-b")
            .payload(&[0xde, 0xad, 0xbe, 0xef][..]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // A schema version this build does not know (offset 2).
    let v2 = envelope(Family::Order, "order-c", 1);
    let mut headers = OwnedHeaders::new();
    for (name, value) in kafka::headers_of(&v2) {
        let value = if name == HEADER_SCHEMA_VERSION {
            "2".to_owned()
        } else {
            value
        };
        headers = headers.insert(Header {
            key: name,
            value: Some(&value),
        });
    }
    raw.send(
        FutureRecord::to(ORDER)
            .key("order-c")
            .payload(&v2.payload)
            .headers(headers),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Refused by the handler itself (offset 3), then a good one of the same key (offset 4).
    let refused = envelope(Family::Order, "order-a", 2);
    let after = envelope(Family::Order, "order-a", 3);
    publisher.publish(&refused).await.unwrap();
    publisher.publish(&after).await.unwrap();

    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler {
        poison: HashSet::from([refused.event_id.clone()]),
        ..TestHandler::with_inbox(Arc::clone(&inbox))
    });
    let running = spawn_consumer(
        consumer_config(&brokers, "poison", &[ORDER]),
        Arc::clone(&handler),
    );
    eventually("the good events handled", WITHIN, || async {
        (inbox.contains(&first.event_id) && inbox.contains(&after.event_id)).then_some(())
    })
    .await;

    let dead = read_topic(&brokers, DEAD_LETTER_TOPIC, 3).await;
    let by_offset = |offset: &str| {
        dead.iter()
            .find(|m| header(m, HEADER_ORIGINAL_OFFSET) == Some(offset))
            .unwrap_or_else(|| panic!("no dead letter of offset {offset}"))
    };
    let garbage = by_offset("1");
    assert_eq!(garbage.payload(), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
    assert_eq!(garbage.key(), Some(b"order-b".as_slice()));
    assert_eq!(header(garbage, HEADER_ORIGINAL_TOPIC), Some(ORDER));
    assert_eq!(header(garbage, HEADER_ORIGINAL_PARTITION), Some("0"));
    assert!(
        header(garbage, HEADER_DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("missing header event-id")),
        "{:?}",
        header(garbage, HEADER_DEAD_LETTER_REASON)
    );
    let unknown_version = by_offset("2");
    assert_eq!(
        header(unknown_version, HEADER_DEAD_LETTER_REASON),
        Some("unknown schema version 2")
    );
    assert_eq!(
        header(unknown_version, HEADER_EVENT_ID),
        Some(v2.event_id.as_str()),
        "the original headers are kept"
    );
    let domain = by_offset("3");
    assert_eq!(
        header(domain, HEADER_DEAD_LETTER_REASON),
        Some("refused by the domain")
    );
    assert_eq!(domain.payload(), Some(refused.payload.as_slice()));
    assert!(!inbox.contains(&refused.event_id));
    assert_eq!(
        handler.calls_of(&refused.event_id),
        1,
        "poison is not retried"
    );

    // Committed past the poison: a new member of the group gets nothing again.
    running.stop().await;
    assert!(recorder.counter(DEAD_LETTERED, ("topic", ORDER)) >= dead_before + 3);
    assert!(recorder.counter(HANDLER_FAILURES, ("kind", "poison")) >= poison_before + 3);
    let last = envelope(Family::Order, "order-d", 1);
    publisher.publish(&last).await.unwrap();
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let running = spawn_consumer(
        consumer_config(&brokers, "poison", &[ORDER]),
        Arc::clone(&handler),
    );
    eventually("the next event handled", WITHIN, || async {
        inbox.contains(&last.event_id).then_some(())
    })
    .await;
    running.stop().await;
    assert_eq!(handler.called_ids(), vec![last.event_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_failure_is_retried_and_its_offset_not_committed_before_success() {
    let recorder = CountingRecorder::global();
    let transient_before = recorder.counter(HANDLER_FAILURES, ("kind", "transient"));
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 1)]).await.unwrap();
    let publisher = publisher(&brokers);
    let done = envelope(Family::Order, "order-a", 1); // offset 0
    let stuck = envelope(Family::Order, "order-a", 2); // offset 1: fails
    let other = envelope(Family::Order, "order-b", 1); // offset 2: another key
    let behind = envelope(Family::Order, "order-a", 3); // offset 3: waits for `stuck`
    for e in [&done, &stuck, &other, &behind] {
        publisher.publish(e).await.unwrap();
    }

    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    handler
        .failing
        .lock()
        .unwrap()
        .insert(stuck.event_id.clone());
    let mut config = consumer_config(&brokers, "retry", &[ORDER]);
    config.statistics_interval_ms = 100;
    let running = spawn_consumer(config, Arc::clone(&handler));
    eventually("the stuck event retried 3 times", WITHIN, || async {
        (inbox.contains(&done.event_id)
            && inbox.contains(&other.event_id)
            && handler.calls_of(&stuck.event_id) >= 3)
            .then_some(())
    })
    .await;
    // The lag gauge: the committed offset stays at the stuck event (1) of 4.
    eventually(
        "the consumer lag gauge shows the 3 records from the stuck one on",
        WITHIN,
        || async {
            let lag = recorder.gauge(CONSUMER_LAG, &[("topic", ORDER), ("partition", "0")]);
            (lag == Some(3.0)).then_some(())
        },
    )
    .await;
    assert_eq!(
        handler.calls_of(&behind.event_id),
        0,
        "a later event of the same key waits"
    );
    // Shutdown interrupts the retry's wait (Running::stop bounds it).
    running.stop().await;
    assert!(recorder.counter(HANDLER_FAILURES, ("kind", "transient")) >= transient_before + 3);

    // A new member starts at the stuck event: offsets 1.. are redelivered, offset 0 is not.
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let running = spawn_consumer(
        consumer_config(&brokers, "retry", &[ORDER]),
        Arc::clone(&handler),
    );
    eventually("the stuck and later events handled", WITHIN, || async {
        (inbox.contains(&stuck.event_id) && inbox.contains(&behind.event_id)).then_some(())
    })
    .await;
    running.stop().await;
    let mut called = handler.called_ids();
    called.sort();
    let mut expected = vec![
        stuck.event_id.clone(),
        other.event_id.clone(),
        behind.event_id.clone(),
    ];
    expected.sort();
    assert_eq!(
        called, expected,
        "redelivered from the uncommitted offset on, and nothing before it"
    );
    assert_eq!(inbox.order()["order-a"], vec![1, 2, 3]);
    assert_eq!(
        inbox.duplicates.load(Ordering::SeqCst),
        1,
        "`other` was redelivered once and dropped by the inbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_share_the_partitions_and_the_survivor_takes_over() {
    let recorder = CountingRecorder::global();
    let consumed_before = recorder.counter(CONSUMED, ("topic", ORDER));
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 4)]).await.unwrap();
    let publisher = Arc::new(publisher(&brokers));
    let inbox = Arc::new(Inbox::default());
    let first = Arc::new(TestHandler {
        delay_ms: 3,
        ..TestHandler::with_inbox(Arc::clone(&inbox))
    });
    let second = Arc::new(TestHandler {
        delay_ms: 3,
        ..TestHandler::with_inbox(Arc::clone(&inbox))
    });
    let a = spawn_consumer(
        consumer_config(&brokers, "orchestrator", &[ORDER]),
        Arc::clone(&first),
    );
    let b = spawn_consumer(
        consumer_config(&brokers, "orchestrator", &[ORDER]),
        Arc::clone(&second),
    );

    // Publish rounds of events over 32 keys until both members have handled some.
    let mut sequence = 0;
    let mut published: Vec<Envelope> = Vec::new();
    let publish_round = |sequence: i64| {
        let publisher = Arc::clone(&publisher);
        async move {
            join_all((0..32).map(|k| {
                let publisher = Arc::clone(&publisher);
                async move {
                    let e = envelope(Family::Order, &format!("order-{k}"), sequence);
                    publisher.publish(&e).await.unwrap();
                    e
                }
            }))
            .await
        }
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while first.handled.load(Ordering::SeqCst) == 0 || second.handled.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both members handle events within {WITHIN:?} (first {}, second {})",
            first.handled.load(Ordering::SeqCst),
            second.handled.load(Ordering::SeqCst)
        );
        sequence += 1;
        published.extend(publish_round(sequence).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One member leaves; the other takes its partitions, including what it left unhandled.
    a.stop().await;
    let handled_by_first = first.handled.load(Ordering::SeqCst);
    for _ in 0..3 {
        sequence += 1;
        published.extend(publish_round(sequence).await);
    }
    let total = published.len();
    eventually(
        std::fmt::from_fn(|f| write!(f, "{total} events in the inbox ({} so far)", inbox.len())),
        WITHIN,
        || async { (inbox.len() == total).then_some(()) },
    )
    .await;
    b.stop().await;

    assert_eq!(first.handled.load(Ordering::SeqCst), handled_by_first);
    for e in &published {
        assert!(inbox.contains(&e.event_id), "{} lost", e.event_id);
    }
    for (key, applied) in inbox.order() {
        assert_eq!(
            applied,
            (1..=sequence).collect::<Vec<_>>(),
            "{key} in order"
        );
    }
    // At least once: redeliveries across the hand-over are possible; the inbox applied each
    // event exactly once (its length equals the distinct ids published).
    let handler_oks = first.handled.load(Ordering::SeqCst) + second.handled.load(Ordering::SeqCst);
    assert_eq!(handler_oks, total + inbox.duplicates.load(Ordering::SeqCst));
    assert!(recorder.counter(CONSUMED, ("topic", ORDER)) >= consumed_before + total as u64);
    eprintln!(
        "hand-over: {total} events, first member {handled_by_first}, redeliveries {}",
        inbox.duplicates.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_to_a_stopped_broker_fails_in_doubt_in_time_and_nothing_is_lost() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 1)]).await.unwrap();
    let mut config = KafkaPublisherConfig::new(&brokers);
    config.message_timeout_ms = 2_000;
    let publisher = KafkaPublisher::new(config).unwrap();
    let before = envelope(Family::Order, "order-a", 1);
    publisher.publish(&before).await.unwrap();

    broker.pause();
    let during = envelope(Family::Order, "order-a", 2);
    let started = tokio::time::Instant::now();
    let error = publisher
        .publish(&during)
        .await
        .expect_err("no acknowledgement from a stopped broker");
    let elapsed = started.elapsed();
    assert_eq!(error.kind, FailureKind::InDoubt, "{error}");
    // Bounded: 2 × message timeout + 1 s at most.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(elapsed >= Duration::from_millis(1_500), "took {elapsed:?}");
    broker.resume();

    // The relay retries an in-doubt event until it is acknowledged.
    let retried = eventually("the in-doubt event published again", WITHIN, || async {
        publisher.publish(&during).await.ok()
    })
    .await;
    let () = retried;
    let after = envelope(Family::Order, "order-a", 3);
    publisher.publish(&after).await.unwrap();

    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let running = spawn_consumer(
        consumer_config(&brokers, "after-pause", &[ORDER]),
        Arc::clone(&handler),
    );
    eventually("all three events handled", WITHIN, || async {
        (inbox.len() == 3).then_some(())
    })
    .await;
    running.stop().await;
    // The first attempt of `during` may have been written when the broker continued: then the
    // inbox dropped the second copy.
    assert_eq!(inbox.order()["order-a"], vec![1, 2, 3]);
    let copies = handler.calls_of(&during.event_id);
    assert!((1..=2).contains(&copies), "{copies} copies");
}

const MEMBER_BROKERS_ENV: &str = "SAGAFLOW_TEST_KAFKA_MEMBER_BROKERS";
const MEMBER_INBOX_ENV: &str = "SAGAFLOW_TEST_KAFKA_MEMBER_INBOX";
const CRASH_GROUP: &str = "crash";

/// The member that `a_killed_member_s_partitions_are_taken_over_and_its_effects_not_repeated`
/// runs as a child process and SIGKILLs. It never commits on its own (a commit interval of an
/// hour), so every event it applied is redelivered to the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: the crash test runs it as a child process"]
async fn crash_member_process() {
    let (Ok(brokers), Ok(inbox)) = (
        std::env::var(MEMBER_BROKERS_ENV),
        std::env::var(MEMBER_INBOX_ENV),
    ) else {
        return;
    };
    let mut config = consumer_config(&brokers, CRASH_GROUP, &[ORDER]);
    config.commit_interval_ms = 3_600_000;
    let handler = Arc::new(FileInboxHandler::new(inbox.into(), "child"));
    let running = spawn_consumer(config, handler);
    // Bounded: the parent kills it long before.
    let _ = tokio::time::timeout(Duration::from_secs(120), running.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_member_s_partitions_are_taken_over_and_its_effects_not_repeated() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 4)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inbox_path = dir.path().join("inbox");
    let survivor = Arc::new(FileInboxHandler::new(inbox_path.clone(), "survivor"));
    let running = spawn_consumer(
        consumer_config(&brokers, CRASH_GROUP, &[ORDER]),
        Arc::clone(&survivor),
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "kafka::crash_member_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(MEMBER_BROKERS_ENV, &brokers)
        .env(MEMBER_INBOX_ENV, &inbox_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let publisher = Arc::new(publisher(&brokers));
    let publish_round = |sequence: i64| {
        let publisher = Arc::clone(&publisher);
        async move {
            join_all((0..16).map(|k| {
                let publisher = Arc::clone(&publisher);
                async move {
                    let e = envelope(Family::Order, &format!("order-{k}"), sequence);
                    publisher.publish(&e).await.unwrap();
                    e
                }
            }))
            .await
        }
    };
    let mut sequence = 0;
    let mut published = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let lines = read_inbox_file(&inbox_path);
        if lines.iter().any(|l| l.member == "child") && lines.iter().any(|l| l.member == "survivor")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both members apply events within {WITHIN:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child member exited"
        );
        sequence += 1;
        published.extend(publish_round(sequence).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL: no revoke, no commit; its partitions move after the session timeout.
    child.kill().unwrap();
    child.wait().unwrap();
    let applied_by_child = read_inbox_file(&inbox_path)
        .iter()
        .filter(|l| l.member == "child")
        .count();
    for _ in 0..3 {
        sequence += 1;
        published.extend(publish_round(sequence).await);
    }
    let total = published.len();
    eventually(
        std::fmt::from_fn(|f| {
            write!(
                f,
                "{total} events in the inbox ({} so far)",
                read_inbox_file(&inbox_path).len()
            )
        }),
        WITHIN,
        || async { (read_inbox_file(&inbox_path).len() == total).then_some(()) },
    )
    .await;
    // Everything the child had applied (uncommitted) comes again: wait for those redeliveries.
    eventually(
        "the child's events redelivered to the survivor",
        WITHIN,
        || async { (survivor.duplicates.load(Ordering::SeqCst) >= applied_by_child).then_some(()) },
    )
    .await;
    running.stop().await;

    let lines = read_inbox_file(&inbox_path);
    let ids: HashSet<&str> = lines.iter().map(|l| l.event_id.as_str()).collect();
    assert_eq!(ids.len(), lines.len(), "an event applied twice");
    for e in &published {
        assert!(ids.contains(e.event_id.as_str()), "{} lost", e.event_id);
    }
    for k in 0..16 {
        let key = format!("order-{k}");
        let applied: Vec<i64> = lines
            .iter()
            .filter(|l| l.aggregate == key)
            .map(|l| l.sequence)
            .collect();
        assert_eq!(
            applied,
            (1..=sequence).collect::<Vec<_>>(),
            "{key} in order"
        );
    }
    assert!(applied_by_child > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_goes_on_after_the_broker_was_stopped_longer_than_its_session() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 2)]).await.unwrap();
    let publisher = publisher(&brokers);
    let inbox = Arc::new(Inbox::default());
    let handler = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let running = spawn_consumer(
        consumer_config(&brokers, "pause", &[ORDER]),
        Arc::clone(&handler),
    );
    let mut published = Vec::new();
    for k in 0..10 {
        let e = envelope(Family::Order, &format!("order-{k}"), 1);
        publisher.publish(&e).await.unwrap();
        published.push(e);
    }
    eventually("the first events handled", WITHIN, || async {
        (inbox.len() == 10).then_some(())
    })
    .await;

    broker.pause();
    // The outage itself is the scenario: longer than the 6 s session timeout.
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker.resume();

    for k in 0..10 {
        let e = envelope(Family::Order, &format!("order-{k}"), 2);
        eventually("published after the outage", WITHIN, || async {
            publisher.publish(&e).await.ok()
        })
        .await;
        published.push(e);
    }
    eventually(
        std::fmt::from_fn(|f| write!(f, "20 events handled ({} so far)", inbox.len())),
        WITHIN,
        || async { (inbox.len() == 20).then_some(()) },
    )
    .await;
    running.stop().await;
    for (key, applied) in inbox.order() {
        assert_eq!(applied, vec![1, 2], "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_record_is_refused() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 1)]).await.unwrap();
    let publisher = publisher(&brokers);
    let mut big = envelope(Family::Order, "order-big", 1);
    // Above librdkafka's default message.max.bytes (1 000 000).
    big.payload = vec![7; 2_000_000];
    let error = publisher.publish(&big).await.expect_err("too large");
    assert_eq!(error.kind, FailureKind::Refused, "{error}");
    // The producer is still usable.
    publisher
        .publish(&envelope(Family::Order, "order-small", 1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_commits_only_up_to_a_record_still_being_retried() {
    let broker = Broker::start();
    let brokers = broker.bootstrap();
    kafka::ensure_topics(&brokers, &[(ORDER, 2)]).await.unwrap();
    let publisher = publisher(&brokers);
    let done = envelope(Family::Order, "order-a", 1);
    let stuck = envelope(Family::Order, "order-a", 2);
    let behind = envelope(Family::Order, "order-a", 3);
    let mut published = vec![done.clone(), stuck.clone(), behind.clone()];
    for e in &published {
        publisher.publish(e).await.unwrap();
    }
    for k in 0..8 {
        let e = envelope(Family::Order, &format!("order-{k}"), 1);
        publisher.publish(&e).await.unwrap();
        published.push(e);
    }

    let inbox = Arc::new(Inbox::default());
    let first = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    first.failing.lock().unwrap().insert(stuck.event_id.clone());
    let a = spawn_consumer(
        consumer_config(&brokers, "rebalance", &[ORDER]),
        Arc::clone(&first),
    );
    eventually("all but the stuck key handled", WITHIN, || async {
        (inbox.len() == 9 && first.calls_of(&stuck.event_id) >= 2).then_some(())
    })
    .await;

    // A second member joins: the partitions are revoked and split. Publish until it handles
    // something, so the rebalance has happened.
    let second = Arc::new(TestHandler::with_inbox(Arc::clone(&inbox)));
    let b = spawn_consumer(
        consumer_config(&brokers, "rebalance", &[ORDER]),
        Arc::clone(&second),
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut sequence = 1;
    while second.handled.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second member handles events within {WITHIN:?}"
        );
        sequence += 1;
        for k in 0..8 {
            let e = envelope(Family::Order, &format!("order-{k}"), sequence);
            publisher.publish(&e).await.unwrap();
            published.push(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // If the stuck event's partition went to the second member, it has handled it by now; if
    // it stayed, the first member leaves still failing it and the second gets it then. Either
    // way the partition restarts at the stuck event, not after it.
    a.stop().await;
    let total = published.len();
    eventually(
        std::fmt::from_fn(|f| write!(f, "{total} events in the inbox ({} so far)", inbox.len())),
        WITHIN,
        || async { (inbox.len() == total).then_some(()) },
    )
    .await;
    b.stop().await;
    assert!(second.calls_of(&stuck.event_id) >= 1);
    assert_eq!(
        second.calls_of(&done.event_id),
        0,
        "what was handled before the stuck event was committed, at the revoke or the stop"
    );
    assert_eq!(inbox.order()["order-a"], vec![1, 2, 3]);
    for k in 0..8 {
        assert_eq!(
            inbox.order()[&format!("order-{k}")],
            (1..=sequence).collect::<Vec<_>>()
        );
    }
}

#[test]
#[should_panic(expected = "could not start the tansu broker")]
fn a_broker_that_cannot_start_fails_the_test() {
    let _ = Broker::start_with(std::path::Path::new("/nonexistent/tansu"));
}
