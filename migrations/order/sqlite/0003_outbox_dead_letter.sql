-- Dead-lettered outbox events (docs/architecture.md, "Events"): a row that can never be
-- delivered (its payload does not decode as the message its type names) is set aside with the
-- reason instead of being read at the head of every relay round.
ALTER TABLE outbox ADD COLUMN dead_at BIGINT;     -- unix ms; NULL unless dead-lettered
ALTER TABLE outbox ADD COLUMN last_error TEXT;    -- why it was dead-lettered
