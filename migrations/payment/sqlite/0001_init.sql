-- Payment service database (DESIGN §3, §6). Portable types only (sagaflow_server::db).

-- The idempotency store of DESIGN §6 (sagaflow_server::idempotency).
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    status_code     BIGINT,
    response        BLOB,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

-- One row per order (UNIQUE order_id): one payment per order. A row with no amount is the
-- tombstone a CancelPayment leaves when it arrives before StartPayment (DESIGN §6 late-action
-- rule); it is always CANCELED and never carries gateway references.
CREATE TABLE payments (
    payment_id        TEXT PRIMARY KEY,
    order_id          TEXT NOT NULL UNIQUE,
    amount            BIGINT CHECK (amount >= 0),                -- KRW won; NULL = tombstone
    payment_method    TEXT,                                       -- card token
    status            TEXT NOT NULL
                      CHECK (status IN ('STARTED', 'CANCELED', 'COMPLETED', 'REFUNDED')),
    authorization_ref TEXT,                                       -- gateway reference of the authorization
    void_ref          TEXT,
    capture_ref       TEXT,
    refund_ref        TEXT,
    created_at        BIGINT NOT NULL,                            -- unix ms
    updated_at        BIGINT NOT NULL,                            -- unix ms
    CHECK ((amount IS NULL) = (payment_method IS NULL)),
    CHECK ((amount IS NULL) = (authorization_ref IS NULL)),
    CHECK (amount IS NOT NULL OR status = 'CANCELED'),
    CHECK (status NOT IN ('COMPLETED', 'REFUNDED') OR capture_ref IS NOT NULL),
    CHECK (status <> 'REFUNDED' OR refund_ref IS NOT NULL)
);
