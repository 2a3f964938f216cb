-- Photos: the evidence of a patrol. Bytes live in the object store, addressed by their SHA-256;
-- these tables hold what the server checked and read from them, the link to patrols, and the
-- state of resumable uploads (tus 1.0).

-- A photo the server holds, checked and with its EXIF read. Stored once however many devices
-- upload it.
CREATE TABLE photos (
    sha256 TEXT PRIMARY KEY NOT NULL,
    bytes BIGINT NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    -- The EXIF fields read (JSON): time taken, GPS and its datum, make, model, orientation.
    exif TEXT NOT NULL,
    -- Filled in by the background worker with the thumbnail and preview.
    phash BIGINT,
    derived TEXT NOT NULL DEFAULT 'pending' CHECK (derived IN ('pending', 'working', 'done', 'failed')),
    derived_claimed_at TIMESTAMP,
    device_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    received_at TIMESTAMP NOT NULL
);
CREATE INDEX photos_derived ON photos (derived);

-- A patrol document's photo references, projected on every merge: the link exists whether the
-- document or the bytes arrive first.
CREATE TABLE patrol_photos (
    patrol_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    grid_id BIGINT NOT NULL,
    taken_at TIMESTAMP NOT NULL,
    caption TEXT NOT NULL,
    PRIMARY KEY (patrol_id, sha256)
);
CREATE INDEX patrol_photos_sha256 ON patrol_photos (sha256);

-- A resumable upload: one per device and photo. `received` is the byte count the server holds
-- durably; it only moves forward, guarded by its previous value.
CREATE TABLE photo_uploads (
    id TEXT PRIMARY KEY NOT NULL,
    sha256 TEXT NOT NULL,
    device_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    length BIGINT NOT NULL,
    received BIGINT NOT NULL,
    filetype TEXT,
    filename TEXT,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    completed_at TIMESTAMP,
    UNIQUE (device_id, sha256)
);
CREATE INDEX photo_uploads_expires ON photo_uploads (expires_at);

-- The stored pieces of an upload, in order: bytes [start, stop) are in `object`.
CREATE TABLE photo_upload_chunks (
    upload_id TEXT NOT NULL,
    start BIGINT NOT NULL,
    stop BIGINT NOT NULL,
    object TEXT NOT NULL,
    PRIMARY KEY (upload_id, start)
);
