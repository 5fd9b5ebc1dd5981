//! The sagaflow ranking service.
