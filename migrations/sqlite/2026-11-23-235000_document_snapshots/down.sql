DROP TABLE sync_snapshots;
