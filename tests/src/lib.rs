//! Cross-service integration, crash-recovery chaos and acceptance tests.
