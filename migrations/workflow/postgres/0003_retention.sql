-- Retention of finished sagas (docs/operations.md, "Retention"; docs/architecture.md, "The
-- engine"); same version in both dialects.
--
-- The journal stays append-only for every saga that is not finished: updates are refused always,
-- deletes unless the journal's saga row is COMPLETED or COMPENSATED (terminal: no engine and no
-- operator command changes such a saga again). Retention deletes a finished saga's journal and
-- then its row in one transaction (the journal's foreign key keeps a saga row with journal rows
-- from being deleted first). RUNNING, COMPENSATING and NEEDS_ATTENTION sagas keep every entry.

DROP TRIGGER saga_journal_no_update ON saga_journal;

CREATE TRIGGER saga_journal_no_update BEFORE UPDATE ON saga_journal
    FOR EACH ROW EXECUTE FUNCTION saga_journal_append_only();

CREATE FUNCTION saga_journal_delete_finished_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sagas
                   WHERE id = OLD.saga_id AND status IN ('COMPLETED', 'COMPENSATED')) THEN
        RAISE EXCEPTION 'saga_journal is append-only: saga % is not finished', OLD.saga_id;
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER saga_journal_delete_finished_only BEFORE DELETE ON saga_journal
    FOR EACH ROW EXECUTE FUNCTION saga_journal_delete_finished_only();

-- Finished sagas by the time they finished (their last journal entry), oldest first.
CREATE INDEX sagas_finished ON sagas (updated_at) WHERE status IN ('COMPLETED', 'COMPENSATED');
