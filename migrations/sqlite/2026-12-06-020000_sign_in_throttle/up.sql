-- Sign-in throttling per (account, client) instead of per user name (issue 22, finding 3).
-- A row exists only for an account that exists: failures for unknown names are not stored.
-- `failures` counts attempts of the window not (yet) followed by a success; it is raised
-- before the password is checked, in one statement, so parallel guesses cannot overrun it.
-- `last_success_at` marks a client the owner signed in from: the account-wide limit never
-- locks that client out.
CREATE TABLE sign_in_throttle (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client TEXT NOT NULL,
    failures INTEGER NOT NULL,
    window_start TIMESTAMP NOT NULL,
    last_success_at TIMESTAMP,
    PRIMARY KEY (user_id, client)
);
DROP TABLE login_failures;
