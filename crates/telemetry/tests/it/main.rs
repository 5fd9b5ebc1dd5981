//! Integration tests of span export and trace-context propagation against an in-process OTLP
//! gRPC receiver (`sagaflow_testkit::otlp`) and a real tonic server and client.
//!
//! Only `export` installs the process-global subscriber (once); the other tests use thread-local
//! subscribers, so the binary also works under plain `cargo test`.

// Test code: a failed unwrap is a failed test (clippy's allow-*-in-tests does not reach helpers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod disabled;
mod export;
mod health;
