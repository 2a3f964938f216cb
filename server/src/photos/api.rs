//! Photo uploads over tus 1.0 (core, creation, checksum, expiration) and photo downloads.
//!
//! Where we differ from plain tus (docs/PHOTOS.md says more): `Upload-Metadata` must carry the
//! photo's `sha256` (hex), because photos are addressed by their content; creating an upload of
//! a photo the server already holds answers with a finished upload at once; and a device asking
//! again for the same photo gets its existing upload back.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, get, head, options, patch, post, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::{
    Checksum, Derived, NewUpload, Piece, UploadRow, create_upload, delete_objects, derived_path,
    is_sha256, load_upload, offset_moved, original_path, receive, settle,
};
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody, Kind};
use crate::schema::{grids, patrol_photos, patrols, photos};

pub const TUS_VERSION: &str = "1.0.0";
const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// Present (`true`) on an answer about an upload only once the photo is stored for good.
pub const PHOTO_STORED: &str = "photo-stored";

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(discover)
        .service(create)
        .service(status)
        .service(append)
        .service(info)
        .service(original)
        .service(thumbnail)
        .service(preview);
}

/// Every tus response carries `Tus-Resumable`, errors included.
fn tus(result: ApiResult<HttpResponse>) -> HttpResponse {
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.error_response();
            if error.kind == Kind::PreconditionFailed {
                response.headers_mut().insert(
                    tus_header("tus-version"),
                    HeaderValue::from_static(TUS_VERSION),
                );
            }
            response
        }
    };
    response.headers_mut().insert(
        tus_header("tus-resumable"),
        HeaderValue::from_static(TUS_VERSION),
    );
    response
}

fn tus_header(name: &'static str) -> header::HeaderName {
    header::HeaderName::from_static(name)
}

fn require_tus(req: &HttpRequest) -> ApiResult<()> {
    match req.headers().get("tus-resumable").map(HeaderValue::to_str) {
        Some(Ok(TUS_VERSION)) => Ok(()),
        _ => Err(ApiError::new(
            Kind::PreconditionFailed,
            "tus_version_unsupported",
            "send Tus-Resumable: 1.0.0; this server speaks tus 1.0.0",
        )),
    }
}

fn device(authed: &Authed) -> ApiResult<i64> {
    authed.device_id.ok_or_else(|| {
        ApiError::forbidden(
            "device_required",
            "photos are uploaded by enrolled devices; sign in on a phone enrolled with a code",
        )
    })
}

fn number(headers: &HeaderMap, name: &str, code: &'static str) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(code, format!("{name} must be a non-negative integer"))
        })
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (a key alone has no value).
fn metadata(headers: &HeaderMap) -> ApiResult<Vec<(String, Option<String>)>> {
    let Some(value) = headers.get("upload-metadata") else {
        return Ok(Vec::new());
    };
    let malformed = |why: &str| {
        ApiError::bad_request(
            "malformed_metadata",
            format!("Upload-Metadata must be `key base64value` pairs separated by commas: {why}"),
        )
    };
    let text = value.to_str().map_err(|_| malformed("not ASCII"))?;
    let mut pairs = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ');
        let key = parts.next().unwrap_or_default();
        let value = match parts.next() {
            None => None,
            Some(encoded) => {
                let bytes = STANDARD
                    .decode(encoded)
                    .map_err(|_| malformed(&format!("the value of {key} is not base64")))?;
                Some(
                    String::from_utf8(bytes)
                        .map_err(|_| malformed(&format!("the value of {key} is not UTF-8")))?,
                )
            }
        };
        if parts.next().is_some() || key.is_empty() {
            return Err(malformed(pair));
        }
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// The headers of every answer about an upload. `Photo-Stored: true` says that the photo is
/// stored for good (the original durable, its record committed): the only sign a client may take
/// for "uploaded" and act on (delete its own copy). Answers pass through [`settle`] first, so
/// `Upload-Offset` reaches `Upload-Length` only together with it.
fn upload_headers(response: &mut actix_web::HttpResponseBuilder, upload: &UploadRow) {
    response
        .insert_header(("upload-offset", upload.received.to_string()))
        .insert_header(("upload-length", upload.length.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if upload.is_stored() {
        response.insert_header((PHOTO_STORED, "true"));
    }
    if upload.completed_at.is_none() {
        let expires = upload.expires_at.and_utc().to_rfc2822();
        response.insert_header(("upload-expires", expires.replace("+0000", "GMT")));
    }
}

/// What the server supports (tus discovery).
#[utoipa::path(
    tag = "photos",
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`")),
)]
#[options("/v1/photos/uploads")]
async fn discover(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("tus-resumable", TUS_VERSION))
        .insert_header(("tus-version", TUS_VERSION))
        .insert_header(("tus-extension", "creation,checksum,expiration"))
        .insert_header(("tus-max-size", state.photos.limits.max_bytes.to_string()))
        .insert_header(("tus-checksum-algorithm", "sha1,sha256"))
        .finish()
}

/// Creates the upload of a photo (tus creation). `Upload-Length` is the photo's size;
/// `Upload-Metadata` carries `sha256` (required, hex), `filetype` (MIME type) and `filename`.
/// A photo this inspector has already stored (from any of their phones) answers with a finished
/// upload (`Upload-Offset` = `Upload-Length`); anyone else sends the bytes, and learns nothing
/// from the hash about photos elsewhere. The same device asking again for the same photo gets its
/// upload back.
#[utoipa::path(
    tag = "photos",
    params(
        ("Tus-Resumable" = String, Header, description = "The tus version the client speaks: `1.0.0` (else 412 `tus_version_unsupported`)", pattern = r"^1\.0\.0$"),
        ("Upload-Length" = u64, Header, description = "The photo's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "tus metadata: comma-separated `key base64(value)` pairs; `sha256` is required"),
    ),
    responses(
        (status = 201, description = "`Location` of the upload; `Upload-Offset`, `Upload-Expires`"),
        (status = 400, description = "`upload_length_required`, `malformed_metadata`, `photo_hash_required`, `photo_empty`, `defer_length_unsupported`", body = ErrorBody),
        (status = 403, description = "`device_required`", body = ErrorBody),
        (status = 409, description = "`upload_length_mismatch`", body = ErrorBody),
        (status = 412, description = "`tus_version_unsupported`", body = ErrorBody),
        (status = 413, description = "`photo_too_large`", body = ErrorBody),
        (status = 415, description = "`photo_unsupported_format`", body = ErrorBody),
        (status = 429, description = "`too_many_open_uploads`: the device has too many unfinished uploads, or they announce too many bytes; `Retry-After`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/photos/uploads")]
async fn create(
    state: web::Data<AppState>,
    authed: Result<Authed, ApiError>,
    req: HttpRequest,
) -> HttpResponse {
    tus(create_inner(state, authed, req).await)
}

async fn create_inner(
    state: web::Data<AppState>,
    authed: Result<Authed, ApiError>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    // Who asks comes first (401), then whether it speaks our tus (412).
    let authed = authed?;
    require_tus(&req)?;
    let device_id = device(&authed)?;
    let headers = req.headers();
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "defer_length_unsupported",
            "a photo's length is known before it is sent: give Upload-Length",
        ));
    }
    let length = number(headers, "upload-length", "upload_length_required")?.ok_or_else(|| {
        ApiError::bad_request(
            "upload_length_required",
            "give the photo's size as Upload-Length",
        )
    })?;
    let meta = metadata(headers)?;
    let value = |key: &str| {
        meta.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    let sha256 = value("sha256")
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| is_sha256(s))
        .ok_or_else(|| {
            ApiError::bad_request(
                "photo_hash_required",
                "Upload-Metadata must carry sha256: the photo's SHA-256 as 64 hex digits",
            )
        })?;
    let limits = &state.photos.limits;
    if length == 0 {
        return Err(ApiError::bad_request(
            "photo_empty",
            "the photo is empty (0 bytes)",
        ));
    }
    if length as u64 > limits.max_bytes {
        return Err(ApiError::new(
            Kind::PayloadTooLarge,
            "photo_too_large",
            format!(
                "the photo is {length} bytes; at most {} are accepted: downscale it on the phone",
                limits.max_bytes
            ),
        ));
    }
    let filetype = value("filetype");
    if let Some(filetype) = &filetype
        && !matches!(
            filetype.to_ascii_lowercase().as_str(),
            "image/jpeg" | "image/jpg" | "image/png" | "image/webp"
        )
    {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "photo_unsupported_format",
            format!(
                "{filetype} is not accepted: convert the photo to JPEG on the phone (JPEG, PNG and WebP are accepted)"
            ),
        ));
    }
    let new = NewUpload {
        sha256,
        length,
        filetype,
        filename: value("filename"),
        device_id,
        user_id: authed.user_id,
    };
    let ttl = state.photos.upload_ttl;
    let cap = state.photos.open_per_device;
    let (upload, stale) = state
        .db
        .write(move |conn| {
            let created = create_upload(conn, new, ttl, cap)?;
            crate::faults::point("photo.create.before_commit")?;
            Ok::<_, ApiError>(created)
        })
        .await?;
    crate::faults::point("photo.create.after_commit")?;
    delete_objects(state.photos.store.as_ref(), stale).await;
    // This device's earlier upload of the photo may be whole with its completion cut short.
    let upload = if upload.is_whole() {
        let state = state.clone().into_inner();
        let _turn = state.photos.turn(&upload.id).await;
        settle(&state, upload).await?
    } else {
        upload
    };
    let mut response = HttpResponse::Created();
    response.insert_header((
        header::LOCATION,
        format!("/v1/photos/uploads/{}", upload.id),
    ));
    upload_headers(&mut response, &upload);
    Ok(response.finish())
}

/// Where an upload stands (tus core): `Upload-Offset` is the number of bytes the server holds
/// durably; continue from there.
#[utoipa::path(
    tag = "photos",
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "The tus version the client speaks: `1.0.0` (else 412 `tus_version_unsupported`)", pattern = r"^1\.0\.0$")),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length`, `Upload-Expires` (unfinished); `Photo-Stored: true` once the photo is stored for good. An upload whose bytes are all there is completed before this answers: `Upload-Offset` reaches `Upload-Length` only together with `Photo-Stored`"),
        (status = 403, description = "`upload_of_another_device`, `device_required`"),
        (status = 404, description = "`upload_not_found`"),
        (status = 410, description = "`upload_expired`"),
        (status = 412, description = "`tus_version_unsupported`"),
    ),
    security(("bearer" = []))
)]
#[head("/v1/photos/uploads/{id}")]
async fn status(
    state: web::Data<AppState>,
    authed: Result<Authed, ApiError>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    tus(async {
        let authed = authed?;
        require_tus(&req)?;
        let device_id = device(&authed)?;
        let id = id.into_inner();
        let _turn = state.photos.turn(&id).await;
        let upload = state
            .db
            .run(move |conn| load_upload(conn, &id, device_id))
            .await?;
        let upload = settle(&state.clone().into_inner(), upload).await?;
        crate::faults::point("photo.head.answer")?;
        let mut response = HttpResponse::Ok();
        upload_headers(&mut response, &upload);
        Ok(response.finish())
    }
    .await)
}

/// Appends bytes at `Upload-Offset` (tus core, with the checksum extension). A body cut short by
/// a dropped connection is kept up to its last byte, unless it carried `Upload-Checksum`. When
/// the last byte arrives the server checks the whole photo: its SHA-256 must be the announced
/// one and the photo must pass the checks (format, size, pixels, a complete image); if not, the
/// upload is discarded and the answer says why.
#[utoipa::path(
    tag = "photos",
    params(
        ("id" = String, Path),
        ("Tus-Resumable" = String, Header, description = "The tus version the client speaks: `1.0.0` (else 412 `tus_version_unsupported`)", pattern = r"^1\.0\.0$"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start: the offset the server holds"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "`Upload-Offset`: the new offset; `Upload-Offset` = `Upload-Length` comes only with `Photo-Stored: true`, once the photo is stored for good"),
        (status = 400, description = "`upload_offset_required`, `checksum_algorithm_unsupported`, `incomplete_body`, `photo_empty`", body = ErrorBody),
        (status = 403, description = "`upload_of_another_device`, `device_required`", body = ErrorBody),
        (status = 404, description = "`upload_not_found`", body = ErrorBody),
        (status = 409, description = "`offset_mismatch` (with the actual `Upload-Offset`)", body = ErrorBody),
        (status = 410, description = "`upload_expired`", body = ErrorBody),
        (status = 412, description = "`tus_version_unsupported`", body = ErrorBody),
        (status = 413, description = "`upload_past_length`, `photo_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`, `photo_unsupported_format`", body = ErrorBody),
        (status = 422, description = "`photo_hash_mismatch`, `photo_truncated`, `photo_corrupt`, `photo_too_many_pixels`, `photo_type_mismatch`", body = ErrorBody),
        (status = 460, description = "`checksum_mismatch`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/photos/uploads/{id}")]
async fn append(
    state: web::Data<AppState>,
    authed: Result<Authed, ApiError>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    tus(append_inner(state, authed, req, id.into_inner(), payload).await)
}

async fn append_inner(
    state: web::Data<AppState>,
    authed: Result<Authed, ApiError>,
    req: HttpRequest,
    id: String,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let authed = authed?;
    require_tus(&req)?;
    let device_id = device(&authed)?;
    let headers = req.headers();
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some(OFFSET_STREAM)
    {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            format!("a PATCH body is sent as {OFFSET_STREAM}"),
        ));
    }
    let offset = number(headers, "upload-offset", "upload_offset_required")?.ok_or_else(|| {
        ApiError::bad_request(
            "upload_offset_required",
            "give Upload-Offset: where this piece starts",
        )
    })?;
    let checksum = checksum(headers)?;
    let turn = state.photos.turn(&id).await;
    let upload = state
        .db
        .run(move |conn| load_upload(conn, &id, device_id))
        .await?;
    let upload = settle(&state.clone().into_inner(), upload).await?;
    if offset != upload.received {
        let error = offset_moved();
        let mut response = error.error_response();
        response.headers_mut().insert(
            tus_header("upload-offset"),
            HeaderValue::from(upload.received),
        );
        return Ok(response);
    }
    if let Some(declared) = number(headers, "content-length", "invalid_content_length")?
        && declared > upload.length - offset
    {
        return Err(ApiError::new(
            Kind::PayloadTooLarge,
            "upload_past_length",
            format!(
                "this piece is {declared} bytes but only {} remain of the upload's {}; nothing was stored",
                upload.length - offset,
                upload.length
            ),
        ));
    }
    if upload.is_stored() {
        let mut response = HttpResponse::NoContent();
        upload_headers(&mut response, &upload);
        return Ok(response.finish());
    }
    // The piece is stored and committed on a task of its own, and the body is read on another
    // (on this worker, as actix's payload stays on its thread): a dropped connection cancels
    // this handler, and neither the bytes actix has already read nor the commit may go with it.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(receive(
        Arc::clone(&state.into_inner()),
        upload,
        offset,
        checksum,
        rx,
        turn,
    ));
    actix_web::rt::spawn(forward(payload, tx));
    let received = task.await.map_err(ApiError::internal)??;
    let mut response = HttpResponse::NoContent();
    upload_headers(&mut response, &received.upload);
    Ok(response.finish())
}

/// Passes a PATCH body on to [`receive`], then its end (`Piece::End`) if it came whole. A body
/// that stalls for two minutes counts as broken off.
async fn forward(mut payload: web::Payload, tx: tokio::sync::mpsc::Sender<Piece>) {
    let stall = std::time::Duration::from_secs(120);
    loop {
        match tokio::time::timeout(stall, payload.next()).await {
            Ok(Some(Ok(bytes))) => {
                if tx.send(Piece::Bytes(bytes)).await.is_err() {
                    return; // refused (past the length): the task says why
                }
            }
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "upload body broken off");
                return;
            }
            Ok(None) => {
                let _ = tx.send(Piece::End).await;
                return;
            }
            Err(_) => {
                tracing::debug!("upload body stalled");
                return;
            }
        }
    }
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
fn checksum(headers: &HeaderMap) -> ApiResult<Option<Checksum>> {
    let Some(value) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "checksum_algorithm_unsupported",
            "Upload-Checksum is `sha1 <base64>` or `sha256 <base64>`",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (algorithm, digest) = text.split_once(' ').ok_or_else(bad)?;
    let digest = STANDARD.decode(digest.trim()).map_err(|_| bad())?;
    match (algorithm, digest.len()) {
        ("sha1", 20) => Ok(Some(Checksum::Sha1(digest))),
        ("sha256", 32) => Ok(Some(Checksum::Sha256(digest))),
        _ => Err(bad()),
    }
}

/// A stored photo as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoInfo {
    pub sha256: String,
    pub bytes: i64,
    /// `jpg`, `png` or `webp`.
    pub format: String,
    pub width: i32,
    pub height: i32,
    /// EXIF as read: `taken_at`, `offset`, `lon`, `lat`, `gps_datum`, `make`, `model`, `orientation`.
    #[schema(value_type = Object)]
    pub exif: serde_json::Value,
    /// `pending`, `working`, `done` or `failed`: the thumbnail and preview.
    pub derived: String,
    #[serde(with = "crate::wire::utc")]
    pub received_at: chrono::NaiveDateTime,
    /// The patrols that reference this photo and that the caller may see.
    pub patrols: Vec<String>,
    /// Earlier photos of the same jurisdiction that look the same (perceptual hash within 8 of
    /// 64 bits): a photo reused from an earlier patrol is a fraud signal. Empty until the
    /// photo's hash is made (`derived` = `done`).
    pub near_duplicates: Vec<NearDuplicateView>,
}

/// An earlier photo that looks the same.
#[derive(Debug, Serialize, ToSchema)]
pub struct NearDuplicateView {
    pub sha256: String,
    /// Differing bits of the two 64-bit perceptual hashes (0: the same picture).
    pub distance: u32,
    #[serde(with = "crate::wire::utc")]
    pub received_at: chrono::NaiveDateTime,
    /// The patrols that used it, among those the caller may see.
    pub patrols: Vec<String>,
    /// Patrols that used it outside what the caller may see (counted, not named).
    pub hidden_patrols: usize,
}

/// Whether the caller may see a photo: it references a patrol in the caller's part of the grid
/// tree or of the caller's own, or the caller uploaded it.
fn visible_patrols(
    conn: &mut crate::db::DbConnection,
    authed: &Authed,
    sha256: &str,
) -> ApiResult<(Vec<String>, bool)> {
    let linked: Vec<(String, String)> = patrol_photos::table
        .inner_join(grids::table.on(grids::id.eq(patrol_photos::grid_id)))
        .filter(patrol_photos::sha256.eq(sha256))
        .select((patrol_photos::patrol_id, grids::path))
        .load(conn)?;
    let ids: Vec<&String> = linked.iter().map(|(id, _)| id).collect();
    let own: std::collections::HashSet<String> = patrols::table
        .filter(patrols::id.eq_any(ids))
        .filter(patrols::inspector_id.eq(authed.user_id))
        .select(patrols::id)
        .load::<String>(conn)?
        .into_iter()
        .collect();
    let patrols: Vec<String> = linked
        .into_iter()
        .filter(|(id, path)| authed.can_see(path) || own.contains(id))
        .map(|(id, _)| id)
        .collect();
    let uploader: Option<i64> = photos::table
        .find(sha256)
        .select(photos::user_id)
        .first(conn)
        .optional()?;
    let may = !patrols.is_empty() || uploader == Some(authed.user_id);
    Ok((patrols, may))
}

fn checked_sha(sha256: &str) -> ApiResult<String> {
    let sha = sha256.to_ascii_lowercase();
    if is_sha256(&sha) {
        Ok(sha)
    } else {
        Err(ApiError::bad_request(
            "invalid_photo_id",
            "a photo is named by its SHA-256: 64 hex digits",
        ))
    }
}

async fn authorize(
    state: &AppState,
    authed: Authed,
    sha: String,
) -> ApiResult<(crate::photos::PhotoRow, Vec<String>)> {
    state
        .db
        .run(move |conn| -> ApiResult<_> {
            let row: Option<crate::photos::PhotoRow> = photos::table
                .find(&sha)
                .select(crate::photos::PhotoRow::as_select())
                .first(conn)
                .optional()?;
            let (patrols, may) = visible_patrols(conn, &authed, &sha)?;
            if !may {
                // The same answer whether or not the photo exists: no probing for hashes.
                return Err(ApiError::not_found(
                    "photo_not_found",
                    "no such photo among the patrols you may see",
                ));
            }
            let row = row.ok_or_else(|| {
                ApiError::not_found(
                    "photo_not_uploaded",
                    "a patrol references this photo but its bytes have not arrived yet",
                )
            })?;
            Ok((row, patrols))
        })
        .await
}

/// A photo's metadata: format, size, EXIF, the patrols that reference it.
#[utoipa::path(
    tag = "photos",
    params(("sha256" = String, Path, description = "The photo's SHA-256, 64 hex digits", pattern = r"^[0-9a-fA-F]{64}$")),
    responses(
        (status = 400, description = "`invalid_photo_id`", body = ErrorBody),
        (status = 200, body = PhotoInfo),
        (status = 404, description = "`photo_not_found`, `photo_not_uploaded`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/photos/{sha256}/info")]
async fn info(
    state: web::Data<AppState>,
    authed: Authed,
    sha256: web::Path<String>,
) -> ApiResult<web::Json<PhotoInfo>> {
    let sha = checked_sha(&sha256)?;
    let (row, patrols) = authorize(&state, authed.clone(), sha.clone()).await?;
    let index = state.clone();
    let near = state
        .db
        .run(move |conn| super::near_duplicates(conn, &index.photos.hashes, &sha))
        .await?;
    let near_duplicates = near
        .into_iter()
        .map(|near| {
            let (seen, hidden): (Vec<_>, Vec<_>) = near
                .patrols
                .into_iter()
                .partition(|(_, path)| authed.can_see(path));
            NearDuplicateView {
                sha256: near.sha256,
                distance: near.distance,
                received_at: near.received_at,
                patrols: seen.into_iter().map(|(id, _)| id).collect(),
                hidden_patrols: hidden.len(),
            }
        })
        .collect();
    Ok(web::Json(PhotoInfo {
        near_duplicates,
        exif: serde_json::from_str(&row.exif).unwrap_or(serde_json::Value::Null),
        sha256: row.sha256,
        bytes: row.bytes,
        format: row.format,
        width: row.width,
        height: row.height,
        derived: row.derived,
        received_at: row.received_at,
        patrols,
    }))
}

async fn serve_object(
    state: &AppState,
    req: &HttpRequest,
    sha: &str,
    path: object_store::path::Path,
    content_type: &str,
) -> ApiResult<HttpResponse> {
    let etag = format!("\"{sha}-{}\"", path.filename().unwrap_or_default());
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let bytes = match state.photos.store.get(&path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| ApiError::internal(format!("photo store: {e}")))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(
                "derived_not_ready",
                "this image is being made; try again in a few seconds",
            ));
        }
        Err(e) => return Err(ApiError::internal(format!("photo store: {e}"))),
    };
    Ok(HttpResponse::build(StatusCode::OK)
        .insert_header((header::CONTENT_TYPE, content_type.to_string()))
        // Content-addressed: the bytes under this name never change.
        .insert_header((
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        ))
        .insert_header((header::ETAG, etag))
        .body(bytes))
}

/// The photo as the phone took it.
#[utoipa::path(
    tag = "photos",
    params(("sha256" = String, Path, description = "The photo's SHA-256, 64 hex digits", pattern = r"^[0-9a-fA-F]{64}$")),
    responses(
        (status = 400, description = "`invalid_photo_id`", body = ErrorBody),
        (status = 200, description = "The photo's bytes", content(("image/jpeg"), ("image/png"), ("image/webp"))),
        (status = 404, description = "`photo_not_found`, `photo_not_uploaded`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/photos/{sha256}")]
async fn original(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
    sha256: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let sha = checked_sha(&sha256)?;
    let (row, _) = authorize(&state, authed, sha.clone()).await?;
    let mime = match row.format.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        _ => "image/jpeg",
    };
    serve_object(&state, &req, &sha, original_path(&sha), mime).await
}

pub(crate) async fn derived(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
    sha256: &str,
    kind: Derived,
) -> ApiResult<HttpResponse> {
    let sha = checked_sha(sha256)?;
    authorize(&state, authed, sha.clone()).await?;
    serve_object(&state, &req, &sha, derived_path(&sha, kind), "image/jpeg").await
}

/// The thumbnail (long edge 320 px, EXIF orientation applied), as JPEG.
#[utoipa::path(
    tag = "photos",
    params(("sha256" = String, Path, description = "The photo's SHA-256, 64 hex digits", pattern = r"^[0-9a-fA-F]{64}$")),
    responses(
        (status = 400, description = "`invalid_photo_id`", body = ErrorBody),
        (status = 200, content_type = "image/jpeg"),
        (status = 404, description = "`photo_not_found`, `photo_not_uploaded`, `derived_not_ready`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/photos/{sha256}/thumbnail")]
async fn thumbnail(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
    sha256: web::Path<String>,
) -> ApiResult<HttpResponse> {
    derived(state, authed, req, &sha256, Derived::Thumbnail).await
}

/// The preview (long edge 1280 px, EXIF orientation applied), as JPEG.
#[utoipa::path(
    tag = "photos",
    params(("sha256" = String, Path, description = "The photo's SHA-256, 64 hex digits", pattern = r"^[0-9a-fA-F]{64}$")),
    responses(
        (status = 400, description = "`invalid_photo_id`", body = ErrorBody),
        (status = 200, content_type = "image/jpeg"),
        (status = 404, description = "`photo_not_found`, `photo_not_uploaded`, `derived_not_ready`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/photos/{sha256}/preview")]
async fn preview(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
    sha256: web::Path<String>,
) -> ApiResult<HttpResponse> {
    derived(state, authed, req, &sha256, Derived::Preview).await
}
