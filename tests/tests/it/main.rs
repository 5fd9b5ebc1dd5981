//! Acceptance tests that run the real `sagaflow` binary and drive it with the real grpcurl.

mod crash_restart;
mod foundation;
mod walkthrough;
