//! The sagaflow payment service.
