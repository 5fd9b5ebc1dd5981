//! Integration tests of the ranking service over real gRPC on loopback, each on a fresh SQLite
//! file and a fresh PostgreSQL database.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod grpcurl;
mod harness;
mod inbox;
mod migrations;
mod product_view;
mod retention;
mod validation;
