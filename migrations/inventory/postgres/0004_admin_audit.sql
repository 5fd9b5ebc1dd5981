-- Audit of admin actions (docs/operations.md, "Security"): one row per UpsertProduct and Restock that took
-- effect, written in the command's transaction, naming who did it as the server's access layer
-- established it (`token:<id>`, `in-process`, `anonymous` on an open server). Append-only.
-- Listed by InventoryService/ListAdminActions. Same version in both dialects.
CREATE TABLE admin_audit (
    entry_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    detail          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL
);
