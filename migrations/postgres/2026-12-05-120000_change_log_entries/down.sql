-- The older schema holds one change per row; entries of several changes cannot be split in SQL.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM sync_changes WHERE change_count > 1) THEN
        RAISE EXCEPTION 'sync_changes holds entries of several changes, which the older schema cannot hold; restore a backup from before the upgrade instead';
    END IF;
END
$$;
ALTER TABLE sync_changes ALTER COLUMN bytes SET STORAGE EXTENDED;
ALTER TABLE sync_changes DROP COLUMN change_count;
ALTER TABLE sync_changes RENAME COLUMN hashes TO hash;
ALTER TABLE sync_changes ALTER COLUMN hash TYPE TEXT USING encode(hash, 'hex');
ALTER TABLE sync_changes ADD CONSTRAINT sync_changes_doc_id_hash_key UNIQUE (doc_id, hash);
