//! Engine benchmark: a 7-step saga (5 compensatable steps, a pivot, a retriable
//! step) on SQLite and PostgreSQL, with steps as in-process no-ops or as gRPC calls to a no-op
//! service on loopback (`grpc.health.v1.Health/Check` of a `sagaflow_server::grpc::serve` server),
//! and a compensating variant (no-op steps, the pivot fails as a business failure, steps 5..1 are
//! compensated: latency is start to COMPENSATED), at several concurrencies. Prints sagas per second, p50/p99 latency (start to COMPLETED), and
//! database commits per saga, with the durability settings. It reports; it never fails.
//!
//! ```text
//! cargo run -p sagaflow-workflow-engine --example engine_bench -- --sagas 500 --max-seconds 10
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use clap::Parser;
use sagaflow_server::{Db, PoolConfig, db::SqliteSynchronous, faults::FaultConfig, grpc::serve};
use sagaflow_testkit::{Kind, TestDatabase};
use sagaflow_workflow_engine::{
    Engine, MIGRATIONS, SagaDefinition, SagaStatus, SagaStore, SqlSagaStore, Step, StepContext,
    StepError,
};
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Parser)]
struct Args {
    /// Most sagas per configuration.
    #[arg(long, default_value_t = 500)]
    sagas: usize,
    /// Longest run per configuration, seconds.
    #[arg(long, default_value_t = 10)]
    max_seconds: u64,
    /// Concurrencies (sagas in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Backends: sqlite, sqlite-normal (synchronous=NORMAL, labelled), postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// Variants: noop, grpc, compensate.
    #[arg(long, value_delimiter = ',', default_value = "noop,grpc,compensate")]
    variants: Vec<String>,
}

const STEPS: [&str; 7] = [
    "use_coupon",
    "apply_coupon",
    "deduct_inventory",
    "start_payment",
    "deduct_points",
    "complete_payment",
    "complete_order",
];

async fn noop(_ctx: StepContext) -> Result<Value, StepError> {
    Ok(Value::Null)
}

async fn declined(_ctx: StepContext) -> Result<Value, StepError> {
    Err(StepError::business(
        "PAYMENT_DECLINED",
        "the bench's pivot declines",
    ))
}

fn definition(channel: Option<Channel>, fail_pivot: bool) -> SagaDefinition {
    let action = move || {
        let channel = channel.clone();
        move |ctx: StepContext| {
            let channel = channel.clone();
            async move {
                if let Some(channel) = channel {
                    let mut client = HealthClient::new(channel);
                    let mut request = tonic::Request::new(HealthCheckRequest {
                        service: String::new(),
                    });
                    request.set_timeout(ctx.remaining());
                    client.check(request).await.map_err(StepError::from)?;
                }
                Ok(Value::Null)
            }
        }
    };
    let mut builder = SagaDefinition::builder("bench", 1);
    for step in &STEPS[..5] {
        builder = builder.step(Step::compensatable(step, action()).compensation(noop));
    }
    let pivot = if fail_pivot {
        Step::pivot(STEPS[5], declined)
    } else {
        Step::pivot(STEPS[5], action())
    };
    builder
        .step(pivot)
        .step(Step::retriable(STEPS[6], action()))
        .build()
        .expect("valid definition")
}

struct Outcome {
    completed: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    commits: u64,
}

async fn run_one(
    store: Arc<SqlSagaStore>,
    channel: Option<Channel>,
    fail_pivot: bool,
    concurrency: usize,
    sagas: usize,
    max: Duration,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let engine = Engine::builder(store.clone())
        .definition(definition(channel, fail_pivot))
        .concurrency(concurrency.max(1) * 2)
        .build()?;
    let commits_before = store.commits();
    let started = tokio::time::Instant::now();
    let deadline = started + max;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expected = if fail_pivot {
        SagaStatus::Compensated
    } else {
        SagaStatus::Completed
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let engine = engine.clone();
        let next = next.clone();
        let tag = tag.to_owned();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= sagas || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let t0 = tokio::time::Instant::now();
                let key = format!("{tag}-{i}");
                let Ok((id, _)) = engine.start("bench", &key, Value::Null, None, None).await else {
                    continue;
                };
                match engine.wait_finished(id, Duration::from_secs(30)).await {
                    Ok(s) if s.status() == expected => {
                        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    other => eprintln!("saga {key} did not end {expected:?}: {other:?}"),
                }
            }
            latencies
        });
    }
    let mut latencies_ms = Vec::new();
    while let Some(res) = workers.join_next().await {
        latencies_ms.extend(res?);
    }
    let elapsed = started.elapsed();
    let commits = store.commits() - commits_before;
    engine.shutdown(Duration::from_secs(5)).await;
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Outcome {
        completed: latencies_ms.len(),
        elapsed,
        latencies_ms,
        commits,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn open(backend: &str) -> anyhow::Result<(TestDatabase, Db, String)> {
    let (kind, sync) = match backend {
        "sqlite" => (Kind::Sqlite, SqliteSynchronous::Full),
        "sqlite-normal" => (Kind::Sqlite, SqliteSynchronous::Normal),
        "postgres" => (Kind::Postgres, SqliteSynchronous::Full),
        other => anyhow::bail!("unknown backend {other}"),
    };
    let tdb = TestDatabase::new(kind, "bench");
    let config = PoolConfig {
        sqlite_synchronous: sync,
        ..PoolConfig::default()
    };
    let db = Db::connect(&tdb.url, MIGRATIONS, &config).await?;
    let durability = match kind {
        Kind::Sqlite => {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(db.pool())
                .await?;
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(db.pool())
                .await?;
            let name = match synchronous {
                0 => "OFF",
                1 => "NORMAL",
                2 => "FULL",
                _ => "EXTRA",
            };
            format!("SQLite journal_mode={mode} synchronous={name}")
        }
        Kind::Postgres => {
            let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(db.pool())
                .await?;
            let fsync: String = sqlx::query_scalar("SHOW fsync")
                .fetch_one(db.pool())
                .await?;
            format!("PostgreSQL synchronous_commit={sc} fsync={fsync}")
        }
    };
    Ok((tdb, db, durability))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn({
        let stop = shutdown.clone();
        async move {
            serve(
                listener,
                tonic::service::RoutesBuilder::default(),
                &[],
                FaultConfig::default(),
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .ok();
    println!(
        "7-step saga; latency = start() to COMPLETED (compensate: to COMPENSATED); commits = database write transactions \
         (group commit batches many sagas' transitions)"
    );
    println!(
        "{:<14} {:<10} {:>5} {:>6} {:>7} {:>9} {:>8} {:>8} {:>13}   durability",
        "backend",
        "variant",
        "conc",
        "sagas",
        "secs",
        "sagas/s",
        "p50 ms",
        "p99 ms",
        "commits/saga"
    );
    for backend in &args.backends {
        for variant in &args.variants {
            let fail_pivot = variant == "compensate";
            let channel = match variant.as_str() {
                "noop" | "compensate" => None,
                "grpc" => match &channel {
                    Some(c) => Some(c.clone()),
                    None => {
                        eprintln!("gRPC variant skipped: no channel to the no-op server");
                        continue;
                    }
                },
                other => {
                    eprintln!("unknown variant {other}");
                    continue;
                }
            };
            for &concurrency in &args.concurrency {
                let (tdb, db, durability) = match open(backend).await {
                    Ok(x) => x,
                    Err(err) => {
                        eprintln!("{backend}: cannot open a database: {err:#}");
                        continue;
                    }
                };
                let store = Arc::new(SqlSagaStore::new(db.clone()));
                let tag = format!("{backend}-{variant}-{concurrency}");
                match run_one(
                    store,
                    channel.clone(),
                    fail_pivot,
                    concurrency,
                    args.sagas,
                    Duration::from_secs(args.max_seconds),
                    &tag,
                )
                .await
                {
                    Ok(o) => {
                        #[allow(clippy::cast_precision_loss)]
                        let rate = o.completed as f64 / o.elapsed.as_secs_f64();
                        #[allow(clippy::cast_precision_loss)]
                        let per_saga = o.commits as f64 / o.completed.max(1) as f64;
                        println!(
                            "{:<14} {:<10} {:>5} {:>6} {:>7.2} {:>9.1} {:>8.2} {:>8.2} {:>13.2}   {}",
                            backend,
                            variant,
                            concurrency,
                            o.completed,
                            o.elapsed.as_secs_f64(),
                            rate,
                            percentile(&o.latencies_ms, 0.5),
                            percentile(&o.latencies_ms, 0.99),
                            per_saga,
                            durability
                        );
                    }
                    Err(err) => eprintln!("{tag}: {err:#}"),
                }
                db.close().await;
                drop(tdb);
            }
        }
    }
    shutdown.cancel();
    let _ = server.await;
}
