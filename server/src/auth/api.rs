//! `/v1/auth/*`, `/v1/devices/enroll` and `/v1/me`.

use actix_web::{HttpResponse, get, post, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::credentials::{self, normalize_code};
use super::tokens::{self, Refreshed, TokenPair, sha256_hex};
use super::{Authed, Role};
use crate::app::{AppState, Json};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{devices, enrollment_codes, grids, users};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(login)
        .service(refresh)
        .service(logout)
        .service(enroll)
        .service(me);
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// Sign in with a password (supervisors and admins).
///
/// Limits (docs/SECURITY.md): 20 failed sign-ins a minute per client address; 5 failures to one
/// account from one address within 15 minutes lock that address out of the account for the rest
/// of the window (other addresses, the owner's among them, are not affected); past 50 failures to
/// the account from all addresses, only addresses the owner signed in from in the last 30 days may
/// try. Each refusal is 429 `too_many_attempts` with `Retry-After` and `details.scope`
/// (`client`, `account`, `account_wide`).
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`server_busy`: too many password checks at once (with `Retry-After`)", body = ErrorBody),
    )
)]
#[post("/v1/auth/login")]
async fn login(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    body: Json<LoginRequest>,
) -> ApiResult<web::Json<TokenPair>> {
    let LoginRequest { username, password } = body.into_inner();
    let st = state.clone();
    let signed_in = credentials::sign_in(
        &state,
        super::throttle::Client::of(&req),
        username.trim().to_string(),
        password,
        move |conn, user_id| {
            let pair = tokens::start_session(conn, &st.keys, &st.token_settings, user_id, None)?;
            crate::faults::point("auth.login.before_commit")?;
            Ok(pair)
        },
    )
    .await?;
    signed_in.map(web::Json).ok_or_else(|| {
        ApiError::unauthorized("invalid_credentials", "the user name or password is wrong")
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchange a refresh token for a new pair (the old refresh token is spent).
///
/// Presenting a spent refresh token again within 60 s is taken for a retry after a lost response
/// and answered with a fresh pair; later, it revokes the whole session (`refresh_token_reused`).
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenPair),
        (status = 401, description = "`invalid_refresh_token`, `refresh_token_reused`, `refresh_token_expired`, `session_revoked`, `device_revoked`", body = ErrorBody),
    )
)]
#[post("/v1/auth/refresh")]
async fn refresh(
    state: web::Data<AppState>,
    body: Json<RefreshRequest>,
) -> ApiResult<web::Json<TokenPair>> {
    let presented = body.into_inner().refresh_token;
    let st = state.clone();
    let outcome = state
        .db
        .write(move |conn| tokens::rotate(conn, &st.keys, &st.token_settings, &presented))
        .await?;
    match outcome {
        Refreshed::Ok(pair) => Ok(web::Json(pair)),
        Refreshed::Reused => Err(ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; the session has been revoked for safety",
        )),
    }
}

/// End the current session: its refresh token stops working at once.
#[utoipa::path(
    tag = "auth",
    responses((status = 204, description = "Signed out"), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/v1/auth/logout")]
async fn logout(state: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    state
        .db
        .write(move |conn| {
            tokens::revoke_session(conn, authed.session_id, "signed out").map_err(ApiError::from)
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time code an admin printed (`gridpatrol enroll`) or the console showed; dashes and
    /// case do not matter.
    pub code: String,
    /// A name for the phone, e.g. "红米 Note 12 张三": 1 to 100 characters, not blank.
    #[schema(
        max_length = 100,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub device_name: String,
    /// The phone's Automerge actor id, hex (4 to 64 bytes). Every change this phone syncs must carry it.
    #[schema(pattern = r"^([0-9a-fA-F]{2}){4,64}$")]
    pub actor_id: String,
}

/// Enroll an inspector's phone with a one-time code: binds the phone's Automerge actor id to a
/// new device of the code's user and returns the device's first tokens.
#[utoipa::path(
    tag = "auth",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "Enrolled", body = TokenPair),
        (status = 400, description = "`enrollment_code_invalid`, `enrollment_code_used`, `enrollment_code_expired`, `invalid_actor_id`, `invalid_device_name`", body = ErrorBody),
        (status = 409, description = "`actor_already_enrolled`", body = ErrorBody),
    )
)]
#[post("/v1/devices/enroll")]
async fn enroll(
    state: web::Data<AppState>,
    body: Json<EnrollRequest>,
) -> ApiResult<web::Json<TokenPair>> {
    let EnrollRequest {
        code,
        device_name,
        actor_id,
    } = body.into_inner();
    let actor_id = actor_id.trim().to_ascii_lowercase();
    if actor_id.len() < 8 || actor_id.len() > 128 || hex::decode(&actor_id).is_err() {
        return Err(ApiError::bad_request(
            "invalid_actor_id",
            "actor_id must be the Automerge actor id in hex, 4 to 64 bytes",
        ));
    }
    let device_name = device_name.trim().to_string();
    if device_name.is_empty() || device_name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "invalid_device_name",
            "device_name must be 1 to 100 characters",
        ));
    }
    let code_hash = sha256_hex(&normalize_code(&code));
    let st = state.clone();
    let pair = state
        .db
        .write(move |conn| {
            type Row = (i64, i64, NaiveDateTime, Option<NaiveDateTime>);
            let row: Option<Row> = enrollment_codes::table
                .filter(enrollment_codes::code_hash.eq(&code_hash))
                .select((
                    enrollment_codes::id,
                    enrollment_codes::user_id,
                    enrollment_codes::expires_at,
                    enrollment_codes::used_at,
                ))
                .first(conn)
                .optional()?;
            let Some((code_id, user_id, expires_at, used_at)) = row else {
                return Err(ApiError::bad_request(
                    "enrollment_code_invalid",
                    "no such enrollment code; check it or ask your supervisor for a new one",
                ));
            };
            if used_at.is_some() {
                return Err(ApiError::bad_request(
                    "enrollment_code_used",
                    "this enrollment code was already used; ask your supervisor for a new one",
                ));
            }
            let now = crate::db::now();
            if expires_at < now {
                return Err(ApiError::bad_request(
                    "enrollment_code_expired",
                    "this enrollment code has expired (codes last 24 hours); ask for a new one",
                ));
            }
            let disabled: bool = users::table
                .find(user_id)
                .select(users::disabled)
                .first(conn)?;
            if disabled {
                return Err(ApiError::forbidden(
                    "user_disabled",
                    "this account is disabled",
                ));
            }
            let taken: i64 = devices::table
                .filter(devices::actor_id.eq(&actor_id))
                .count()
                .get_result(conn)?;
            if taken > 0 {
                return Err(ApiError::conflict(
                    "actor_already_enrolled",
                    "this Automerge actor id is already bound to a device; generate a new one",
                ));
            }
            let device_id: i64 = diesel::insert_into(devices::table)
                .values((
                    devices::user_id.eq(user_id),
                    devices::name.eq(&device_name),
                    devices::actor_id.eq(&actor_id),
                    devices::enrolled_at.eq(now),
                ))
                .returning(devices::id)
                .get_result(conn)?;
            diesel::update(enrollment_codes::table.find(code_id))
                .set((
                    enrollment_codes::used_at.eq(now),
                    enrollment_codes::device_id.eq(device_id),
                ))
                .execute(conn)?;
            crate::audit::record(
                conn,
                crate::audit::Event::new(crate::audit::Kind::DeviceEnrolled)
                    .on(user_id)
                    .with(serde_json::json!({"device_id": device_id, "device_name": device_name, "code_id": code_id})),
            )?;
            let pair =
                tokens::start_session(conn, &st.keys, &st.token_settings, user_id, Some(device_id))?;
            crate::faults::point("auth.enroll.before_commit")?;
            Ok(pair)
        })
        .await?;
    Ok(web::Json(pair))
}

/// A role as `/v1/me` and the people API show it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub role_id: i64,
    pub role: Role,
    pub grid_id: i64,
    pub grid_code: String,
    pub grid_name: String,
    pub grid_level: String,
    /// `full_time` or `part_time`, for inspectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub employment: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub user_id: i64,
    pub username: String,
    pub display_name: String,
    pub is_superuser: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<i64>,
    pub roles: Vec<RoleView>,
    /// The size this user's phone uploads photos at: the policy of the jurisdiction of the
    /// user's first grid (GridPatrol's defaults where none applies).
    pub photo_policy: crate::policy::PhotoPolicy,
}

pub fn role_views(conn: &mut crate::db::DbConnection, user_id: i64) -> QueryResult<Vec<RoleView>> {
    use crate::schema::grid_roles;
    type Row = (i64, String, i64, String, String, String, Option<String>);
    let rows: Vec<Row> = grid_roles::table
        .inner_join(grids::table)
        .filter(grid_roles::user_id.eq(user_id))
        .order((grids::path.asc(), grid_roles::role.asc()))
        .select((
            grid_roles::id,
            grid_roles::role,
            grids::id,
            grids::code,
            grids::name,
            grids::level,
            grid_roles::employment,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(role_id, role, grid_id, grid_code, grid_name, grid_level, employment)| {
                Some(RoleView {
                    role_id,
                    role: Role::parse(&role)?,
                    grid_id,
                    grid_code,
                    grid_name,
                    grid_level,
                    employment,
                })
            },
        )
        .collect())
}

/// Who am I: the signed-in user, device and roles.
#[utoipa::path(
    tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/me")]
async fn me(state: web::Data<AppState>, authed: Authed) -> ApiResult<web::Json<Me>> {
    let st = state.clone();
    let me = state
        .db
        .run(move |conn| {
            let (username, display_name): (String, String) = users::table
                .find(authed.user_id)
                .select((users::username, users::display_name))
                .first(conn)?;
            let roles = role_views(conn, authed.user_id)?;
            let photo_policy = roles
                .first()
                .and_then(|r| crate::compliance::judging::policy_of(&st, r.grid_id).0)
                .map(|p| p.photos)
                .unwrap_or_default();
            Ok::<_, ApiError>(Me {
                user_id: authed.user_id,
                username,
                display_name,
                is_superuser: authed.is_superuser,
                device_id: authed.device_id,
                roles,
                photo_policy,
            })
        })
        .await?;
    Ok(web::Json(me))
}
