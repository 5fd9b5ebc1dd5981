-- Order service database (DESIGN §3, §4, §7). Portable types only (sagaflow_server::db).

-- The idempotency store of DESIGN §6 (sagaflow_server::idempotency). PlaceOrder uses the key
-- "PlaceOrder:<request_id>".
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    command         TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    status_code     BIGINT,
    response        BYTEA,
    message         TEXT,
    created_at      BIGINT NOT NULL
);

-- Orders. Amounts are KRW won; payable = subtotal - discount - points is enforced here too.
-- Ids compare byte-wise ("C" collation), so pagination is the same on both backends.
CREATE TABLE orders (
    order_id       TEXT COLLATE "C" PRIMARY KEY,          -- UUID
    request_id     TEXT NOT NULL UNIQUE,                  -- the client's idempotency key
    user_id        TEXT NOT NULL,
    coupon_code    TEXT,                                  -- NULL: no coupon
    subtotal       BIGINT NOT NULL CHECK (subtotal >= 0),
    discount       BIGINT NOT NULL CHECK (discount >= 0),
    points         BIGINT NOT NULL CHECK (points >= 0),
    payable        BIGINT NOT NULL CHECK (payable >= 0),
    status         TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    failure_reason TEXT CHECK (failure_reason IN ('COUPON_UNAVAILABLE', 'OUT_OF_STOCK',
                       'PAYMENT_DECLINED', 'INSUFFICIENT_POINTS', 'DEADLINE_EXCEEDED',
                       'CANCELED', 'INTERNAL')),
    payment_method TEXT NOT NULL,                         -- card token
    created_at     BIGINT NOT NULL,                       -- unix ms
    updated_at     BIGINT NOT NULL,                       -- unix ms
    CHECK (payable = subtotal - discount - points),
    CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL)),
    CHECK (coupon_code IS NOT NULL OR discount = 0)
);

CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, order_id DESC);

CREATE TABLE order_lines (
    order_id   TEXT NOT NULL REFERENCES orders (order_id),
    line_no    BIGINT NOT NULL CHECK (line_no >= 0),      -- position in the request
    sku        TEXT NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    unit_price BIGINT NOT NULL CHECK (unit_price >= 0),   -- KRW won, from Inventory
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, sku)
);

-- Every status an order had, in order (append-only).
CREATE TABLE order_status_history (
    order_id       TEXT NOT NULL REFERENCES orders (order_id),
    seq            BIGINT NOT NULL CHECK (seq >= 1),
    status         TEXT NOT NULL,
    failure_reason TEXT,
    changed_at     BIGINT NOT NULL,                       -- unix ms
    PRIMARY KEY (order_id, seq)
);

-- The transactional outbox (DESIGN §7): written in the same transaction as the change; a relay
-- delivers the rows in `position` order (per aggregate that is `sequence` order) and sets sent_at.
CREATE TABLE outbox (
    position     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,                    -- UUID
    aggregate_id TEXT NOT NULL,                           -- the order id
    sequence     BIGINT NOT NULL CHECK (sequence >= 1),   -- 1, 2, … per aggregate
    event_type   TEXT NOT NULL
                 CHECK (event_type IN ('OrderCreated', 'OrderCompleted', 'OrderFailed')),
    payload      BYTEA NOT NULL,                          -- encoded sagaflow.order.v1.<type>Event
    created_at   BIGINT NOT NULL,                         -- unix ms
    sent_at      BIGINT,                                  -- unix ms; NULL until delivered
    UNIQUE (aggregate_id, sequence)
);

CREATE INDEX outbox_pending ON outbox (position) WHERE sent_at IS NULL;
