-- The change log is appended by one code path (sync), which has just inserted or locked the
-- document it appends to, for a device and user that are never deleted (devices are revoked,
-- users deactivated). A foreign key on each of those columns made PostgreSQL check and lock the
-- referenced row for every appended change (FOR KEY SHARE, 50 changes a patrol), all while the
-- log's append lock is held: dropping them raised ingest from 784 to 1,118 patrols/s on the
-- 2-core bench (docs/BENCHMARKS.md). SQLite keeps them: there the checks are in-process lookups.
ALTER TABLE sync_changes DROP CONSTRAINT sync_changes_doc_id_fkey;
ALTER TABLE sync_changes DROP CONSTRAINT sync_changes_device_id_fkey;
ALTER TABLE sync_changes DROP CONSTRAINT sync_changes_user_id_fkey;
