//! The kill schedule, drawn from the run's seed before the load starts, and the killer that
//! follows it: SIGKILL a process, keep it down a while, restart it — an orchestrator sometimes
//! with an engine failpoint armed, so that it aborts at that named point. Between events the
//! killer reaps processes that died on their own: an armed orchestrator that aborted at its
//! failpoint is counted and restarted unarmed; any other exit is a violation.

use std::{collections::BTreeMap, fmt, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom as _};
use tokio_util::sync::CancellationToken;

use super::{
    ChaosConfig,
    cluster::{Cluster, Role},
};

/// The engine's failpoints (`workflow-engine/src/driver.rs`, `poller.rs`), in the order the schedule
/// cycles through them.
pub const FAILPOINTS: [&str; 5] = [
    "before_step_call",
    "after_claim",
    "after_step_reply_before_record",
    "in_compensation",
    "after_step_recorded",
];

/// A failpoint armed in a restarted orchestrator: let `skip` hits pass, abort at the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    /// One of [`FAILPOINTS`].
    pub name: &'static str,
    /// Hits that pass before the one that aborts.
    pub skip: u32,
}

impl Failpoint {
    /// The `fail` crate action string: `SKIP*off->1*panic` (the binary aborts on the panic).
    pub fn actions(&self) -> String {
        if self.skip == 0 {
            "1*panic".to_owned()
        } else {
            format!("{}*off->1*panic", self.skip)
        }
    }
}

/// One scheduled crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosEvent {
    /// Offset from the start of the load phase.
    pub at: Duration,
    /// Index of the node in the cluster (inventory, coupon, …, orchestrator-b).
    pub target: usize,
    /// The node's name.
    pub target_name: String,
    /// How long it stays down before its restart.
    pub downtime: Duration,
    /// The failpoint armed in the restarted process (orchestrators only).
    pub failpoint: Option<Failpoint>,
}

impl fmt::Display for ChaosEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1}s kill {} (down {}ms)",
            self.at.as_secs_f64(),
            self.target_name,
            self.downtime.as_millis()
        )?;
        if let Some(fp) = &self.failpoint {
            write!(f, " + {}={}", fp.name, fp.actions())?;
        }
        Ok(())
    }
}

/// Draws the kill schedule of a run from its seed: events until the load-phase bound; after the
/// first, every process once in a shuffled order, then targets weighted towards the
/// orchestrators (each replica twice as likely as a service). The first
/// event restarts the first orchestrator with `before_step_call` armed at its first hit, and the
/// next event comes at least 4 s later, so every run proves that failpoints abort the process.
pub(crate) fn schedule(config: &ChaosConfig, nodes: &[(String, Role)]) -> Vec<ChaosEvent> {
    // A stream of its own, so that the order mix and the schedule do not shift each other.
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x6b69_6c6c_6572_0001);
    let weights: Vec<u32> = nodes
        .iter()
        .map(|(_, role)| if *role == Role::Orchestrator { 2 } else { 1 })
        .collect();
    let total: u32 = weights.iter().sum();
    let first_orchestrator = nodes
        .iter()
        .position(|(_, role)| *role == Role::Orchestrator)
        .unwrap_or(0);
    let mut events = vec![ChaosEvent {
        at: Duration::from_secs(2),
        target: first_orchestrator,
        target_name: nodes
            .get(first_orchestrator)
            .map(|(n, _)| n.clone())
            .unwrap_or_default(),
        downtime: Duration::ZERO,
        failpoint: Some(Failpoint {
            name: FAILPOINTS[0],
            skip: 0,
        }),
    }];
    let mut at = Duration::from_secs(6);
    let mut armed = 1;
    // Every process is killed once early on (in a seeded order), then targets are drawn.
    let mut first_round: Vec<usize> = (0..nodes.len()).collect();
    first_round.shuffle(&mut rng);
    // Give the armed first orchestrator time to reach its failpoint.
    if first_round.first() == Some(&first_orchestrator) {
        first_round.rotate_left(1);
    }
    let mut first_round = first_round.into_iter();
    while at < config.load_limit {
        let target = first_round.next().unwrap_or_else(|| {
            let mut pick = rng.random_range(0..total);
            let mut target = 0;
            for (index, weight) in weights.iter().enumerate() {
                if pick < *weight {
                    target = index;
                    break;
                }
                pick -= weight;
            }
            target
        });
        let downtime =
            Duration::from_millis(rng.random_range(config.downtime_ms.0..=config.downtime_ms.1));
        let failpoint = (nodes[target].1 == Role::Orchestrator
            && rng.random_bool(config.arm_probability))
        .then(|| {
            let name = FAILPOINTS[armed % FAILPOINTS.len()];
            armed += 1;
            // Compensations and claims are rarer than step calls: abort sooner there.
            let skip = match name {
                "in_compensation" | "after_claim" => rng.random_range(0..=3),
                _ => rng.random_range(0..=25),
            };
            Failpoint { name, skip }
        });
        events.push(ChaosEvent {
            at,
            target,
            target_name: nodes[target].0.clone(),
            downtime,
            failpoint,
        });
        at += Duration::from_millis(rng.random_range(config.kill_gap_ms.0..=config.kill_gap_ms.1));
    }
    events
}

/// What the killer did.
#[derive(Debug, Default)]
pub(crate) struct KillerOutcome {
    /// Process kind → SIGKILLs.
    pub(crate) kills: BTreeMap<String, usize>,
    /// Failpoint → armed starts.
    pub(crate) armed_starts: BTreeMap<String, usize>,
    /// Failpoint → aborts there.
    pub(crate) failpoint_aborts: BTreeMap<String, usize>,
    /// Armed processes killed before they aborted.
    pub(crate) armed_killed_before_firing: usize,
    /// Processes that died unexpectedly (not by an armed failpoint).
    pub(crate) violations: Vec<String>,
}

/// Follows `events` until `stop` is cancelled (the clients finished) or the schedule ends, then
/// reaps and restarts any process that died meanwhile, so that every node is up on return.
///
/// # Errors
/// When a process cannot be restarted (see [`Cluster::start`]).
pub(crate) async fn run_killer(
    cluster: &mut Cluster,
    events: &[ChaosEvent],
    stop: CancellationToken,
) -> anyhow::Result<KillerOutcome> {
    let mut outcome = KillerOutcome::default();
    let started = tokio::time::Instant::now();
    'events: for event in events {
        let due = started + event.at;
        loop {
            reap(cluster, &mut outcome).await?;
            if stop.is_cancelled() {
                break 'events;
            }
            if tokio::time::Instant::now() >= due {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let node = cluster.node(event.target);
        let kind = node.role.name().to_owned();
        let was_armed = node.armed.is_some();
        if cluster.kill(event.target).await?.is_some() {
            *outcome.kills.entry(kind).or_default() += 1;
            if was_armed {
                outcome.armed_killed_before_firing += 1;
            }
        }
        tokio::time::sleep(event.downtime).await;
        let failpoint = event
            .failpoint
            .as_ref()
            .map(|fp| (fp.name.to_owned(), fp.actions()));
        if let Some((name, _)) = &failpoint {
            *outcome.armed_starts.entry(name.clone()).or_default() += 1;
        }
        cluster.start(event.target, true, failpoint).await?;
    }
    reap(cluster, &mut outcome).await?;
    Ok(outcome)
}

/// Restarts every process that exited on its own, counting failpoint aborts.
async fn reap(cluster: &mut Cluster, outcome: &mut KillerOutcome) -> anyhow::Result<()> {
    for exited in cluster.reap_exited() {
        match &exited.failpoint {
            Some(name) => {
                *outcome.failpoint_aborts.entry(name.clone()).or_default() += 1;
            }
            None => outcome.violations.push(format!(
                "{} exited unexpectedly with {} (not at an armed failpoint); log tail:\n{}",
                exited.name, exited.status, exited.log_tail
            )),
        }
        cluster.start(exited.index, true, None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<(String, Role)> {
        vec![
            ("inventory".into(), Role::Inventory),
            ("order".into(), Role::Order),
            ("orchestrator-a".into(), Role::Orchestrator),
            ("orchestrator-b".into(), Role::Orchestrator),
        ]
    }

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let config = ChaosConfig::short(42);
        let a = schedule(&config, &nodes());
        assert_eq!(a, schedule(&config, &nodes()));
        assert_ne!(a, schedule(&ChaosConfig::short(43), &nodes()));
        assert!(a.len() > 10, "{}", a.len());
        assert!(a.iter().all(|e| e.at < config.load_limit));
        let first_round: std::collections::BTreeSet<&str> =
            a[1..=4].iter().map(|e| e.target_name.as_str()).collect();
        assert_eq!(first_round.len(), 4, "every node is killed once first");
    }

    #[test]
    fn the_first_event_arms_a_failpoint_and_only_orchestrators_get_one() {
        let events = schedule(&ChaosConfig::short(7), &nodes());
        assert_eq!(events[0].target_name, "orchestrator-a");
        assert_eq!(
            events[0].failpoint,
            Some(Failpoint {
                name: "before_step_call",
                skip: 0
            })
        );
        assert!(events[1].at >= events[0].at + Duration::from_secs(4));
        for seed in 0..50 {
            let events = schedule(&ChaosConfig::short(seed), &nodes());
            assert_ne!(events[1].target, events[0].target, "seed {seed}");
        }
        for e in &events {
            if e.failpoint.is_some() {
                assert!(e.target_name.starts_with("orchestrator"), "{e}");
            }
        }
    }

    #[test]
    fn failpoint_actions_use_the_fail_crate_syntax() {
        let fp = Failpoint {
            name: "in_compensation",
            skip: 3,
        };
        assert_eq!(fp.actions(), "3*off->1*panic");
        assert_eq!(
            Failpoint {
                name: "after_claim",
                skip: 0
            }
            .actions(),
            "1*panic"
        );
    }
}
