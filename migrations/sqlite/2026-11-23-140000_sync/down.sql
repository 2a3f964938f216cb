DROP TABLE problems;
DROP TABLE patrols;
DROP TABLE sync_changes;
DROP TABLE sync_documents;
