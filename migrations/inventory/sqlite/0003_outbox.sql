-- Inventory's transactional outbox (docs/architecture.md, "Events"): one row per sku a stock
-- change touched (InventoryDeducted, InventoryRestored, InventoryRestocked), written in the same
-- transaction as the change and published by the shared relay. The same table as the Order
-- service's (migrations/order: 0001, 0002, 0003, 0004), in one step.
CREATE TABLE outbox (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,                    -- UUID
    aggregate_id    TEXT NOT NULL,                           -- the sku
    sequence        BIGINT NOT NULL CHECK (sequence >= 1),   -- 1, 2, … per sku
    event_type      TEXT NOT NULL CHECK (event_type IN
                        ('InventoryDeducted', 'InventoryRestored', 'InventoryRestocked')),
    payload         BLOB NOT NULL,                       -- encoded sagaflow.inventory.v1.<type>Event
    created_at      BIGINT NOT NULL,                         -- unix ms
    sent_at         BIGINT,                                  -- unix ms; NULL until published
    traceparent     TEXT,                                    -- W3C trace context of the writer
    dead_at         BIGINT,                                  -- unix ms; NULL unless dead-lettered
    last_error      TEXT,                                    -- the last failure or dead-letter reason
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL DEFAULT 0,               -- unix ms; due when <= now
    in_doubt        BIGINT NOT NULL DEFAULT 0 CHECK (in_doubt IN (0, 1)),
    UNIQUE (aggregate_id, sequence)
);

-- The relay's scan: unpublished rows that are not dead-lettered, in delivery order.
CREATE INDEX outbox_undelivered ON outbox (position) WHERE sent_at IS NULL AND dead_at IS NULL;
-- Sent-row retention: the oldest published rows first.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
