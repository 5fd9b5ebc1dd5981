-- Point service database (DESIGN §3, §4 step 5, §6). SQLite dialect; postgres/ has the same
-- version. Portable column types only (BIGINT, TEXT, BLOB): see crates/server/src/db.rs.
-- Points are KRW won.

-- The idempotency store of DESIGN §6 (crates/server/src/idempotency.rs).
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    status_code     BIGINT,
    response        BLOB,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

-- Current balance per user: always the fold of the user's point_ledger rows
-- (GRANT + RESTORE - DEDUCT), never negative.
CREATE TABLE balances (
    user_id    TEXT PRIMARY KEY CHECK (user_id <> ''),
    balance    BIGINT NOT NULL CHECK (balance >= 0),
    updated_at BIGINT NOT NULL
);

-- One row per order that DeductPoints or RestorePoints has seen. DEDUCTED: the order holds
-- `amount` points. RESTORED: they were given back, or RestorePoints came first (a tombstone with
-- amount 0); either way a later DeductPoints for the order is rejected.
CREATE TABLE deductions (
    order_id   TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    status     TEXT NOT NULL CHECK (status IN ('DEDUCTED', 'RESTORED')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (status = 'RESTORED' OR amount > 0)
);

CREATE INDEX deductions_user_status ON deductions (user_id, status);

-- Append-only point ledger: one row per grant, deduction and restoration, never updated or
-- deleted (the triggers below refuse both). An order has at most one DEDUCT and one RESTORE row.
CREATE TABLE point_ledger (
    entry_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('GRANT', 'DEDUCT', 'RESTORE')),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    order_id        TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    CHECK ((kind = 'GRANT' AND order_id IS NULL) OR (kind <> 'GRANT' AND order_id IS NOT NULL)),
    UNIQUE (order_id, kind)
);

CREATE INDEX point_ledger_user ON point_ledger (user_id, entry_id);

CREATE TRIGGER point_ledger_no_update BEFORE UPDATE ON point_ledger
BEGIN
    SELECT RAISE(ABORT, 'point_ledger is append-only');
END;

CREATE TRIGGER point_ledger_no_delete BEFORE DELETE ON point_ledger
BEGIN
    SELECT RAISE(ABORT, 'point_ledger is append-only');
END;
