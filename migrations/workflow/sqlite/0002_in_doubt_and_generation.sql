-- Attempts in doubt and operator-retry generations (docs/architecture.md, "Attempts in doubt",
-- "Operator commands"); same version in both dialects.
-- in_doubt:   1 when an attempt of the current forward step may have had its effect although it
--             failed; the step then stays uncertain whatever later attempts say.
-- generation: number of operator retries; calls after the n-th carry `:retry-<n>` in their key.
ALTER TABLE sagas ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sagas ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
