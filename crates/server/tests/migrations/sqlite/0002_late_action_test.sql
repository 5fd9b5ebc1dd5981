-- The late-action rule's test table (docs/architecture.md, "The service contract"): one row per
-- order, the action's hold ('HELD') or the compensation's tombstone / give-back ('RELEASED').
CREATE TABLE holds (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
