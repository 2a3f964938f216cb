-- The log entry of a document's newest change. The feed asks which of a user's documents
-- changed after the phone's cursor: through (inspector_id, last_seq) that is the few documents
-- touched since then, instead of probing every document the inspector ever had (a probe each,
-- on every sync, for years of patrols). Written in the transaction that appends the changes.
ALTER TABLE sync_documents ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;
UPDATE sync_documents SET last_seq = COALESCE(
    (SELECT MAX(seq) FROM sync_changes WHERE sync_changes.doc_id = sync_documents.id), 0);
CREATE INDEX sync_documents_inspector_last_seq ON sync_documents (inspector_id, last_seq);
DROP INDEX sync_documents_inspector_id;
