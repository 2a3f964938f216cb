-- Who did it: every grant, revocation, enrollment code, user created and device enrolled or
-- revoked is a security event (docs/SECURITY.md), readable by admins through GET /v1/security-events.
-- grid_roles.granted_by names who granted a role (NULL: the operator's command line or the demo).

ALTER TABLE grid_roles ADD COLUMN granted_by BIGINT;

CREATE TABLE security_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TIMESTAMP NOT NULL,
    -- user_created, role_granted, role_revoked, enrollment_code_created, device_enrolled,
    -- device_revoked (sign-ins and lockouts are to come, with issue 22)
    kind TEXT NOT NULL,
    -- who did it (NULL: anonymous or the operator's command line)
    actor_id BIGINT,
    -- whom it concerns
    target_user_id BIGINT,
    -- the grid it concerns (a role's grid), if any
    grid_id BIGINT,
    -- the client's address as the server saw it (after trusted proxies), if any
    client TEXT,
    -- what else there is to say, as JSON
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX security_events_target ON security_events (target_user_id);
CREATE INDEX security_events_at ON security_events (at);
