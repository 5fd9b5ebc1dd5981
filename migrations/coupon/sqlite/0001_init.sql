-- Coupon service database (DESIGN §3, §4 step 1, §6). SQLite dialect; postgres/ has the
-- same version. Portable column types only (BIGINT, TEXT, BLOB): see crates/server/src/db.rs.

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

-- One row per coupon. Its terms never change after IssueCoupon; only status and order_id do.
-- A coupon grants either a fixed amount or a percentage (optionally capped by max_discount),
-- and is held by at most one order: the one in order_id, exactly when it is USED.
CREATE TABLE coupons (
    code             TEXT PRIMARY KEY CHECK (code <> ''),
    user_id          TEXT NOT NULL CHECK (user_id <> ''),
    discount_amount  BIGINT NOT NULL CHECK (discount_amount >= 0),               -- KRW won
    discount_percent BIGINT NOT NULL CHECK (discount_percent BETWEEN 0 AND 100),
    min_order_amount BIGINT NOT NULL CHECK (min_order_amount >= 0),              -- KRW won
    max_discount     BIGINT NOT NULL CHECK (max_discount >= 0),                  -- KRW won, 0: none
    expires_at       BIGINT NOT NULL,                                            -- unix ms
    status           TEXT NOT NULL CHECK (status IN ('AVAILABLE', 'USED')),
    order_id         TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    CHECK ((discount_amount > 0 AND discount_percent = 0 AND max_discount = 0)
        OR (discount_amount = 0 AND discount_percent > 0)),
    CHECK ((status = 'AVAILABLE' AND order_id IS NULL)
        OR (status = 'USED' AND order_id IS NOT NULL))
);

CREATE INDEX coupons_order_id ON coupons (order_id);

-- RestoreCoupon calls: once the compensation for (order_id, code) ran, whether or not UseCoupon
-- had, a later UseCoupon of that code for that order is rejected (DESIGN §6 late-action rule).
CREATE TABLE coupon_compensations (
    order_id   TEXT NOT NULL,
    code       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, code)
);
