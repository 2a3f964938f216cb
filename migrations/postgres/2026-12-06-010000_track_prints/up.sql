-- Prints of submitted patrols' tracks, for finding replayed tracks (server/src/compliance/replay.rs):
-- the WGS-84 fixes (at most one every 5 s, 16 bytes each) and the ~250 m cells the track passes
-- through, an inverted index from a cell to the patrols that passed it. Projected by sync when a
-- patrol is submitted (rebuild-projections writes them again).

CREATE TABLE patrol_tracks (
    patrol_id TEXT PRIMARY KEY,
    fixes BYTEA NOT NULL
);

CREATE TABLE track_cells (
    cell BIGINT NOT NULL,
    patrol_id TEXT NOT NULL,
    PRIMARY KEY (cell, patrol_id)
);
CREATE INDEX track_cells_patrol ON track_cells (patrol_id);
