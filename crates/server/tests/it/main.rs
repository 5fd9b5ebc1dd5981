//! Integration tests of the shared plumbing against real SQLite files and a real PostgreSQL server.

mod idempotency;
