//! The sagaflow inventory service.
