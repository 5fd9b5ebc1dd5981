//! The order saga over the real services, in one process, on SQLite and PostgreSQL: generated
//! failure, unknown-outcome and run-twice cases for every step of the definition.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod consumer;
mod harness;
mod steps;
