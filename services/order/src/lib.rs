//! The sagaflow order service.
