CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    status_code     BIGINT,
    response        BLOB,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL CHECK (value >= 0)
);
