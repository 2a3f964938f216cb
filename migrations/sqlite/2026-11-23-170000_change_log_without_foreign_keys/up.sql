-- PostgreSQL drops the change log's foreign keys in this version (see its up.sql); SQLite keeps
-- them, its checks being cheap in-process lookups. The version exists in both trees so that the
-- two schemas keep the same history.
SELECT 1;
