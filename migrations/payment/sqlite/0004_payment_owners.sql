-- The user each order's payment belongs to (docs/operations.md, "End users"): GetPayment shows a
-- payment to that user only (and to operators and services). Written by StartPayment in its
-- transaction from the request's user_id; a payment started before this migration has no row and
-- is shown to no end user.
CREATE TABLE payment_owners (
    order_id TEXT PRIMARY KEY,
    user_id  TEXT NOT NULL
);
