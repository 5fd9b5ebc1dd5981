//! The sagaflow point service.
