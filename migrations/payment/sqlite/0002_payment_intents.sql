-- StartPayment's authorization intents (issue 18 item 5). Portable types only (sagaflow_server::db).
--
-- StartPayment commits its intent here, in a transaction of its own, BEFORE it calls the gateway,
-- so an authorization made at the gateway is never unknown to the database, even when the
-- payment's recording transaction then fails or the process dies. CancelPayment voids the
-- authorization of an open intent by its gateway key (`void_by_key`) before it records a
-- tombstone.
--
-- One row per order (the gateway key is derived from the order id). The row is also the point
-- where StartPayment and CancelPayment meet: CancelPayment's tombstone transaction claims it
-- (inserting a VOIDED row with no amount when no StartPayment came yet, or settling an open one
-- it has voided), and StartPayment calls the gateway only while the row it reads back is
-- AUTHORIZING or DECLINED.
--
--   AUTHORIZING  the gateway may hold an authorization under gateway_key; nothing recorded yet
--   RECORDED     the authorization belongs to the STARTED payment (payments.authorization_ref),
--                set in the payment's recording transaction
--   DECLINED     the gateway declined under gateway_key: nothing is or can be authorized under it
--   VOIDED       released at the gateway by key (void_ref when an authorization was voided), or
--                claimed by a CancelPayment that came first (amount NULL): nothing is or can be
--                authorized under gateway_key any more
CREATE TABLE payment_intents (
    order_id       TEXT PRIMARY KEY,
    gateway_key    TEXT NOT NULL UNIQUE,                      -- payment:<order_id>:authorize
    amount         BIGINT CHECK (amount >= 0),                -- KRW won; NULL = claimed by CancelPayment first
    payment_method TEXT,                                       -- card token
    status         TEXT NOT NULL
                   CHECK (status IN ('AUTHORIZING', 'RECORDED', 'DECLINED', 'VOIDED')),
    void_ref       TEXT,                                       -- gateway reference of the void by key
    created_at     BIGINT NOT NULL,                            -- unix ms
    updated_at     BIGINT NOT NULL,                            -- unix ms
    CHECK ((amount IS NULL) = (payment_method IS NULL)),
    CHECK (amount IS NOT NULL OR status = 'VOIDED'),
    CHECK (void_ref IS NULL OR status = 'VOIDED')
);
