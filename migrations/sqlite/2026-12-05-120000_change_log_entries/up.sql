-- A log entry per document per request, instead of one per change: the changes one request
-- brought to one document, their plain chunks back to back (as Automerge's `save_after` writes
-- them) in `bytes`, their 32-byte hashes back to back in `hashes`, and how many in
-- `change_count`. A patrol synced in one go was ~50 rows, each with three index entries; it is
-- now one. Who sent the changes and when the server received them are per entry, as before.
--
-- The key (doc_id, hash) goes: the document is locked and merged against what is stored, so a
-- change is never appended twice (see ARCHITECTURE.md, "Sync on the server"). SQLite cannot drop
-- a table constraint, so the table is rebuilt (same columns as PostgreSQL's, in the same order).
CREATE TABLE sync_changes_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES sync_documents (id),
    hashes BLOB NOT NULL,
    bytes BLOB NOT NULL,
    actor TEXT NOT NULL,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    received_at TIMESTAMP NOT NULL,
    change_count INTEGER NOT NULL
);
INSERT INTO sync_changes_entries
    (seq, doc_id, hashes, bytes, actor, device_id, user_id, received_at, change_count)
SELECT seq, doc_id, unhex(hash), bytes, actor, device_id, user_id, received_at, 1
FROM sync_changes ORDER BY seq;
DROP TABLE sync_changes;
ALTER TABLE sync_changes_entries RENAME TO sync_changes;
CREATE INDEX sync_changes_doc ON sync_changes (doc_id, seq);
