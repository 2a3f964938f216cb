-- A log entry per document per request, instead of one per change: the changes one request
-- brought to one document, their plain chunks back to back (as Automerge's `save_after` writes
-- them) in `bytes`, their 32-byte hashes back to back in `hashes`, and how many in
-- `change_count`. A patrol synced in one go was ~50 rows, each with three index entries; it is
-- now one. Who sent the changes and when the server received them are per entry, as before.
--
-- The key (doc_id, hash) goes: the document is locked and merged against what is stored, so a
-- change is never appended twice (see ARCHITECTURE.md, "Sync on the server").
ALTER TABLE sync_changes DROP CONSTRAINT sync_changes_doc_id_hash_key;
ALTER TABLE sync_changes ALTER COLUMN hash TYPE BYTEA USING decode(hash, 'hex');
ALTER TABLE sync_changes RENAME COLUMN hash TO hashes;
ALTER TABLE sync_changes ADD COLUMN change_count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sync_changes ALTER COLUMN change_count DROP DEFAULT;
-- An entry's chunks are larger than a TOAST tuple (~2 KB) and were compressed with pglz on every
-- append, which cost more than the insert itself; Automerge's chunks are compact already (and
-- compressed when large). Stored out of line as they are.
ALTER TABLE sync_changes ALTER COLUMN bytes SET STORAGE EXTERNAL;
