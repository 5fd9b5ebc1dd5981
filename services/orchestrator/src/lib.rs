//! The sagaflow orchestrator service.
