//! Configuration shared by every process: clap flags, each with a `SAGAFLOW_*` environment variable
//! (12-factor, DESIGN §8) and a default that works on a laptop.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

use crate::{
    db::{PoolConfig, SqliteSynchronous},
    faults::FaultConfig,
};

/// Where a server listens.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, env = "SAGAFLOW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
}

/// Database connection settings.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `postgres://user@host:5432/db` or `sqlite://path/to/file.db`. Default: a
    /// SQLite file named after the service under the data directory.
    #[arg(long, env = "SAGAFLOW_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Most pooled connections (default 16 on PostgreSQL, 4 on SQLite).
    #[arg(long, env = "SAGAFLOW_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// SQLite durability: `full` fsyncs every commit; `normal` survives a process crash but not
    /// a power loss.
    #[arg(long, env = "SAGAFLOW_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub sqlite_synchronous: Synchronous,
}

/// `PRAGMA synchronous` choices exposed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged.
    Full,
    /// Commits survive a process crash; a power loss may lose the last ones.
    Normal,
}

impl DatabaseArgs {
    /// The pool settings these flags describe.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.db_max_connections,
            sqlite_synchronous: match self.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            },
            ..PoolConfig::default()
        }
    }
}

/// Fault injection (chaos tests only; off by default).
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Faults to inject, for example `StartPayment=error:unavailable:0.2;*=lost_reply:0.05`
    /// (see `sagaflow_server::faults`). Empty: none.
    #[arg(long, env = "SAGAFLOW_FAULTS", default_value = "")]
    pub faults: FaultConfig,
}
