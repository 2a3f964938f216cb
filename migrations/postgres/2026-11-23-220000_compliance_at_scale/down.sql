DROP INDEX photos_hashed_at;
ALTER TABLE photos DROP COLUMN hashed_at;
DROP INDEX patrol_verdicts_stale;
CREATE INDEX patrol_verdicts_behind ON patrol_verdicts (judged_version, version);
