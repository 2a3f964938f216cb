-- The older schema holds one change per row; entries of several changes cannot be split in SQL.
-- If there are any, this fails on the CHECK below ("several_changes = 0"): restore a backup from
-- before the upgrade instead.
CREATE TEMP TABLE change_log_guard (several_changes INTEGER CHECK (several_changes = 0));
INSERT INTO change_log_guard SELECT COUNT(*) FROM sync_changes WHERE change_count > 1;
DROP TABLE change_log_guard;
CREATE TABLE sync_changes_single (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES sync_documents (id),
    hash TEXT NOT NULL,
    bytes BLOB NOT NULL,
    actor TEXT NOT NULL,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    received_at TIMESTAMP NOT NULL,
    UNIQUE (doc_id, hash)
);
INSERT INTO sync_changes_single (seq, doc_id, hash, bytes, actor, device_id, user_id, received_at)
SELECT seq, doc_id, lower(hex(hashes)), bytes, actor, device_id, user_id, received_at
FROM sync_changes ORDER BY seq;
DROP TABLE sync_changes;
ALTER TABLE sync_changes_single RENAME TO sync_changes;
CREATE INDEX sync_changes_doc ON sync_changes (doc_id, seq);
