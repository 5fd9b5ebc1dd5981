//! Acceptance tests that run the real `sagaflow` binary and drive it with the real grpcurl.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chaos;
mod clients;
mod cost;
mod crash_restart;
mod dashboard;
mod demo;
mod distributed;
mod exposure;
mod foundation;
mod identity;
mod in_doubt;
mod in_process;
mod interrupt;
mod kafka;
mod logs;
mod nul_bytes;
mod observability;
mod recovery;
mod rpc;
mod secrets;
mod security;
mod startup_errors;
mod walkthrough;
