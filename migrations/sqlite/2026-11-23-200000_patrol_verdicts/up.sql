-- Each patrol's verdict: counted or not, with its reasons and fraud signals (JSON). A merge of
-- the patrol's document, or a photo of it arriving, bumps `version`; the compliance worker judges
-- patrols whose `judged_version` is behind. `recompute-compliance` bumps every one.
CREATE TABLE patrol_verdicts (
    patrol_id TEXT PRIMARY KEY NOT NULL,
    grid_id BIGINT NOT NULL,
    inspector_id BIGINT NOT NULL,
    -- ISO week of the patrol's start in the jurisdiction's time zone, e.g. 2026-W48.
    week TEXT,
    counted BOOLEAN NOT NULL DEFAULT FALSE,
    verdict TEXT,
    version BIGINT NOT NULL DEFAULT 1,
    judged_version BIGINT NOT NULL DEFAULT 0,
    claimed_at TIMESTAMP,
    computed_at TIMESTAMP
);
CREATE INDEX patrol_verdicts_behind ON patrol_verdicts (judged_version, version);
CREATE INDEX patrol_verdicts_grid_week ON patrol_verdicts (grid_id, week);
