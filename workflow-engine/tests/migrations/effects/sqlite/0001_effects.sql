-- The idempotent fake service of the failpoint tests: every call it receives, and every effect
-- (at most one per idempotency key).
CREATE TABLE calls (
    idempotency_key TEXT   NOT NULL,
    saga_id         TEXT   NOT NULL,
    step            TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    attempt         BIGINT NOT NULL
);

CREATE TABLE effects (
    idempotency_key TEXT PRIMARY KEY,
    saga_id         TEXT NOT NULL,
    step            TEXT NOT NULL,
    kind            TEXT NOT NULL
);
