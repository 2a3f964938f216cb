//! Photos: resumable uploads addressed by SHA-256 (tus 1.0, see [`api`]), checked with
//! `gridpatrol-photo`, kept in an object store, linked to patrols by the patrol documents' photo
//! references, and turned into thumbnails and previews by a background worker.
//!
//! Objects:
//! - `originals/<sha256>`: the photo as the phone took it, written once, after every check.
//! - `derived/<sha256>/thumbnail.jpg`, `derived/<sha256>/preview.jpg`.
//! - `uploads/<upload id>/<start>-<nonce>`: the pieces of an unfinished upload. A piece counts
//!   once its row in `photo_upload_chunks` is committed; the sweeper removes the rest.

pub mod api;
mod reuse;

pub use reuse::{HashIndex, NEAR_DUPLICATE_BITS, NearDuplicate, near_duplicates};

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use futures_util::StreamExt;
use gridpatrol_photo::{Limits, PhotoError};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult, Kind, StartupError};
use crate::on_each_backend;
use crate::schema::{patrol_photos, photo_upload_chunks, photo_uploads, photos};

/// Thumbnail and preview sizes (long edge, pixels).
pub const THUMBNAIL_EDGE: u32 = 320;
pub const PREVIEW_EDGE: u32 = 1280;

/// Where photos live and how they are checked.
pub struct Photos {
    pub store: Arc<dyn ObjectStore>,
    /// The directory of a local store (its free space is watched by `/readyz`).
    pub local_dir: Option<std::path::PathBuf>,
    pub limits: Limits,
    /// How long an unfinished upload lives after its last piece.
    pub upload_ttl: chrono::Duration,
    /// Completing an upload holds the whole photo in memory to check it: at most this many at once.
    completing: tokio::sync::Semaphore,
    /// Wakes the derived-image worker when a photo arrives.
    pub wake_worker: tokio::sync::Notify,
    /// One request at a time per upload in this process: a phone that reconnects after a drop
    /// asks where the upload stands while the server may still be storing the piece the drop
    /// cut short; its HEAD waits for that piece instead of reporting an older offset.
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Every hashed photo's perceptual hash, for finding reuse without reading them all.
    pub hashes: HashIndex,
    /// What one device may have open (created, not finished, not expired) at once.
    pub open_per_device: OpenUploads,
}

/// Caps on one device's open uploads: a phone a week offline has a few dozen photos to send;
/// a device that announces a thousand uploads or gigabytes it never sends is refused more.
#[derive(Debug, Clone, Copy)]
pub struct OpenUploads {
    pub uploads: i64,
    pub bytes: i64,
}

impl Default for OpenUploads {
    fn default() -> Self {
        OpenUploads {
            uploads: 64,
            bytes: 1024 * 1024 * 1024,
        }
    }
}

impl Photos {
    /// Photos in a local directory (created if missing).
    pub fn local(
        dir: &std::path::Path,
        limits: Limits,
        upload_ttl: Duration,
    ) -> Result<Photos, StartupError> {
        std::fs::create_dir_all(dir)?;
        // fsync: a piece or an original counts as stored only once it would survive a power cut,
        // as an S3 store promises for what it acknowledged (docs/PHOTOS.md).
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StartupError::Config(format!("photo directory {}: {e}", dir.display())))?
            .with_fsync(true);
        let mut photos = Self::with_store(Arc::new(store), limits, upload_ttl);
        photos.local_dir = Some(dir.to_path_buf());
        Ok(photos)
    }

    /// Photos in an S3-compatible bucket.
    pub fn s3(s3: &S3, limits: Limits, upload_ttl: Duration) -> Result<Photos, StartupError> {
        // object_store's S3 client uses the workspace's reqwest, whose rustls has no crypto
        // provider of its own: ring, as everywhere in GridPatrol.
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| StartupError::Config(format!("photo store s3://{}: {e}", s3.bucket)))?;
        let store: Arc<dyn ObjectStore> = if s3.prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                s3.prefix.as_str(),
            ))
        };
        Ok(Self::with_store(store, limits, upload_ttl))
    }

    /// Checks at start that the store answers (a wrong bucket or key fails here, not at the
    /// first upload in a village).
    pub async fn check(&self) -> Result<(), StartupError> {
        match self.store.head(&Path::from("gridpatrol-store-check")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StartupError::Config(format!(
                "the photo store does not answer: {e}"
            ))),
        }
    }

    pub fn with_store(store: Arc<dyn ObjectStore>, limits: Limits, upload_ttl: Duration) -> Photos {
        Photos {
            store,
            local_dir: None,
            limits,
            upload_ttl: chrono::Duration::from_std(upload_ttl)
                .unwrap_or(chrono::Duration::hours(24)),
            completing: tokio::sync::Semaphore::new(2),
            wake_worker: tokio::sync::Notify::new(),
            turns: Default::default(),
            hashes: HashIndex::default(),
            open_per_device: OpenUploads::default(),
        }
    }

    /// Waits for this upload's turn (see `turns`).
    pub async fn turn(&self, upload: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            // Forget the locks nobody holds or waits for.
            turns.retain(|_, lock| Arc::strong_count(lock) > 1);
            turns.entry(upload.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// An S3-compatible bucket for photos.
pub struct S3 {
    pub bucket: String,
    /// Objects live under this prefix (empty: at the top of the bucket).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

pub fn original_path(sha256: &str) -> Path {
    Path::from(format!("originals/{sha256}"))
}

pub fn derived_path(sha256: &str, kind: Derived) -> Path {
    Path::from(format!("derived/{sha256}/{}.jpg", kind.as_str()))
}

fn piece_path(upload: &str, start: i64) -> Path {
    Path::from(format!(
        "uploads/{upload}/{start:012}-{}",
        uuid::Uuid::now_v7().simple()
    ))
}

/// The derived images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    Thumbnail,
    Preview,
}

impl Derived {
    pub fn as_str(self) -> &'static str {
        match self {
            Derived::Thumbnail => "thumbnail",
            Derived::Preview => "preview",
        }
    }
    pub fn long_edge(self) -> u32 {
        match self {
            Derived::Thumbnail => THUMBNAIL_EDGE,
            Derived::Preview => PREVIEW_EDGE,
        }
    }
}

/// A photo's SHA-256 as the API takes it: 64 lower-case hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A photo check's refusal as an API error, with the status the code calls for.
pub fn refusal(error: &PhotoError) -> ApiError {
    let kind = match error.code() {
        "photo_too_large" => Kind::PayloadTooLarge,
        "photo_unsupported_format" => Kind::UnsupportedMediaType,
        _ => Kind::Unprocessable,
    };
    ApiError::new(kind, error.code(), error.to_string())
}

fn storage(error: object_store::Error) -> ApiError {
    io_or_store(&error)
}

/// A photo store failure: a full disk is `507 insufficient_storage`, the rest internal.
fn io_or_store(error: &dyn std::error::Error) -> ApiError {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if crate::error::out_of_space(&text) {
        ApiError::insufficient_storage()
    } else {
        ApiError::internal(format!("photo store: {text}"))
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = photo_uploads)]
pub struct UploadRow {
    pub id: String,
    pub sha256: String,
    pub device_id: i64,
    pub user_id: i64,
    pub length: i64,
    pub received: i64,
    pub filetype: Option<String>,
    pub filename: Option<String>,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub completed_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = photos)]
pub struct PhotoRow {
    pub sha256: String,
    pub bytes: i64,
    pub format: String,
    pub width: i32,
    pub height: i32,
    pub exif: String,
    pub phash: Option<i64>,
    pub derived: String,
    pub derived_claimed_at: Option<NaiveDateTime>,
    pub device_id: i64,
    pub user_id: i64,
    pub received_at: NaiveDateTime,
    pub hashed_at: Option<NaiveDateTime>,
}

impl UploadRow {
    /// Every byte is here but the photo is not stored yet: completion (checking, keeping the
    /// original, the `photos` row) is owed. Such an upload never expires and is never swept; it
    /// is completed by the next request that touches it, at start and by the sweep.
    pub fn is_whole(&self) -> bool {
        self.completed_at.is_none() && self.received == self.length
    }
    /// The photo is stored: the original is durable and its `photos` row committed.
    pub fn is_stored(&self) -> bool {
        self.completed_at.is_some()
    }
}

/// What a phone asks for when it creates an upload.
pub struct NewUpload {
    pub sha256: String,
    pub length: i64,
    pub filetype: Option<String>,
    pub filename: Option<String>,
    pub device_id: i64,
    pub user_id: i64,
}

/// Creates the upload of a photo, or finds the one this device already has for it (a phone
/// killed between creating and storing the upload's address asks again), or, when the server
/// already holds the photo, answers with a finished upload at once. Returns the upload and the
/// pieces of an expired one to delete.
pub fn create_upload(
    conn: &mut DbConnection,
    new: NewUpload,
    ttl: chrono::Duration,
    cap: OpenUploads,
) -> ApiResult<(UploadRow, Vec<String>)> {
    let now = now();
    // Only the inspector who stored a photo is told it is there already (another of their
    // phones, a reinstall): anyone else sends the bytes, so that a hash says nothing about
    // photos elsewhere and a photo is nobody's without its bytes.
    let held: Option<i64> = photos::table
        .find(&new.sha256)
        .filter(photos::user_id.eq(new.user_id))
        .select(photos::bytes)
        .first(conn)
        .optional()?;
    if let Some(bytes) = held
        && bytes != new.length
    {
        return Err(ApiError::conflict(
            "upload_length_mismatch",
            format!(
                "the server holds this photo with {bytes} bytes, not {}: the hash or the length is wrong",
                new.length
            ),
        ));
    }
    let existing: Option<UploadRow> = photo_uploads::table
        .filter(photo_uploads::device_id.eq(new.device_id))
        .filter(photo_uploads::sha256.eq(&new.sha256))
        .select(UploadRow::as_select())
        .first(conn)
        .optional()?;
    let mut stale = Vec::new();
    if let Some(upload) = existing {
        let finished = upload.completed_at.is_some();
        let expired = !finished && !upload.is_whole() && upload.expires_at <= now;
        if !expired && upload.length != new.length {
            return Err(ApiError::conflict(
                "upload_length_mismatch",
                format!(
                    "this device's upload of that photo is {} bytes long, not {}",
                    upload.length, new.length
                ),
            ));
        }
        if finished && held.is_some() {
            return Ok((upload, stale));
        }
        if !expired && !finished {
            if held.is_some() {
                // Another device finished the same photo meanwhile: this upload is done too.
                stale = finish_upload(conn, &upload.id, upload.length)?;
                let done = photo_uploads::table
                    .find(&upload.id)
                    .select(UploadRow::as_select())
                    .first(conn)?;
                return Ok((done, stale));
            }
            return Ok((upload, stale));
        }
        stale = drop_upload(conn, &upload.id)?;
    }
    if held.is_none() {
        let open: Vec<i64> = photo_uploads::table
            .filter(photo_uploads::device_id.eq(new.device_id))
            .filter(photo_uploads::completed_at.is_null())
            .filter(photo_uploads::expires_at.gt(now))
            .select(photo_uploads::length)
            .load(conn)?;
        let announced: i64 = open.iter().sum();
        if open.len() as i64 >= cap.uploads || announced + new.length > cap.bytes {
            return Err(ApiError::new(
                Kind::TooManyRequests {
                    retry_after_secs: 60,
                },
                "too_many_open_uploads",
                format!(
                    "this phone has {} unfinished uploads announcing {} MiB (at most {} and {} MiB): finish them first",
                    open.len(),
                    announced / (1024 * 1024),
                    cap.uploads,
                    cap.bytes / (1024 * 1024)
                ),
            ));
        }
    }
    let row = UploadRow {
        id: uuid::Uuid::now_v7().to_string(),
        sha256: new.sha256,
        device_id: new.device_id,
        user_id: new.user_id,
        length: new.length,
        received: if held.is_some() { new.length } else { 0 },
        filetype: new.filetype,
        filename: new.filename,
        created_at: now,
        expires_at: now + ttl,
        completed_at: held.map(|_| now),
    };
    diesel::insert_into(photo_uploads::table)
        .values(&row)
        .execute(conn)?;
    Ok((row, stale))
}

/// Marks an upload finished and forgets its pieces; returns their objects to delete.
fn finish_upload(conn: &mut DbConnection, id: &str, length: i64) -> ApiResult<Vec<String>> {
    let objects = piece_objects(conn, id)?;
    diesel::delete(photo_upload_chunks::table.filter(photo_upload_chunks::upload_id.eq(id)))
        .execute(conn)?;
    diesel::update(photo_uploads::table.find(id))
        .set((
            photo_uploads::received.eq(length),
            photo_uploads::completed_at.eq(Some(now())),
        ))
        .execute(conn)?;
    Ok(objects)
}

/// Deletes an upload and its pieces' rows; returns the objects to delete.
fn drop_upload(conn: &mut DbConnection, id: &str) -> ApiResult<Vec<String>> {
    let objects = piece_objects(conn, id)?;
    diesel::delete(photo_upload_chunks::table.filter(photo_upload_chunks::upload_id.eq(id)))
        .execute(conn)?;
    diesel::delete(photo_uploads::table.find(id)).execute(conn)?;
    Ok(objects)
}

fn piece_objects(conn: &mut DbConnection, id: &str) -> ApiResult<Vec<String>> {
    Ok(photo_upload_chunks::table
        .filter(photo_upload_chunks::upload_id.eq(id))
        .select(photo_upload_chunks::object)
        .load(conn)?)
}

/// Deletes objects, logging failures (the sweeper removes what is left).
pub async fn delete_objects(store: &dyn ObjectStore, objects: Vec<String>) {
    for object in objects {
        if let Err(error) = store.delete(&Path::from(object.as_str())).await
            && !matches!(error, object_store::Error::NotFound { .. })
        {
            tracing::warn!(%error, object, "could not delete a photo object");
        }
    }
}

/// Loads an upload for the device continuing it.
/// An upload as committed, if it exists.
fn upload_row(conn: &mut DbConnection, id: &str) -> QueryResult<Option<UploadRow>> {
    photo_uploads::table
        .find(id)
        .select(UploadRow::as_select())
        .first(conn)
        .optional()
}

pub fn load_upload(conn: &mut DbConnection, id: &str, device_id: i64) -> ApiResult<UploadRow> {
    let upload: UploadRow = upload_row(conn, id)?.ok_or_else(|| {
            ApiError::not_found(
                "upload_not_found",
                "no such upload: it finished long ago, expired and was cleaned up, or never existed; create it again",
            )
        })?;
    if upload.device_id != device_id {
        return Err(ApiError::forbidden(
            "upload_of_another_device",
            "only the device that created an upload may continue it",
        ));
    }
    if upload.completed_at.is_none() && !upload.is_whole() && upload.expires_at <= now() {
        return Err(ApiError::new(
            Kind::Gone,
            "upload_expired",
            "this upload expired unfinished; create it again",
        ));
    }
    Ok(upload)
}

/// A PATCH body as the request handler passes it on.
pub enum Piece {
    Bytes(Bytes),
    /// The body ended where the request said it would. If the channel closes without this, the
    /// connection dropped: what arrived is kept, unless a checksum was promised for the whole.
    End,
}

/// The checksum a PATCH promised for its body (tus checksum extension).
#[derive(Clone)]
pub enum Checksum {
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

enum Hasher {
    None,
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn of(checksum: Option<&Checksum>) -> Hasher {
        match checksum {
            None => Hasher::None,
            Some(Checksum::Sha1(_)) => Hasher::Sha1(sha1::Sha1::new()),
            Some(Checksum::Sha256(_)) => Hasher::Sha256(Sha256::new()),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }
    fn matches(self, checksum: Option<&Checksum>) -> bool {
        match (self, checksum) {
            (Hasher::Sha1(h), Some(Checksum::Sha1(want))) => h.finalize()[..] == want[..],
            (Hasher::Sha256(h), Some(Checksum::Sha256(want))) => h.finalize()[..] == want[..],
            (Hasher::None, None) => true,
            _ => false,
        }
    }
}

/// What became of a PATCH.
pub struct Received {
    pub upload: UploadRow,
}

/// Stores one PATCH's body as a piece of `upload` starting at `offset`, and completes the
/// upload when it is whole. Runs on its own task: a dropped connection cannot interrupt it
/// between storing a piece and committing it. `body` yields the body's bytes, then (`Ok`) its
/// ending.
pub async fn receive(
    state: Arc<AppState>,
    upload: UploadRow,
    offset: i64,
    checksum: Option<Checksum>,
    mut body: tokio::sync::mpsc::Receiver<Piece>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
) -> ApiResult<Received> {
    let photos = &state.photos;
    let remaining = (upload.length - offset) as u64;
    let object = piece_path(&upload.id, offset);
    // Pieces are written in parts of 5 MiB (S3's smallest multipart part): bounded memory.
    let mut writer = object_store::buffered::BufWriter::with_capacity(
        photos.store.clone(),
        object.clone(),
        5 * 1024 * 1024,
    );
    let mut hasher = Hasher::of(checksum.as_ref());
    let mut head = Vec::new();
    let mut got: u64 = 0;
    let mut broken = true;
    while let Some(piece) = body.recv().await {
        let bytes = match piece {
            Piece::Bytes(bytes) => bytes,
            Piece::End => {
                broken = false;
                break;
            }
        };
        if got + bytes.len() as u64 > remaining {
            let _ = writer.abort().await;
            return Err(past_length(upload.length, offset));
        }
        got += bytes.len() as u64;
        hasher.update(&bytes);
        if offset == 0 && head.len() < 64 {
            head.extend_from_slice(&bytes[..bytes.len().min(64 - head.len())]);
        }
        writer.put(bytes).await.map_err(storage)?;
    }
    drop(body);
    if checksum.is_some() && (broken || !hasher.matches(checksum.as_ref())) {
        let _ = writer.abort().await;
        return Err(if broken {
            ApiError::bad_request(
                "incomplete_body",
                "the body ended early; a piece with a checksum is kept only whole",
            )
        } else {
            ApiError::new(
                Kind::ChecksumMismatch,
                "checksum_mismatch",
                "the piece's bytes do not match its Upload-Checksum; nothing was stored, send it again",
            )
        });
    }
    if got == 0 {
        let _ = writer.abort().await;
        return Ok(Received { upload });
    }
    // Refuse what is not a photo we take before the rest of it crosses a 2G link.
    if offset == 0
        && (head.len() >= 16 || got == remaining)
        && let Err(error) = gridpatrol_photo::sniff(&head)
    {
        let _ = writer.abort().await;
        discard(&state, &upload.id).await;
        return Err(refusal(&error));
    }
    tokio::io::AsyncWriteExt::shutdown(&mut writer)
        .await
        .map_err(|e| io_or_store(&e))?;
    let (id, stop, ttl, object_name) = (
        upload.id.clone(),
        offset + got as i64,
        photos.upload_ttl,
        object.to_string(),
    );
    crate::faults::point("photo.piece.before_commit")?;
    let committed = state
        .db
        .write(move |conn| -> ApiResult<UploadRow> {
            let moved = diesel::update(
                photo_uploads::table
                    .find(&id)
                    .filter(photo_uploads::received.eq(offset))
                    .filter(photo_uploads::completed_at.is_null()),
            )
            .set((
                photo_uploads::received.eq(stop),
                photo_uploads::expires_at.eq(now() + ttl),
            ))
            .execute(conn)?;
            if moved == 0 {
                return Err(offset_moved());
            }
            diesel::insert_into(photo_upload_chunks::table)
                .values((
                    photo_upload_chunks::upload_id.eq(&id),
                    photo_upload_chunks::start.eq(offset),
                    photo_upload_chunks::stop.eq(stop),
                    photo_upload_chunks::object.eq(&object_name),
                ))
                .execute(conn)?;
            Ok(photo_uploads::table
                .find(&id)
                .select(UploadRow::as_select())
                .first(conn)?)
        })
        .await;
    let upload = match committed {
        Ok(upload) => upload,
        Err(error) => {
            delete_objects(photos.store.as_ref(), vec![object.to_string()]).await;
            return Err(error);
        }
    };
    crate::faults::point("photo.piece.after_commit")?;
    Ok(Received {
        upload: settle(&state, upload).await?,
    })
}

/// Completes an upload whose bytes are all there ([`UploadRow::is_whole`]) and returns it as it
/// then stands; any other upload comes back as it is. Every answer about an upload passes
/// through here, so that no answer shows `Upload-Offset = Upload-Length` for a photo that is not
/// stored. The caller holds the upload's turn in this process; another process completing the
/// same upload at once is harmless (see [`complete`]).
pub async fn settle(state: &Arc<AppState>, upload: UploadRow) -> ApiResult<UploadRow> {
    if upload.is_whole() {
        complete(state, upload).await
    } else {
        Ok(upload)
    }
}

fn past_length(length: i64, offset: i64) -> ApiError {
    ApiError::new(
        Kind::PayloadTooLarge,
        "upload_past_length",
        format!(
            "the upload is {length} bytes long and this piece starts at {offset}: it may carry at most {} bytes; nothing was stored",
            length - offset
        ),
    )
}

pub fn offset_moved() -> ApiError {
    ApiError::conflict(
        "offset_mismatch",
        "Upload-Offset is not where the upload stands; ask with HEAD and continue from there",
    )
}

/// Checks a whole upload and keeps the photo: the bytes must hash to the announced SHA-256 and
/// pass the photo checks; otherwise the upload is discarded and the phone told why.
///
/// Idempotent, and safe to run twice at once (a restarted process, the sweep, or a second
/// server): it starts from the committed state (an upload already completed, or a photo some
/// device already stored, is only marked finished), writes the original under its hash (the same
/// bytes each time) and inserts the `photos` row if absent. Pieces that vanish while it reads
/// them were deleted by a completion that finished meanwhile, which it then reports.
async fn complete(state: &Arc<AppState>, upload: UploadRow) -> ApiResult<UploadRow> {
    let photos = &state.photos;
    let _turn = photos
        .completing
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    crate::faults::point("photo.complete.start")?;
    let id = upload.id.clone();
    let (current, held, pieces) = state
        .db
        .run(move |conn| -> ApiResult<_> {
            let current = upload_row(conn, &id)?;
            let held: bool = match &current {
                Some(u) => {
                    photos::table
                        .find(&u.sha256)
                        .count()
                        .get_result::<i64>(conn)?
                        > 0
                }
                None => false,
            };
            let pieces: Vec<(i64, i64, String)> = photo_upload_chunks::table
                .filter(photo_upload_chunks::upload_id.eq(&id))
                .order(photo_upload_chunks::start.asc())
                .select((
                    photo_upload_chunks::start,
                    photo_upload_chunks::stop,
                    photo_upload_chunks::object,
                ))
                .load(conn)?;
            Ok((current, held, pieces))
        })
        .await?;
    // From here on the upload as committed, not as the caller last saw it.
    let Some(upload) = current else {
        return Err(gone_meanwhile());
    };
    if upload.is_stored() {
        return Ok(upload);
    }
    if held {
        // The photo is stored already (this upload's completion before a crash, or another
        // device's): this upload is finished too.
        return mark_finished(state, &upload, None).await;
    }
    let mut bytes = BytesMut::with_capacity(upload.length as usize);
    for (start, stop, object) in &pieces {
        if *start != bytes.len() as i64 {
            break;
        }
        let mut stream = match photos.store.get(&Path::from(object.as_str())).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return finished_meanwhile(state, &upload.id).await;
            }
            Err(error) => return Err(storage(error)),
        };
        while let Some(part) = stream.next().await {
            bytes.extend_from_slice(&part.map_err(storage)?);
        }
        if bytes.len() as i64 != *stop {
            break;
        }
    }
    let bytes = bytes.freeze();
    let sha = sha256_hex(&bytes);
    if bytes.len() as i64 != upload.length || sha != upload.sha256 {
        discard(state, &upload.id).await;
        return Err(ApiError::unprocessable(
            "photo_hash_mismatch",
            format!(
                "the uploaded bytes hash to {sha}, not to the announced {}; the upload was discarded, start again",
                upload.sha256
            ),
        ));
    }
    let limits = photos.limits;
    let filetype = upload.filetype.clone();
    let checked = {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || {
            gridpatrol_photo::inspect(&bytes, filetype.as_deref(), &limits)
        })
        .await
        .map_err(ApiError::internal)?
    };
    let inspected = match checked {
        Ok(inspected) => inspected,
        Err(error) => {
            discard(state, &upload.id).await;
            return Err(refusal(&error));
        }
    };
    crate::faults::point("photo.complete.before_original")?;
    photos
        .store
        .put(&original_path(&sha), bytes.into())
        .await
        .map_err(storage)?;
    crate::faults::point("photo.complete.after_original")?;
    let row = PhotoRow {
        sha256: sha,
        bytes: upload.length,
        format: inspected.format.extension().to_string(),
        width: inspected.width as i32,
        height: inspected.height as i32,
        exif: serde_json::to_string(&inspected.exif).map_err(ApiError::internal)?,
        phash: None,
        derived: "pending".into(),
        derived_claimed_at: None,
        device_id: upload.device_id,
        user_id: upload.user_id,
        received_at: now(),
        hashed_at: None,
    };
    mark_finished(state, &upload, Some(row)).await
}

/// Commits a completion: the `photos` row (if given and absent) and the upload marked finished,
/// in one transaction; then the pieces are deleted and the workers woken.
async fn mark_finished(
    state: &Arc<AppState>,
    upload: &UploadRow,
    row: Option<PhotoRow>,
) -> ApiResult<UploadRow> {
    let (id, length, upload_sha) = (upload.id.clone(), upload.length, upload.sha256.clone());
    let (objects, done) = state
        .db
        .write(move |conn| -> ApiResult<_> {
            if let Some(row) = &row {
                on_each_backend!(conn, |c| diesel::insert_into(photos::table)
                    .values(row)
                    .on_conflict(photos::sha256)
                    .do_nothing()
                    .execute(c))?;
            }
            crate::faults::point("photo.complete.before_commit")?;
            let objects = finish_upload(conn, &id, length)?;
            crate::compliance::judging::mark_photo_stale(conn, &upload_sha)?;
            let done = photo_uploads::table
                .find(&id)
                .select(UploadRow::as_select())
                .first(conn)?;
            Ok((objects, done))
        })
        .await?;
    crate::faults::point("photo.complete.after_commit")?;
    delete_objects(state.photos.store.as_ref(), objects).await;
    state.photos.wake_worker.notify_one();
    state.wake_judging.notify_one();
    Ok(done)
}

/// A piece vanished while completing: another completion finished and deleted it, or the upload
/// was discarded. Says which.
async fn finished_meanwhile(state: &Arc<AppState>, id: &str) -> ApiResult<UploadRow> {
    let id = id.to_string();
    let current = state
        .db
        .run(move |conn| -> ApiResult<_> { Ok(upload_row(conn, &id)?) })
        .await?;
    match current {
        Some(upload) if upload.is_stored() => Ok(upload),
        Some(_) => Err(ApiError::internal(
            "a piece of a whole upload is missing from the photo store",
        )),
        None => Err(gone_meanwhile()),
    }
}

fn gone_meanwhile() -> ApiError {
    ApiError::not_found(
        "upload_not_found",
        "the upload was discarded meanwhile; create it again",
    )
}

/// Completes every upload whose bytes are all there and whose completion was cut short (a
/// crash, a full disk). Runs at start and with each sweep. Returns how many it completed.
pub async fn complete_whole(state: &Arc<AppState>) -> ApiResult<usize> {
    let owed: Vec<UploadRow> = state
        .db
        .run(|conn| -> ApiResult<_> {
            Ok(photo_uploads::table
                .filter(photo_uploads::completed_at.is_null())
                .filter(photo_uploads::received.eq(photo_uploads::length))
                .select(UploadRow::as_select())
                .load(conn)?)
        })
        .await?;
    let mut completed = 0;
    for upload in owed {
        let _turn = state.photos.turn(&upload.id).await;
        let id = upload.id.clone();
        match complete(state, upload).await {
            Ok(done) if done.is_stored() => completed += 1,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, upload = id, "could not complete a whole upload"),
        }
    }
    Ok(completed)
}

/// Forgets an upload and deletes its pieces.
async fn discard(state: &Arc<AppState>, id: &str) {
    let id = id.to_string();
    match state.db.write(move |conn| drop_upload(conn, &id)).await {
        Ok(objects) => delete_objects(state.photos.store.as_ref(), objects).await,
        Err(error) => tracing::warn!(%error, "could not discard an upload"),
    }
}

/// Links patrols to the photos their documents reference (`patrol_photos`), replacing what was
/// linked before: `(patrol, grid, references)` each, in a few statements for all of them.
pub fn project_patrol_photos(
    conn: &mut DbConnection,
    patrols: &[(&str, i64, &[sync_protocol::schema::PhotoRef])],
    timestamp: impl Fn(i64) -> NaiveDateTime,
) -> ApiResult<()> {
    for chunk in patrols.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(|p| p.0).collect();
        diesel::delete(patrol_photos::table.filter(patrol_photos::patrol_id.eq_any(&ids)))
            .execute(conn)?;
        let mut rows = Vec::new();
        for &(patrol_id, grid_id, references) in chunk {
            let mut seen = std::collections::BTreeSet::new();
            rows.extend(
                references
                    .iter()
                    .filter(|r| is_sha256(&r.sha256) && seen.insert(r.sha256.as_str()))
                    .map(|r| {
                        (
                            patrol_photos::patrol_id.eq(patrol_id),
                            patrol_photos::sha256.eq(&r.sha256),
                            patrol_photos::grid_id.eq(grid_id),
                            patrol_photos::taken_at.eq(timestamp(r.taken_at_ms)),
                            patrol_photos::caption.eq(&r.caption),
                        )
                    }),
            );
        }
        // 5 values a row: 1,000 rows stay well under SQLite's 32,766 bound parameters.
        for rows in rows.chunks(1_000) {
            on_each_backend!(conn, |c| diesel::insert_into(patrol_photos::table)
                .values(rows)
                .execute(c))?;
        }
    }
    Ok(())
}

/// Removes expired uploads and pieces no committed row accounts for. Returns how many objects
/// it deleted.
pub async fn sweep(state: &Arc<AppState>) -> ApiResult<usize> {
    match complete_whole(state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(completed = n, "completed whole uploads"),
        Err(error) => tracing::warn!(%error, "completing whole uploads"),
    }
    let cutoff = now();
    let (objects, live) = state
        .db
        .write(move |conn| -> ApiResult<_> {
            // A whole upload is never swept: its completion is owed (complete_whole).
            let expired: Vec<String> = photo_uploads::table
                .filter(photo_uploads::completed_at.is_null())
                .filter(photo_uploads::received.lt(photo_uploads::length))
                .filter(photo_uploads::expires_at.le(cutoff))
                .select(photo_uploads::id)
                .load(conn)?;
            let mut objects = Vec::new();
            for id in &expired {
                objects.extend(drop_upload(conn, id)?);
            }
            // Finished uploads are kept a week for phones that ask again, then forgotten.
            diesel::delete(
                photo_uploads::table
                    .filter(photo_uploads::completed_at.le(cutoff - chrono::Duration::days(7))),
            )
            .execute(conn)?;
            let live: std::collections::HashSet<String> = photo_upload_chunks::table
                .select(photo_upload_chunks::object)
                .load::<String>(conn)?
                .into_iter()
                .collect();
            Ok((objects, live))
        })
        .await?;
    let mut deleted = objects.len();
    delete_objects(state.photos.store.as_ref(), objects).await;
    // Pieces written but never committed (a crash, a lost race): older than an hour, so that a
    // piece being committed right now is left alone.
    let old = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut listing = state.photos.store.list(Some(&Path::from("uploads")));
    let mut orphans = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(storage)?;
        if !live.contains(meta.location.as_ref()) && meta.last_modified < old {
            orphans.push(meta.location.to_string());
        }
    }
    deleted += orphans.len();
    delete_objects(state.photos.store.as_ref(), orphans).await;
    Ok(deleted)
}

/// Makes the thumbnail, preview and perceptual hash of photos that lack them, one at a time,
/// until none is left. Several server processes may run it: a photo is claimed first.
pub async fn derive_pending(state: &Arc<AppState>) -> ApiResult<usize> {
    let mut made = 0;
    loop {
        // A claim on one photo's images is a lease of a minute (making them takes about a
        // second): a process killed while making them leaves the photo to the others soon.
        let stale = now() - chrono::Duration::minutes(1);
        let claimed = state
            .db
            .write(move |conn| -> ApiResult<Option<String>> {
                let next: Option<String> = photos::table
                    .filter(
                        photos::derived.eq("pending").or(photos::derived
                            .eq("working")
                            .and(photos::derived_claimed_at.le(stale))),
                    )
                    .order(photos::received_at.asc())
                    .select(photos::sha256)
                    .first(conn)
                    .optional()?;
                if let Some(sha) = &next {
                    diesel::update(photos::table.find(sha))
                        .set((
                            photos::derived.eq("working"),
                            photos::derived_claimed_at.eq(Some(now())),
                        ))
                        .execute(conn)?;
                }
                Ok(next)
            })
            .await?;
        let Some(sha) = claimed else {
            return Ok(made);
        };
        crate::faults::point("photo.derive.after_claim")?;
        let outcome = derive_one(state, &sha).await;
        crate::faults::point("photo.derive.before_done")?;
        let (state_text, phash) = match &outcome {
            Ok(phash) => ("done", Some(*phash as i64)),
            Err(error) => {
                tracing::warn!(%error, sha, "could not derive a photo's images");
                ("failed", None)
            }
        };
        state
            .db
            .write(move |conn| -> ApiResult<()> {
                diesel::update(photos::table.find(&sha))
                    .set((
                        photos::derived.eq(state_text),
                        photos::phash.eq(phash),
                        photos::hashed_at.eq(phash.map(|_| now())),
                    ))
                    .execute(conn)?;
                // Its hash may show it reused: the patrols using it are judged again.
                crate::compliance::judging::mark_photo_stale(conn, &sha)?;
                Ok(())
            })
            .await?;
        made += 1;
        state.wake_judging.notify_one();
    }
}

async fn derive_one(state: &Arc<AppState>, sha: &str) -> ApiResult<u64> {
    let store = &state.photos.store;
    let bytes = store
        .get(&original_path(sha))
        .await
        .map_err(storage)?
        .bytes()
        .await
        .map_err(storage)?;
    let limits = state.photos.limits;
    // One decode for the three.
    let derived =
        tokio::task::spawn_blocking(move || gridpatrol_photo::derive_all(&bytes, &limits))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| refusal(&e))?;
    let (thumbnail, preview, phash) = (derived.thumbnail, derived.preview, derived.phash);
    store
        .put(
            &derived_path(sha, Derived::Thumbnail),
            Bytes::from(thumbnail).into(),
        )
        .await
        .map_err(storage)?;
    store
        .put(
            &derived_path(sha, Derived::Preview),
            Bytes::from(preview).into(),
        )
        .await
        .map_err(storage)?;
    Ok(phash)
}

/// The background work of photos in a serving process: derived images as photos arrive, and
/// the sweep of expired uploads every ten minutes.
pub fn spawn_workers(state: Arc<AppState>) {
    let worker = state.clone();
    tokio::spawn(async move {
        loop {
            if let Err(error) = derive_pending(&worker).await {
                tracing::warn!(%error, "derived-image worker");
            }
            tokio::select! {
                _ = worker.photos.wake_worker.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    });
    // The first tick is at once: completions a crash cut short are finished at start (the
    // sweep begins with them), then every ten minutes with the sweep.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            match sweep(&state).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "swept unfinished uploads"),
                Err(error) => tracing::warn!(%error, "upload sweep"),
            }
        }
    });
}
