//! The `sagaflow` command line (docs/architecture.md, "Run modes"), as a library so that tests can
//! run the embedded system and reuse the invariant checks:
//!
//! - [`serve`]: one service on its own port and database (`sagaflow serve <service>`);
//! - [`dev`]: every service and the orchestrator in one process on SQLite (`sagaflow dev`);
//! - [`demo`]: places the shipped sample orders and checks the invariants (`sagaflow demo`);
//! - [`bench`](mod@bench): a load generator (`sagaflow bench`);
//! - [`saga`]: the saga admin API (`sagaflow saga show|list|retry|cancel`);
//! - [`token`]: a development bearer token for an end user (`sagaflow token alice`);
//! - [`retention`]: which retention jobs `serve` and `dev` run;
//! - [`invariants`]: the invariants of docs/architecture.md, "Invariants", checked through the
//!   query APIs;
//! - [`failpoints`]: arming the engine's failpoints from `FAILPOINTS` (chaos tests).

mod cli;

pub use cli::main;

pub mod bench;
pub mod datadir;
pub mod demo;
pub mod dev;
pub mod failpoints;
pub mod invariants;
pub mod load;
pub mod recovery;
pub mod retention;
pub mod saga;
pub mod saga_list;
pub mod seed;
pub mod serve;
pub mod services;
pub mod targets;
pub mod token;

/// Why a command failed: bad configuration (exit 64) or a runtime failure (exit 1).
#[derive(Debug)]
pub enum CliError {
    /// Invalid configuration, with a one-line message.
    Usage(String),
    /// A runtime failure.
    Failed(anyhow::Error),
    /// Ctrl-C cut the command short after it reported what it had (exit 130).
    Interrupted,
}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        Self::Failed(err)
    }
}
