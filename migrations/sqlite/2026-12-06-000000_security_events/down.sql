DROP TABLE security_events;
ALTER TABLE grid_roles DROP COLUMN granted_by;
