-- Attempts that never reached the service (docs/architecture.md, "Retries"): how many failed
-- attempts of the current step were refused at connect (or found no turn at the downstream
-- limits). They do not use up the step's attempts while the saga's deadline has not passed.
ALTER TABLE sagas ADD COLUMN undelivered BIGINT NOT NULL DEFAULT 0;
