//! Integration tests of the Kafka transport against a real Kafka-protocol broker (Tansu, started
//! per test by `sagaflow_testkit::kafka::Broker`; a broker that cannot start fails the test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka;
mod support;
