-- The compliance worker looks for verdicts behind their patrol (`judged_version < version`). An
-- index on both columns still had to be read whole for that comparison (21,000 entries at
-- prefecture scale, twice a pass); a partial index holds only the stale ones, so the worker's
-- look costs nothing when little is stale.
DROP INDEX patrol_verdicts_behind;
CREATE INDEX patrol_verdicts_stale ON patrol_verdicts (patrol_id) WHERE judged_version < version;

-- When a photo's perceptual hash was made: each server process keeps the hashes in memory to find
-- reuse, and reads only those made since it last looked.
ALTER TABLE photos ADD COLUMN hashed_at TIMESTAMP;
UPDATE photos SET hashed_at = received_at WHERE phash IS NOT NULL;
CREATE INDEX photos_hashed_at ON photos (hashed_at);
