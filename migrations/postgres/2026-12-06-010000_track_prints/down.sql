DROP TABLE track_cells;
DROP TABLE patrol_tracks;
