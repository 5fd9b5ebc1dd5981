-- GetOrder's shared wait poll (docs/operations.md, "Request limits"): once a second, one query
-- for the orders that reached a terminal status lately, whoever changed them, wakes the callers
-- waiting for them; index the time of that change.
CREATE INDEX orders_finished ON orders (updated_at) WHERE status <> 'PENDING';
