-- Retention prunes idempotency records by age (docs/operations.md, "Retention"): index the age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
