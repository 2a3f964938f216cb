-- Synced Automerge documents: an append-only change store and the rows projected from it.

CREATE TABLE sync_documents (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('patrol', 'problem')),
    grid_id BIGINT NOT NULL REFERENCES grids (id),
    inspector_id BIGINT NOT NULL REFERENCES users (id),
    heads TEXT NOT NULL,
    change_count INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX sync_documents_grid_id ON sync_documents (grid_id);
CREATE INDEX sync_documents_inspector_id ON sync_documents (inspector_id);

-- Append-only: a change is stored once per document, keyed by its hash, with who sent it and
-- when the server received it (the server's clock is the trusted time).
CREATE TABLE sync_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES sync_documents (id),
    hash TEXT NOT NULL,
    bytes BLOB NOT NULL,
    actor TEXT NOT NULL,
    device_id BIGINT NOT NULL REFERENCES devices (id),
    user_id BIGINT NOT NULL REFERENCES users (id),
    received_at TIMESTAMP NOT NULL,
    UNIQUE (doc_id, hash)
);
CREATE INDEX sync_changes_doc ON sync_changes (doc_id, seq);

CREATE TABLE patrols (
    id TEXT PRIMARY KEY NOT NULL REFERENCES sync_documents (id),
    grid_id BIGINT NOT NULL REFERENCES grids (id),
    inspector_id BIGINT NOT NULL REFERENCES users (id),
    device_id BIGINT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP,
    fix_count INTEGER NOT NULL,
    distance_m DOUBLE PRECISION NOT NULL,
    photo_count INTEGER NOT NULL,
    note_count INTEGER NOT NULL,
    problem_count INTEGER NOT NULL,
    review_state TEXT,
    review_comment TEXT,
    reviewer_id BIGINT,
    first_received_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX patrols_grid_started ON patrols (grid_id, started_at);
CREATE INDEX patrols_inspector_started ON patrols (inspector_id, started_at);

CREATE TABLE problems (
    id TEXT PRIMARY KEY NOT NULL REFERENCES sync_documents (id),
    grid_id BIGINT NOT NULL REFERENCES grids (id),
    patrol_id TEXT NOT NULL,
    inspector_id BIGINT NOT NULL REFERENCES users (id),
    category TEXT NOT NULL,
    description TEXT NOT NULL,
    disposition TEXT NOT NULL,
    lon DOUBLE PRECISION NOT NULL,
    lat DOUBLE PRECISION NOT NULL,
    found_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX problems_grid_id ON problems (grid_id);
