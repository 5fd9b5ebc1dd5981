-- Retention (docs/operations.md, "Retention"): idempotency records are deleted by age, oldest
-- first, in batches; this index keeps each batch from scanning the table. Same version in both
-- dialects.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
