//! Building and launching the HTTP application. Routes are registered once, in [`routes`]; the
//! served app and `openapi.yaml` both come from it.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, from_fn};
use actix_web::{
    App, FromRequest, HttpRequest, HttpResponse, HttpServer, get, http::StatusCode, web,
};
use tracing_actix_web::{RequestId, TracingLogger};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::auth::Authed;
use crate::auth::tokens::{Keys, TokenSettings};
use crate::config::{Config, ServeConfig};
use crate::db::{Backend, Db};
use crate::error::{ApiError, ErrorBody, Kind, StartupError};
use crate::grids::SharedIndex;
use crate::metrics::Metrics;
use crate::policy::Policies;

pub use actix_web::web::Json;

impl AppState {
    /// Rebuilds the grid index when the grids table changed (here or in another process).
    pub async fn refresh_index(&self) -> Result<bool, ApiError> {
        let index = self.index.clone();
        self.db
            .run(move |conn| index.refresh(conn).map_err(ApiError::internal))
            .await
    }
}

/// Everything a handler may need, shared by all workers.
pub struct AppState {
    pub db: Db,
    pub index: SharedIndex,
    pub keys: Keys,
    pub token_settings: TokenSettings,
    pub policies: Policies,
    pub timezone: chrono_tz::Tz,
    pub metrics: Metrics,
    pub openapi: utoipa::openapi::OpenApi,
    pub sync_settings: SyncSettings,
    pub photos: crate::photos::Photos,
    /// Wakes the compliance worker when a patrol changes.
    pub wake_judging: tokio::sync::Notify,
    /// Patrols as syncs left them, for the compliance worker.
    pub fresh: crate::compliance::judging::FreshViews,
    /// What `/readyz` watches.
    pub readiness: Readiness,
    /// The bearer token of a metrics scraper (`GRIDPATROL_METRICS_TOKEN`).
    pub metrics_token: Option<String>,
    /// Reverse proxies whose `X-Forwarded-Proto` is believed (`GRIDPATROL_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Caps on one GeoJSON import.
    pub import_limits: crate::grids::import::Limits,
    /// Sign-in limits and the password-check semaphore.
    pub sign_in: crate::auth::throttle::SignInGuard,
}

/// What `/readyz` checks besides the database and the photo store: free space on the disks the
/// server writes to.
pub struct Readiness {
    /// Directories whose file systems must keep `min_free_bytes` free: the SQLite file's, the
    /// local photo store's.
    pub watched: Vec<std::path::PathBuf>,
    pub min_free_bytes: u64,
}

/// Caps on sync requests.
pub struct SyncSettings {
    pub max_request_bytes: usize,
    pub limits: sync_protocol::Limits,
    /// Admission control: at most this many syncs read, merge and store at once in this
    /// process; the rest wait up to `admission_wait` for a turn, then get `503 server_busy`
    /// with `Retry-After` (which the SDK honours). Bounds memory and threads under a burst.
    pub admission: tokio::sync::Semaphore,
    pub admission_wait: Duration,
    /// What `Retry-After` says to a phone turned away, seconds.
    pub retry_after_secs: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GridPatrol API",
        description = "Offline-first eco-environment grid supervision (生态环境监管网格化管理): grids, \
                       people, devices, sign-in. Errors are `{\"error\": \"<stable_code>\", \"message\": \"…\"}`; \
                       see docs/API_ERRORS.md.",
        license(name = "MIT OR Apache-2.0"),
        version = "0.1.0"
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign-in, device enrollment, tokens"),
        (name = "grids", description = "The grid tree (网格) and locating points in it"),
        (name = "people", description = "People (人员), their roles in grids, devices, staffing"),
        (name = "compliance", description = "Patrol verdicts: counted or not, with reasons and fraud signals"),
        (name = "photos", description = "Resumable photo uploads (tus 1.0), photos, thumbnails and previews"),
        (name = "sync", description = "Phones push and pull Automerge documents; the changes feed"),
        (name = "ops", description = "Health, metrics, this specification"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// When `req` came from a reverse proxy listed in `GRIDPATROL_TRUSTED_PROXIES`: that list (what
/// the proxy forwards in `X-Forwarded-*` may then be believed). `None` for anyone else, whose
/// forwarding headers are only their own word.
pub fn from_trusted_proxy(req: &HttpRequest) -> Option<&[std::net::IpAddr]> {
    let state = req.app_data::<web::Data<AppState>>()?;
    let peer = req.peer_addr()?.ip();
    state
        .trusted_proxies
        .contains(&peer)
        .then_some(state.trusted_proxies.as_slice())
}

/// Registers every route; the one place that knows them all.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(healthz)
        .service(readyz)
        .service(metrics)
        .service(openapi_json)
        .configure(crate::auth::api::configure)
        .configure(crate::grids::api::configure)
        .configure(crate::people::api::configure)
        .configure(crate::audit::configure)
        .configure(crate::sync::api::configure)
        .configure(crate::photos::api::configure)
        .configure(crate::compliance::api::configure);
}

/// The OpenAPI document of [`routes`], as served at `/openapi.json` and written to `openapi.yaml`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(routes)
        .split_for_parts();
    document_generic_errors(&mut api);
    inspectors_only_have_employment(&mut api);
    api
}

/// `employment` (专职/兼职) goes with the inspector role only (`grant_role` answers 422
/// `invalid_employment` otherwise): said in the schema of a role grant, which the derive cannot
/// express.
fn inspectors_only_have_employment(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Schema, Type};
    let Some(components) = api.components.as_mut() else {
        return;
    };
    let Some(grant) = components.schemas.remove("RoleGrantRequest") else {
        return;
    };
    let rule = AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .property(
                    "role",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(["inspector"])),
                )
                .required("role"),
        )
        .item(
            ObjectBuilder::new()
                .property("employment", ObjectBuilder::new().schema_type(Type::Null)),
        )
        .description(Some("`employment` is for inspectors only"));
    let schema = AllOfBuilder::new().item(grant).item(rule).build();
    components.schemas.insert(
        "RoleGrantRequest".to_string(),
        RefOr::T(Schema::AllOf(schema)),
    );
}

/// The errors every operation of a kind can answer, whatever its handler does: 401 where a
/// bearer token is required (the `Authed` extractor), 400 `invalid_query` where there are query
/// parameters, 404 `not_found` where a path parameter does not parse, and 400 `malformed_json`,
/// 413, 415 and 422 `invalid_request` where the body is JSON (`json_error`, `query_error`,
/// `path_error` below). Added to the document after the routes are merged (modifiers of
/// [`ApiDoc`] run before that); a status an operation already documents keeps its own
/// description.
fn document_generic_errors(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterIn};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

    fn has_param(op: &Operation, place: ParameterIn) -> bool {
        op.parameters
            .iter()
            .flatten()
            .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
    }
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let bearer = op.security.iter().flatten().any(|requirement| {
                serde_json::to_value(requirement).is_ok_and(|v| v != serde_json::json!({}))
            });
            let json_body = matches!(&op.request_body, Some(RefOr::T(body)) if body.content.contains_key("application/json"));
            let mut generic: Vec<(&str, &str)> = Vec::new();
            if bearer {
                generic.push((
                    "401",
                    "`missing_token`, `invalid_token`, `token_expired`, `session_revoked`, \
                     `device_revoked`, `user_disabled`: sign in (again)",
                ));
            }
            match (has_param(op, ParameterIn::Query), json_body) {
                (true, true) => generic.push(("400", "`invalid_query`, `malformed_json`")),
                (true, false) => generic.push(("400", "`invalid_query`")),
                (false, true) => generic.push(("400", "`malformed_json`")),
                (false, false) => {}
            }
            if has_param(op, ParameterIn::Path) {
                generic.push(("404", "`not_found`: the path names no such resource"));
            }
            if json_body {
                generic.push(("413", "`payload_too_large`"));
                generic.push((
                    "415",
                    "`unsupported_media_type`: send `Content-Type: application/json`",
                ));
                generic.push((
                    "422",
                    "`invalid_request`: the JSON does not fit the request's schema",
                ));
            }
            for (status, description) in generic {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
    }
}

/// Opens the database, migrates (SQLite always; PostgreSQL only when asked, since many processes
/// may share it), loads keys, rules and the grid index.
pub async fn build_state(
    config: &Config,
    serve: &ServeConfig,
    migrate: bool,
) -> Result<Arc<AppState>, StartupError> {
    let timezone = config.timezone()?;
    let mut db = Db::open(&config.database_url(), config.db_pool_size)?;
    if let Some(jobs) = serve.db_jobs {
        db = db.with_jobs(jobs);
    }
    if migrate || db.backend() == Backend::Sqlite {
        let applied = db.migrate()?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
    } else if db.has_pending_migrations()? {
        return Err(StartupError::Migration(
            "the PostgreSQL database has pending migrations: run `gridpatrol migrate` first".into(),
        ));
    }
    let secret = serve.jwt_secret.clone();
    let keys = db.run_blocking(|conn| Keys::load(conn, secret.as_deref()))?;
    let photos = serve.photos(&config.data_dir)?;
    photos.check().await?;
    let index = SharedIndex::default();
    db.run_blocking(|conn| {
        index
            .refresh(conn)
            .map_err(|e| StartupError::Database(e.to_string()))
    })?;
    // The SQLite file's directory (wherever the URL puts it); PostgreSQL watches its own disk.
    let sqlite_dir = config.database_url().strip_prefix("sqlite://").map(|path| {
        std::path::Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(
                || std::path::PathBuf::from("."),
                std::path::Path::to_path_buf,
            )
    });
    Ok(Arc::new(AppState {
        db,
        index,
        keys,
        token_settings: TokenSettings {
            access_ttl_secs: serve.access_token_ttl_secs,
            refresh_days: serve.refresh_token_days,
        },
        policies: Policies::load(&config.data_dir.join("policies"))
            .map_err(|e| StartupError::Config(e.to_string()))?,
        timezone,
        metrics: Metrics::default(),
        openapi: openapi(),
        sync_settings: SyncSettings {
            max_request_bytes: serve.max_sync_bytes,
            limits: sync_protocol::Limits::default(),
            admission: tokio::sync::Semaphore::new(serve.max_concurrent_syncs()),
            admission_wait: Duration::from_millis(serve.sync_queue_ms),
            retry_after_secs: 3,
        },
        readiness: Readiness {
            watched: [sqlite_dir, photos.local_dir.clone()]
                .into_iter()
                .flatten()
                .collect(),
            min_free_bytes: serve.min_free_mb * 1024 * 1024,
        },
        photos,
        import_limits: serve.import_limits(),
        sign_in: crate::auth::throttle::SignInGuard::new(serve.sign_in_settings()),
        wake_judging: tokio::sync::Notify::new(),
        fresh: Default::default(),
        metrics_token: serve.metrics_token.clone().filter(|t| !t.is_empty()),
        trusted_proxies: serve.trusted_proxies.clone(),
    }))
}

/// Starts serving on `listener` (bind port 0 in tests). The returned server runs until stopped
/// through its handle or until the process gets SIGINT/SIGTERM.
pub fn launch(
    state: Arc<AppState>,
    listener: TcpListener,
    serve: &ServeConfig,
) -> std::io::Result<Server> {
    let data = web::Data::from(state.clone());
    let json_limit = serve.max_json_bytes;
    let geojson_limit = serve.max_geojson_bytes;
    let deadline = crate::body_timeout::BodyDeadline {
        grace: Duration::from_secs(serve.body_timeout_secs),
        min_rate: serve.body_min_bytes_per_sec,
    };
    let mut server = HttpServer::new(move || {
        let (app, _) = App::new()
            .into_utoipa_app()
            .app_data(data.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(json_limit)
                    .error_handler(|e, _| json_error(e).into()),
            )
            .app_data(web::PayloadConfig::new(geojson_limit))
            .app_data(deadline)
            .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
            .app_data(web::PathConfig::default().error_handler(|e, _| path_error(e).into()))
            .configure(routes)
            .default_service(web::to(not_found))
            .split_for_parts();
        // The console's pages are not part of the API (nor of its OpenAPI document).
        app.configure(crate::console::configure)
            .wrap(from_fn(undeclared_method))
            .wrap(from_fn(crate::body_timeout::enforce))
            .wrap(ErrorHandlers::new().default_handler(json_for_bare_errors))
            .wrap(from_fn(crate::metrics::record))
            // gzip or deflate as the client's Accept-Encoding asks (JSON, CSV, pages, the
            // feed): a list of a township's people is a tenth of its size on a 2G link. Images
            // are left alone (already compressed), and so are answers that carry their own
            // Content-Encoding (the sync's DEFLATE, the console's event stream).
            .wrap(actix_web::middleware::Compress::default())
            .wrap(from_fn(request_id_header))
            // Every answer: no MIME sniffing, no referrer leaving the site, no framing, and not
            // kept in any cache unless the answer says otherwise (tokens, exports and people's
            // data must not linger in a shared browser's or proxy's cache; photos, content
            // addressed, and the console's static assets set their own).
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .wrap(TracingLogger::default())
    })
    .listen(listener)?
    .shutdown_timeout(10)
    // Phones on 2G reuse a connection after long pauses; nginx's default keep-alive.
    .keep_alive(Duration::from_secs(75));
    if let Some(workers) = serve.workers {
        server = server.workers(workers);
    }
    let server = server.run();
    crate::photos::spawn_workers(state.clone());
    crate::compliance::judging::spawn_worker(state.clone());
    // Other server processes on the same database may import grids, and the operator may rotate
    // the signing keys: notice both.
    let handle = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let result = handle.refresh_index().await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "grid index refresh failed");
            }
            // Signing keys added or retired by `rotate-signing-key` (in any process).
            let keys = handle.clone();
            let reloaded = handle
                .db
                .run(move |conn| {
                    keys.keys
                        .reload(conn)
                        .map_err(|e| ApiError::internal(e.to_string()))
                })
                .await;
            if let Err(e) = reloaded {
                tracing::warn!(error = %e.message, "signing key reload failed");
            }
        }
    });
    Ok(server)
}

/// Echoes the request id of the request's log span as `x-request-id`, so a user's report of a
/// failure can be matched with the server's logs.
async fn request_id_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req.extensions().get::<RequestId>().copied();
    let mut res = next.call(req).await?;
    if let Some(value) = id.and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(res)
}

fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            Kind::PayloadTooLarge,
            "payload_too_large",
            format!("the request body is larger than the {limit} bytes accepted here"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            Kind::UnsupportedMediaType,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::unprocessable("invalid_request", format!("the request does not fit: {e}"))
        }
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(
            "malformed_json",
            format!("the request body is not valid JSON: {e}"),
        ),
        other => ApiError::bad_request(
            "malformed_json",
            format!("could not read the request body: {other}"),
        ),
    }
}

fn query_error(error: QueryPayloadError) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("the query string does not fit: {error}"),
    )
}

fn path_error(error: PathError) -> ApiError {
    ApiError::not_found("not_found", format!("no such resource: {error}"))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// A path of the API asked with a method its OpenAPI document does not declare there is 405
/// with `Allow` and our error body, before routing: otherwise `GET /v1/photos/uploads` would
/// reach `GET /v1/photos/{sha256}` and `TRACE /healthz` no route (404).
async fn undeclared_method(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(response) = method_not_allowed(req.request()) {
        let (req, _) = req.into_parts();
        return Ok(ServiceResponse::new(req, response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// 405 with `Allow` when `req`'s path is one of the document's and its method is not declared
/// there; `None` otherwise (other paths, such as the console's, are left to routing).
fn method_not_allowed(req: &HttpRequest) -> Option<HttpResponse> {
    let state = req.app_data::<web::Data<AppState>>()?;
    let allowed = allowed_methods(&state.openapi, req.path())?;
    if allowed.split(", ").any(|m| m == req.method().as_str()) {
        return None;
    }
    let error = ApiError::new(
        Kind::MethodNotAllowed,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}: use {allowed}",
            req.method(),
            req.path()
        ),
    );
    let mut response = actix_web::ResponseError::error_response(&error);
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    Some(response)
}

/// The methods the document declares for `path`, as an `Allow` value: of the path templates it
/// matches (`{id}` matches one non-empty segment), the one with the fewest parameters
/// (`/v1/grids/import` before `/v1/grids/{id}`). `None` when no template matches.
fn allowed_methods(api: &utoipa::openapi::OpenApi, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let is_param = |part: &str| part.starts_with('{') && part.ends_with('}');
    let (_, item) = api
        .paths
        .paths
        .iter()
        .filter(|(template, _)| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    if is_param(part) {
                        !segment.is_empty()
                    } else {
                        part == segment
                    }
                })
        })
        .min_by_key(|(template, _)| template.split('/').filter(|part| is_param(part)).count())?;
    let methods = [
        ("GET", item.get.is_some()),
        ("HEAD", item.head.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("PATCH", item.patch.is_some()),
        ("DELETE", item.delete.is_some()),
        ("OPTIONS", item.options.is_some()),
    ];
    let allowed: Vec<&str> = methods
        .iter()
        .filter(|(_, declared)| *declared)
        .map(|(method, _)| *method)
        .collect();
    (!allowed.is_empty()).then(|| allowed.join(", "))
}

/// Errors raised by actix itself (e.g. 405, payload errors of other extractors) get our body too.
fn json_for_bare_errors<B: actix_web::body::MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // The console's pages carry their own HTML error pages.
    let is_html = res
        .response()
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_json || is_html || !(res.status().is_client_error() || res.status().is_server_error()) {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is too large".to_string(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "that method is not allowed here".to_string(),
        ),
        s if s.is_server_error() => (
            "internal_error",
            "the server failed to handle this request".to_string(),
        ),
        s => (
            "bad_request",
            s.canonical_reason().unwrap_or("bad request").to_string(),
        ),
    };
    let (req, _) = res.into_parts();
    let response = HttpResponse::build(status).json(ErrorBody {
        error: code.into(),
        message,
        details: None,
    });
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` when the database answers.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Grids in the in-memory index.
    pub grids: usize,
}

/// Liveness: 200 while the process runs and its database answers, 503 otherwise. Readiness for
/// a load balancer (a full disk, an unreachable photo store) is `/readyz`.
#[utoipa::path(tag = "ops", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
#[get("/healthz")]
async fn healthz(state: web::Data<AppState>) -> Result<web::Json<Health>, ApiError> {
    use diesel::RunQueryDsl;
    state
        .db
        .run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn).map_err(|e| {
                tracing::error!(error = %e, "health check failed");
                ApiError::new(
                    Kind::Unavailable,
                    "database_unavailable",
                    "the database does not answer",
                )
            })
        })
        .await?;
    Ok(web::Json(Health {
        status: "ok".into(),
        database: match state.db.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
        .into(),
        grids: state.index.current().len(),
    }))
}

/// Readiness: one check each.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Ready {
    /// All checks passed: send traffic.
    pub ready: bool,
    /// The database answers and takes a write transaction.
    pub database: bool,
    /// The photo store answers.
    pub photo_store: bool,
    /// Every watched disk has at least `min_free_bytes` free.
    pub disk: bool,
    /// Free bytes of each watched directory's file system.
    pub free_bytes: Vec<FreeSpace>,
    pub min_free_bytes: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FreeSpace {
    pub path: String,
    pub free_bytes: u64,
}

/// Free bytes (for unprivileged writers) of the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = rustix::fs::statvfs(path).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// Readiness, for a load balancer: 200 when the database takes a write transaction, the photo
/// store answers and the watched disks have the configured free space (`GRIDPATROL_MIN_FREE_MB`);
/// 503 with the failing checks otherwise. Liveness is `/healthz`, which stays 200 while the
/// process runs and its database answers: a full disk is no reason to restart it.
#[utoipa::path(tag = "ops", responses((status = 200, body = Ready), (status = 503, body = Ready)))]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = state.db.write(|_conn| Ok::<_, ApiError>(())).await.is_ok();
    let photo_store = state.photos.check().await.is_ok();
    let free: Vec<FreeSpace> = state
        .readiness
        .watched
        .iter()
        .map(|path| FreeSpace {
            path: path.display().to_string(),
            free_bytes: free_bytes(path).unwrap_or(u64::MAX),
        })
        .collect();
    let min = state.readiness.min_free_bytes;
    let disk = free.iter().all(|f| f.free_bytes >= min);
    let ready = Ready {
        ready: database && photo_store && disk,
        database,
        photo_store,
        disk,
        free_bytes: free,
        min_free_bytes: min,
    };
    if ready.ready {
        HttpResponse::Ok().json(ready)
    } else {
        tracing::warn!(?ready, "not ready");
        HttpResponse::ServiceUnavailable().json(ready)
    }
}

/// Prometheus metrics in the OpenMetrics 1.0 text format, for a scraper that sends the
/// configured `GRIDPATROL_METRICS_TOKEN` as its bearer token, or for a signed-in operator. They
/// describe the whole installation (counts, timings), so a county admin does not read them.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus metrics in the OpenMetrics 1.0 text format", content_type = "application/openmetrics-text"),
        (status = 401, description = "`missing_token`, `invalid_token`: neither the scrape token nor a valid access token", body = ErrorBody),
        (status = 403, description = "`role_required`: only the operator reads metrics", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/metrics")]
async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let scraper = matches!((bearer, &state.metrics_token), (Some(sent), Some(token)) if crate::console::session::same(sent, token));
    if !scraper {
        let authed = Authed::extract(&req).await?;
        if !authed.is_superuser {
            return Err(ApiError::forbidden(
                "role_required",
                "metrics are for the operator and the metrics scraper",
            ));
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(
            state
                .metrics
                .render(state.index.current().len(), state.fresh.owed()),
        ))
}

/// This API's OpenAPI 3.1 document (equal to `openapi.yaml` in the repository).
#[utoipa::path(tag = "ops", responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
#[get("/openapi.json")]
async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.openapi)
}
