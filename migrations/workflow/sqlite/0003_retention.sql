-- Retention of finished sagas (docs/operations.md, "Retention"); same version and meaning as
-- postgres/0003_retention.sql, see there. Updates of journal rows stay refused
-- (saga_journal_no_update); deletes are refused unless the saga row is COMPLETED or COMPENSATED.

DROP TRIGGER saga_journal_no_delete;

CREATE TRIGGER saga_journal_delete_finished_only BEFORE DELETE ON saga_journal
WHEN NOT EXISTS (SELECT 1 FROM sagas
                 WHERE id = OLD.saga_id AND status IN ('COMPLETED', 'COMPENSATED'))
BEGIN
    SELECT RAISE(ABORT, 'saga_journal is append-only: the saga is not finished');
END;

CREATE INDEX sagas_finished ON sagas (updated_at) WHERE status IN ('COMPLETED', 'COMPENSATED');
