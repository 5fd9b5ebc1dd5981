//! Tracing subscriber setup and trace-context propagation for sagaflow processes.
