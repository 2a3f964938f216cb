CREATE INDEX sync_documents_inspector_id ON sync_documents (inspector_id);
DROP INDEX sync_documents_inspector_last_seq;
ALTER TABLE sync_documents DROP COLUMN last_seq;
