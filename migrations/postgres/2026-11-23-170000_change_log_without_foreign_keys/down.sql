ALTER TABLE sync_changes ADD CONSTRAINT sync_changes_doc_id_fkey FOREIGN KEY (doc_id) REFERENCES sync_documents (id);
ALTER TABLE sync_changes ADD CONSTRAINT sync_changes_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices (id);
ALTER TABLE sync_changes ADD CONSTRAINT sync_changes_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
