DROP TABLE patrol_verdicts;
