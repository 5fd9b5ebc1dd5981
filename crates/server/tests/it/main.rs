//! Integration tests of the shared plumbing against real SQLite files and a real PostgreSQL server.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_data;
mod group_commit;
mod idempotency;
mod in_process;
