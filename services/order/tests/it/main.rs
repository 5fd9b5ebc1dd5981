//! Integration tests of the order service over real gRPC on loopback, with a real Inventory
//! service, each on fresh SQLite files and fresh PostgreSQL databases.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commands;
mod contract;
mod get_and_list;
mod grpcurl;
mod harness;
mod migrations;
mod outbox;
mod payment_methods;
mod relay;
mod validation;
