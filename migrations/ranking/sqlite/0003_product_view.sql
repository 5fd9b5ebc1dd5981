-- The read-optimised product view built from Inventory's events (docs/architecture.md,
-- "Events"). Same version in both dialects.

-- The inbox also records Inventory's events (RecordInventoryEvent, keyed by event id): it says
-- which kind of event each row recorded, and only OrderCompleted rows name an order (an order is
-- still counted once: order_id stays UNIQUE, and UNIQUE allows any number of NULLs). Existing
-- rows are OrderCompleted rows. SQLite cannot drop a NOT NULL in place: the table is rebuilt,
-- its rows copied, its index made again.
CREATE TABLE inbox_new (
    event_id    TEXT PRIMARY KEY,
    order_id    TEXT UNIQUE,
    recorded_at BIGINT NOT NULL,                     -- unix ms
    event_type  TEXT NOT NULL,
    CONSTRAINT inbox_order_id_of_order_events
        CHECK ((event_type = 'OrderCompleted') = (order_id IS NOT NULL))
);
INSERT INTO inbox_new (event_id, order_id, recorded_at, event_type)
    SELECT event_id, order_id, recorded_at, 'OrderCompleted' FROM inbox;
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;
CREATE INDEX inbox_recorded ON inbox (recorded_at);

-- One row per sku an Inventory event touched. `stock` and `last_sequence` come from the event
-- with the highest outbox sequence recorded, so a late or repeated event never moves the stock
-- back; `units_sold` (deducted minus restored) and `events` add up every recorded event, in any
-- order. `units_sold` may be negative for a while when a restore arrives before its deduction.
-- Skus compare byte-wise ("C" collation; SQLite's default BINARY), so pages by sku are the same
-- on both backends.
CREATE TABLE product_view (
    sku           TEXT PRIMARY KEY,
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    units_sold    BIGINT NOT NULL,
    events        BIGINT NOT NULL CHECK (events >= 1),
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 1),
    updated_at    BIGINT NOT NULL                    -- unix ms
);
