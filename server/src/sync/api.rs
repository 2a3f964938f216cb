//! `POST /v1/sync` (CBOR, for phones) and `GET /v1/feed` (JSON, for screens and integrations).

use actix_web::{HttpRequest, HttpResponse, get, http::header, post, web};
use automerge::ActorId;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sync_protocol::CONTENT_TYPE;
use sync_protocol::server;
use sync_protocol::wire::{self, SyncRequest};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{DbStore, DeviceAuthority, load_changes, load_for_premerge};

/// Stored and pushed bytes of the documents one request merges ahead of its write transaction;
/// the rest are merged inside it (bounding a request's memory).
const PREMERGE_BYTES: usize = 16 * 1024 * 1024;
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody, Kind};
use crate::schema::{grids, sync_changes, sync_documents};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(sync).service(feed);
}

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(mut payload: web::Payload, limit: usize) -> ApiResult<web::BytesMut> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("malformed_message", format!("reading the body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                Kind::PayloadTooLarge,
                "payload_too_large",
                format!(
                    "a sync request may carry at most {limit} bytes; send fewer documents at once"
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Push new local changes of any number of documents and get back receipts, what the phone lacks,
/// and a new cursor: one round trip. The body and the response are CBOR
/// (`application/vnd.gridpatrol.sync+cbor`); `sync-protocol/README.md` specifies them. A document
/// the rules refuse is answered `rejected` with a code, and the others go through. With
/// `Content-Encoding: deflate` the body is DEFLATE-compressed (inflated with the same size cap);
/// with `Accept-Encoding: deflate` so is the response.
#[utoipa::path(
    tag = "sync",
    request_body(content = Vec<u8>, content_type = "application/vnd.gridpatrol.sync+cbor", description = "A CBOR SyncRequest"),
    responses(
        (status = 200, description = "A CBOR SyncResponse", content_type = "application/vnd.gridpatrol.sync+cbor"),
        (status = 400, description = "`malformed_message`, `unsupported_version`, `too_many_documents`, `duplicate_document`, `invalid_document_id`", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`device_required`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`server_busy` (with `Retry-After`: wait that long, then sync again), `database_unavailable`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the server's disk is full, nothing was stored", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/sync")]
async fn sync(
    state: web::Data<AppState>,
    authed: Authed,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (Some(device_id), Some(actor_hex)) = (authed.device_id, authed.device_actor.clone()) else {
        return Err(ApiError::forbidden(
            "device_required",
            "sync is for enrolled devices; sign in on a phone enrolled with a code",
        ));
    };
    // Admission: a turn before the body is read, so that a burst of phones costs a queue, not
    // memory and threads for every one of them at once.
    let settings = &state.sync_settings;
    let _turn = match tokio::time::timeout(settings.admission_wait, settings.admission.acquire())
        .await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            state.metrics.sync_busy.inc();
            return Err(ApiError::new(
                Kind::Busy {
                    retry_after_secs: settings.retry_after_secs,
                },
                "server_busy",
                "the server is busy with other phones' syncs; nothing was stored: try again after Retry-After seconds",
            ));
        }
    };
    crate::faults::point("sync.admitted")?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with(CONTENT_TYPE) {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            format!("send the request as {CONTENT_TYPE}"),
        ));
    }
    let limit = state.sync_settings.max_request_bytes;
    let mut body = read_limited(payload, limit).await?.to_vec();
    let header_has = |name: header::HeaderName, value: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(value))
            })
    };
    if header_has(header::CONTENT_ENCODING, "deflate") {
        // Inflated with the same cap as a plain body: a DEFLATE bomb stops at the limit.
        body = wire::inflate(&body, limit).ok_or_else(|| {
            ApiError::new(
                Kind::PayloadTooLarge,
                "payload_too_large",
                format!("the request inflates to more than {limit} bytes, or is not DEFLATE"),
            )
        })?;
    } else if req.headers().contains_key(header::CONTENT_ENCODING) {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            "Content-Encoding may be deflate, or absent",
        ));
    }
    let compress_response = header_has(header::ACCEPT_ENCODING, "deflate");
    let request: SyncRequest =
        wire::decode(&body).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let limits = state.sync_settings.limits;
    server::check_request(&request, &limits)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;

    let index = state.index.current();
    let roles = authed.roles.clone();
    let user_id = authed.user_id;
    let span = tracing::info_span!("sync", user_id, device_id, docs = request.docs.len());
    let _guard = span.enter();
    // First, outside any write transaction: the documents are loaded, merged and checked, so
    // that requests do this costly part in parallel. The write transaction then locks each
    // document and uses the merge if nothing was stored for it meanwhile (merging again if so).
    let (request, authority, premerged) =
        state
            .db
            .run(move |conn| {
                let actor = ActorId::try_from(actor_hex.as_str()).map_err(ApiError::internal)?;
                let authority = DeviceAuthority::new(user_id, &roles, device_id, actor, index);
                let mut stored = load_for_premerge(conn, &request, PREMERGE_BYTES)?;
                let premerged =
                    server::premerge(&request, &authority, &limits, PREMERGE_BYTES, |id| {
                        match stored.remove(id) {
                            Some(Some(loaded)) => Ok(loaded),
                            Some(None) => load_changes(conn, id),
                            None => Ok((Vec::new(), 0)),
                        }
                    })?;
                Ok::<_, ApiError>((request, authority, premerged))
            })
            .await?;
    crate::faults::point("sync.premerged")?;
    let (request, authority, mut handled, newest) = state
        .db
        .write(move |conn| {
            let mut store = DbStore::new(conn, &authority);
            let handled = server::handle(&request, &authority, &mut store, &limits, premerged)?;
            crate::faults::point("sync.write.before_append")?;
            store.append()?;
            let newest = store.newest()?;
            crate::faults::point("sync.write.before_commit")?;
            Ok::<_, ApiError>((request, authority, handled, newest))
        })
        .await?;
    crate::faults::point("sync.committed")?;
    // Committed: the compliance worker judges the patrols that changed, from their views as
    // merged here when nothing changed them since.
    state.fresh.keep(handled.take_views());
    state.wake_judging.notify_one();
    // Now what the phone lacks of other documents, outside the write lock (of the pushed ones,
    // the merge found it).
    let response = state
        .db
        .run(move |conn| {
            let pushed: Vec<String> = request.docs.iter().map(|d| d.id.clone()).collect();
            let page =
                DbStore::new(conn, &authority).feed_after(&request.cursor, newest, &pushed)?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            Ok::<_, ApiError>(handled.respond(page, now_ms))
        })
        .await?;
    for result in &response.results {
        if let Some(error) = &result.error {
            tracing::info!(doc = %result.id, code = %error.code, "document not merged");
        }
    }
    crate::faults::point("sync.before_response")?;
    let encoded = wire::encode(&response);
    let mut reply = HttpResponse::Ok();
    reply.content_type(CONTENT_TYPE);
    if compress_response {
        reply.insert_header((header::CONTENT_ENCODING, "deflate"));
        return Ok(reply.body(wire::deflate(&encoded)));
    }
    Ok(reply.body(encoded))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Return events after this cursor (0 for the beginning).
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    /// At most this many events (default 200, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Changes a device stored to one patrol or problem in one sync (an entry of the change log).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedEvent {
    /// The cursor of this event.
    pub seq: i64,
    pub doc_id: String,
    /// `patrol` or `problem`.
    pub kind: String,
    pub grid_id: i64,
    pub grid_code: String,
    pub inspector_id: i64,
    /// The user whose device sent the changes.
    pub author_id: i64,
    /// How many changes the sync stored.
    pub changes: i32,
    /// When the server stored them (UTC): the trusted time.
    #[serde(with = "crate::wire::utc")]
    pub received_at: NaiveDateTime,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Feed {
    pub events: Vec<FeedEvent>,
    /// Pass as `after` for the next page.
    pub next: i64,
}

/// The changes feed: every sync that stored changes to a patrol or problem in the caller's part of
/// the grid tree, oldest first, for supervisors' screens and integrations.
#[utoipa::path(
    tag = "sync",
    params(FeedQuery),
    responses((status = 200, body = Feed), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/feed")]
async fn feed(
    state: web::Data<AppState>,
    authed: Authed,
    query: web::Query<FeedQuery>,
) -> ApiResult<web::Json<Feed>> {
    let FeedQuery { after, limit } = query.into_inner();
    let limit = limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) || after < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit is 1..1000 and after is ≥ 0",
        ));
    }
    let feed = state
        .db
        .run(move |conn| {
            let mut q = sync_changes::table
                .inner_join(sync_documents::table.inner_join(grids::table))
                .filter(sync_changes::seq.gt(after))
                .select((
                    sync_changes::seq,
                    sync_changes::doc_id,
                    sync_documents::kind,
                    sync_documents::grid_id,
                    grids::code,
                    sync_documents::inspector_id,
                    sync_changes::user_id,
                    sync_changes::change_count,
                    sync_changes::received_at,
                ))
                .order(sync_changes::seq.asc())
                .limit(limit)
                .into_boxed();
            if !authed.is_superuser {
                let mut visible: Box<
                    dyn BoxableExpression<_, _, SqlType = diesel::sql_types::Bool>,
                > = Box::new(sync_documents::inspector_id.eq(authed.user_id));
                for root in authed.visible_roots() {
                    visible = Box::new(visible.or(grids::path.like(format!("{root}%"))));
                }
                q = q.filter(visible);
            }
            type Row = (
                i64,
                String,
                String,
                i64,
                String,
                i64,
                i64,
                i32,
                NaiveDateTime,
            );
            let rows: Vec<Row> = q.load(conn)?;
            let next = rows.last().map(|r| r.0).unwrap_or(after);
            Ok::<_, ApiError>(Feed {
                events: rows
                    .into_iter()
                    .map(|r| FeedEvent {
                        seq: r.0,
                        doc_id: r.1,
                        kind: r.2,
                        grid_id: r.3,
                        grid_code: r.4,
                        inspector_id: r.5,
                        author_id: r.6,
                        changes: r.7,
                        received_at: r.8,
                    })
                    .collect(),
                next,
            })
        })
        .await?;
    Ok(web::Json(feed))
}
