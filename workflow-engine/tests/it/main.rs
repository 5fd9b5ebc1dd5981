//! Integration tests of the saga engine against real SQLite files and the real local PostgreSQL.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod engine;
mod failpoints;
mod failure_paths;
mod memory;
mod property;
mod retention;
mod store;
mod support;
mod two_engines;
