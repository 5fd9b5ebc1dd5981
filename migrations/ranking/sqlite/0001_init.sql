-- Ranking service database (DESIGN §3, §7). Portable types only (sagaflow_server::db).

-- The idempotency store of DESIGN §6 (sagaflow_server::idempotency); RecordOrderCompleted uses
-- the event id as its key, so a redelivered event replays instead of counting twice.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    status_code     BIGINT,
    response        BLOB,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

-- The processed-event inbox (DESIGN §7): one row per counted order, so that an order is counted
-- once even if it were published under two event ids.
CREATE TABLE inbox (
    event_id    TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL UNIQUE,
    recorded_at BIGINT NOT NULL                      -- unix ms
);

-- Sales per product over COMPLETED orders. Skus compare byte-wise ("C" collation; SQLite's
-- default BINARY), so the ranking's tie-break is the same on both backends.
CREATE TABLE product_sales (
    sku        TEXT PRIMARY KEY,
    units_sold BIGINT NOT NULL CHECK (units_sold >= 0),
    orders     BIGINT NOT NULL CHECK (orders >= 0),
    updated_at BIGINT NOT NULL                       -- unix ms
);

CREATE INDEX product_sales_rank ON product_sales (units_sold DESC, sku);
