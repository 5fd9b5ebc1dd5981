//! Integration tests of the coupon service over real gRPC on loopback, each on a fresh SQLite
//! file and a fresh PostgreSQL database.

// Test bodies are plain async fns run by `both_backends!`, outside clippy's test detection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod commands;
mod contract;
mod grpcurl;
mod harness;
mod validation;
