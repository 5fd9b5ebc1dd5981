//! The sagaflow command-line interface.
