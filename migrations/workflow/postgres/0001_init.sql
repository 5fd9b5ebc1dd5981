-- The saga engine's tables (DESIGN §5): one state row per saga instance and its append-only journal.
-- Portable column types only (sagaflow_server::db): BIGINT for numbers and unix milliseconds,
-- TEXT for UUIDs, statuses and JSON documents.

CREATE TABLE sagas (
    id                 TEXT PRIMARY KEY,
    definition_name    TEXT   NOT NULL,
    definition_version BIGINT NOT NULL,
    business_key       TEXT   NOT NULL UNIQUE,
    status             TEXT   NOT NULL,  -- RUNNING | COMPENSATING | COMPLETED | COMPENSATED | NEEDS_ATTENTION
    phase              TEXT   NOT NULL,  -- forward | compensating | finalizing | finished
    step_index         BIGINT,           -- index of the current step in the definition; NULL when none
    current_step       TEXT,             -- its name
    attempt            BIGINT NOT NULL,  -- attempt number of the current step, compensation or finalizer
    input              TEXT   NOT NULL,  -- JSON
    outputs            TEXT   NOT NULL,  -- JSON object: step name -> output
    compensation_plan  TEXT   NOT NULL,  -- JSON array of step names, in the order they are compensated
    next_attempt_at    BIGINT NOT NULL,  -- unix ms: not claimed before
    lease_owner        TEXT,
    lease_expires_at   BIGINT,           -- unix ms
    fencing_token      BIGINT NOT NULL,  -- bumped by every claim and by CancelSaga
    trace_context      TEXT,             -- W3C traceparent of the request that started the saga
    deadline_at        BIGINT,           -- unix ms
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    last_error         TEXT,             -- JSON {code, message, reason, retryable}
    failure_reason     TEXT,
    last_seq           BIGINT NOT NULL   -- sequence number of the last journal entry
);

CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX sagas_created ON sagas (created_at, id);
CREATE INDEX sagas_status_created ON sagas (status, created_at, id);

CREATE TABLE saga_journal (
    saga_id    TEXT   NOT NULL REFERENCES sagas (id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,  -- unix ms
    event_type TEXT   NOT NULL,
    step       TEXT,
    attempt    BIGINT,
    detail     TEXT   NOT NULL,  -- JSON
    PRIMARY KEY (saga_id, seq)
);

-- The journal is append-only: updates and deletes are refused by the database itself.
CREATE FUNCTION saga_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'saga_journal is append-only';
END;
$$;

CREATE TRIGGER saga_journal_no_update BEFORE UPDATE OR DELETE ON saga_journal
    FOR EACH ROW EXECUTE FUNCTION saga_journal_append_only();
