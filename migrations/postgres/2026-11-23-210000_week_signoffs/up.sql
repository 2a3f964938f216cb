-- A signed weekly record: frozen as it stood, with the hash of its content. A county admin may
-- reopen it with a reason; every signing and reopening is kept in the audit log.
CREATE TABLE week_signoffs (
    grid_id BIGINT NOT NULL,
    week TEXT NOT NULL,
    signed_by BIGINT NOT NULL,
    signed_at TIMESTAMP NOT NULL,
    -- After the jurisdiction's deadline for that week.
    late BOOLEAN NOT NULL,
    -- The record as signed (JSON) and the SHA-256 of exactly those bytes.
    record TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    PRIMARY KEY (grid_id, week)
);

CREATE TABLE compliance_audit (
    grid_id BIGINT NOT NULL,
    week TEXT NOT NULL,
    at TIMESTAMP NOT NULL,
    -- `signed` or `reopened`.
    action TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    reason TEXT,
    content_hash TEXT,
    PRIMARY KEY (grid_id, week, at, action)
);
