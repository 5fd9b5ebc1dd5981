//! `sagaflow token <user>`: prints a bearer token for `user`, signed with the development key of
//! a `sagaflow dev` data directory (docs/operations.md, "End users"), for grpcurl and the
//! client examples: `-H "authorization: Bearer $(sagaflow token alice)"`.
//!
//! The key is the one `dev` verifies against (made on its first start, or by this command when
//! there is none yet, mode 0600). A deployment's tokens come from its identity provider, never
//! from here.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use sagaflow_server::end_users::DevKey;

/// Flags of `sagaflow token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token names (its `sub`): what PlaceOrder, ListOrders and GetBalance act
    /// on for the bearer.
    pub user: String,
    /// Data directory of the `sagaflow dev` that is to accept the token.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = ".sagaflow")]
    pub data_dir: PathBuf,
    /// How long the token is valid, e.g. `30m`, `1h`, `7d` (humantime). Default 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// The token of `args` (printed by the command line).
///
/// # Errors
/// A user id that is empty, longer than 256 bytes or has control characters; a key that cannot
/// be read or made.
pub fn run(args: &TokenArgs) -> anyhow::Result<String> {
    if args.user.is_empty() || args.user.len() > 256 || args.user.chars().any(char::is_control) {
        anyhow::bail!("the user id must be 1 to 256 bytes without control characters");
    }
    anyhow::ensure!(
        args.ttl >= Duration::from_secs(1),
        "--ttl must be at least 1s"
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let key = DevKey::load_or_create(&args.data_dir)?;
    key.mint(&args.user, args.ttl).context("signing the token")
}
