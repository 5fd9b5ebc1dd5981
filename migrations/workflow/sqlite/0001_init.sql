-- The saga engine's tables (DESIGN §5): one state row per saga instance and its append-only journal.
-- Same version and columns as postgres/0001_init.sql; see there for the column docs.

CREATE TABLE sagas (
    id                 TEXT PRIMARY KEY,
    definition_name    TEXT    NOT NULL,
    definition_version INTEGER NOT NULL,
    business_key       TEXT    NOT NULL UNIQUE,
    status             TEXT    NOT NULL,
    phase              TEXT    NOT NULL,
    step_index         INTEGER,
    current_step       TEXT,
    attempt            INTEGER NOT NULL,
    input              TEXT    NOT NULL,
    outputs            TEXT    NOT NULL,
    compensation_plan  TEXT    NOT NULL,
    next_attempt_at    INTEGER NOT NULL,
    lease_owner        TEXT,
    lease_expires_at   INTEGER,
    fencing_token      INTEGER NOT NULL,
    trace_context      TEXT,
    deadline_at        INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_error         TEXT,
    failure_reason     TEXT,
    last_seq           INTEGER NOT NULL
);

CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX sagas_created ON sagas (created_at, id);
CREATE INDEX sagas_status_created ON sagas (status, created_at, id);

CREATE TABLE saga_journal (
    saga_id    TEXT    NOT NULL REFERENCES sagas (id),
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    step       TEXT,
    attempt    INTEGER,
    detail     TEXT    NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- The journal is append-only: updates and deletes are refused by the database itself.
CREATE TRIGGER saga_journal_no_update BEFORE UPDATE ON saga_journal
BEGIN
    SELECT RAISE(ABORT, 'saga_journal is append-only');
END;

CREATE TRIGGER saga_journal_no_delete BEFORE DELETE ON saga_journal
BEGIN
    SELECT RAISE(ABORT, 'saga_journal is append-only');
END;
