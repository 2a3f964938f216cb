-- The supervisor console's sign-ins: a browser holds a random token in an HttpOnly cookie; the
-- server keeps its hash, the account session it belongs to (so that revoking the session, or
-- disabling the user, ends it too), the CSRF token its forms carry, and when it lapses.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id BIGINT NOT NULL REFERENCES sessions (id),
    csrf TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- A supervisor's review written from the console is an Automerge change like one from a phone:
-- made with an actor bound to a device of the supervisor's, created on the first review.
CREATE TABLE console_devices (
    user_id BIGINT PRIMARY KEY NOT NULL REFERENCES users (id),
    device_id BIGINT NOT NULL REFERENCES devices (id)
);
