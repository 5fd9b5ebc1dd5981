-- PlaceOrder's request_id is scoped per user (docs/operations.md, "End users"): two users' equal
-- request ids are two orders. orders.request_id and PlaceOrder's idempotency key now hold
-- "<byte length of user_id>:<user_id>:<request_id>" (services/order: scoped_request_id), which
-- keeps the UNIQUE constraint of 0001 meaning "one order per (user, request_id)". Rows written
-- before are rewritten to that form, so a retry of an older request still finds its order.
UPDATE idempotency_keys
SET idempotency_key = 'PlaceOrder:' || octet_length(o.user_id) || ':' || o.user_id || ':' || o.request_id
FROM orders o
WHERE idempotency_keys.command = 'order.PlaceOrder'
  AND idempotency_keys.idempotency_key = 'PlaceOrder:' || o.request_id;

UPDATE orders SET request_id = octet_length(user_id) || ':' || user_id || ':' || request_id;
