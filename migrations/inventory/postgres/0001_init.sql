-- Inventory service database (DESIGN §3, §4 step 3, §6). PostgreSQL dialect; sqlite/ has the
-- same version. Portable column types only (BIGINT, TEXT, BYTEA): see crates/server/src/db.rs.

-- The idempotency store of DESIGN §6 (crates/server/src/idempotency.rs).
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    status_code     BIGINT,
    response        BYTEA,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

-- The catalog. A product is created with stock 0 (UpsertProduct); stock only grows by Restock and
-- by RestoreInventory, and only shrinks by DeductInventory.
CREATE TABLE products (
    sku        TEXT PRIMARY KEY,
    name       TEXT NOT NULL CHECK (name <> ''),
    unit_price BIGINT NOT NULL CHECK (unit_price >= 0),  -- KRW won per unit
    stock      BIGINT NOT NULL CHECK (stock >= 0),       -- units on hand, never negative
    created_at BIGINT NOT NULL,                          -- unix ms
    updated_at BIGINT NOT NULL                           -- unix ms
);

-- One row per order that DeductInventory or RestoreInventory has seen. RESERVED: the order holds
-- the stock of its reservation_lines. RELEASED: the stock was given back, or RestoreInventory came
-- first (a tombstone without lines); either way a later DeductInventory for the order is rejected.
CREATE TABLE reservations (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What each order took, so that RestoreInventory gives back exactly that.
CREATE TABLE reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku      TEXT NOT NULL REFERENCES products (sku),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);

CREATE INDEX reservation_lines_sku ON reservation_lines (sku);

-- Append-only ledger of Restock commands, one row per idempotency key, so that the DESIGN §6
-- invariant "restocks - stock = units of completed orders" can be checked per product.
CREATE TABLE restocks (
    idempotency_key TEXT PRIMARY KEY,
    sku             TEXT NOT NULL REFERENCES products (sku),
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    created_at      BIGINT NOT NULL
);

CREATE INDEX restocks_sku ON restocks (sku);
