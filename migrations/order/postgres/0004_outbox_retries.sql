-- Delivery retries of outbox events (docs/architecture.md, "Events"). Every failed delivery
-- counts an attempt and schedules the next one (capped exponential backoff with full jitter);
-- the relay reads only rows that are due, and passes over a row whose order has an earlier
-- undelivered event that is not due yet, so that failing events never hold up other orders.
-- last_error now also keeps the last failed delivery of a row that is still retried.
ALTER TABLE outbox ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0);
-- unix ms; the row is due when next_attempt_at <= now (0: at once)
ALTER TABLE outbox ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
-- 1 once a failed delivery may have reached its consumer's handler (a timeout, a lost reply, a
-- bare error code): the event may have had its effect, so it is retried for as long as it fails
-- and never dead-lettered.
ALTER TABLE outbox ADD COLUMN in_doubt BIGINT NOT NULL DEFAULT 0 CHECK (in_doubt IN (0, 1));

-- The relay's scan: undelivered rows that are not dead-lettered, in delivery order.
DROP INDEX outbox_pending;
CREATE INDEX outbox_undelivered ON outbox (position) WHERE sent_at IS NULL AND dead_at IS NULL;
-- Sent-row retention: the oldest delivered rows first.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
