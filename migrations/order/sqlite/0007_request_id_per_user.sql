-- PlaceOrder's request_id is scoped per user (docs/operations.md, "End users"): two users' equal
-- request ids are two orders. orders.request_id and PlaceOrder's idempotency key now hold
-- "<byte length of user_id>:<user_id>:<request_id>" (services/order: scoped_request_id), which
-- keeps the UNIQUE constraint of 0001 meaning "one order per (user, request_id)". Rows written
-- before are rewritten to that form, so a retry of an older request still finds its order.
UPDATE idempotency_keys
SET idempotency_key = (
    SELECT 'PlaceOrder:' || length(CAST(o.user_id AS BLOB)) || ':' || o.user_id || ':' || o.request_id
    FROM orders o
    WHERE 'PlaceOrder:' || o.request_id = idempotency_keys.idempotency_key
)
WHERE command = 'order.PlaceOrder'
  AND EXISTS (
    SELECT 1 FROM orders o WHERE 'PlaceOrder:' || o.request_id = idempotency_keys.idempotency_key
  );

UPDATE orders SET request_id = length(CAST(user_id AS BLOB)) || ':' || user_id || ':' || request_id;
