-- Grid tree (网格), people (人员) and their roles, devices, sign-in.
-- Timestamps are UTC. Geometry is GeoJSON in WGS-84/CGCS2000 lon/lat degrees.

CREATE TABLE grids (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('territorial', 'department', 'key_area', 'key_point')),
    level TEXT NOT NULL,
    parent_id BIGINT REFERENCES grids (id),
    path TEXT NOT NULL,
    depth INTEGER NOT NULL,
    geometry TEXT NOT NULL,
    min_lon DOUBLE PRECISION NOT NULL,
    min_lat DOUBLE PRECISION NOT NULL,
    max_lon DOUBLE PRECISION NOT NULL,
    max_lat DOUBLE PRECISION NOT NULL,
    area_km2 DOUBLE PRECISION NOT NULL,
    properties TEXT NOT NULL DEFAULT '{}',
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX grids_parent_id ON grids (parent_id);
CREATE INDEX grids_path ON grids (path);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    phone TEXT,
    password_hash TEXT,
    is_superuser BOOLEAN NOT NULL DEFAULT FALSE,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE grid_roles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    grid_id BIGINT NOT NULL REFERENCES grids (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('leader', 'deputy', 'inspector', 'liaison', 'supervisor', 'admin')),
    employment TEXT CHECK (employment IN ('full_time', 'part_time')),
    created_at TIMESTAMP NOT NULL,
    UNIQUE (user_id, grid_id, role)
);
CREATE INDEX grid_roles_grid_id ON grid_roles (grid_id);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    actor_id TEXT NOT NULL UNIQUE,
    enrolled_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    revoked_reason TEXT
);
CREATE INDEX devices_user_id ON devices (user_id);

CREATE TABLE enrollment_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    created_by BIGINT REFERENCES users (id),
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    device_id BIGINT REFERENCES devices (id)
);

-- A session is one refresh-token family: one sign-in or one device enrollment.
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id),
    device_id BIGINT REFERENCES devices (id),
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    revoked_reason TEXT
);
CREATE INDEX sessions_device_id ON sessions (device_id);

CREATE TABLE refresh_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id BIGINT NOT NULL REFERENCES sessions (id),
    token_hash TEXT NOT NULL UNIQUE,
    issued_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    replaced_by BIGINT
);
CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    secret TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    retired_at TIMESTAMP
);

CREATE TABLE login_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    failed_at TIMESTAMP NOT NULL
);
CREATE INDEX login_failures_username ON login_failures (username, failed_at);
