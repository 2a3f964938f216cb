//! `/v1/users*`, `/v1/devices/{id}/revoke`, `/v1/grids/{id}/staffing`.

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::{
    Employment, NewUser, StaffingReport, check_may_grant, create_user, grant_role, grid_or_404,
    normalise_username, require_manage_user, require_may_enroll, require_see_user, staffing_report,
};
use crate::app::{AppState, Json};
use crate::audit::{self, Event, Kind as Audit};
use crate::auth::api::{RoleView, role_views};
use crate::auth::{Authed, Role, credentials, tokens};
use crate::db::now;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{devices, grid_roles, grids, sessions, users};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list_users)
        .service(create)
        .service(get_user)
        .service(add_role)
        .service(remove_role)
        .service(new_enrollment_code)
        .service(list_devices)
        .service(revoke_device)
        .service(staffing);
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub disabled: bool,
    /// Whether the user can sign in with a password (supervisors, admins).
    pub has_password: bool,
    /// The user's roles in grids the caller can see.
    pub roles: Vec<RoleView>,
}

fn user_view(conn: &mut crate::db::DbConnection, authed: &Authed, id: i64) -> ApiResult<UserView> {
    let (username, display_name, phone, disabled, hash): (
        String,
        String,
        Option<String>,
        bool,
        Option<String>,
    ) = users::table
        .find(id)
        .select((
            users::username,
            users::display_name,
            users::phone,
            users::disabled,
            users::password_hash,
        ))
        .first(conn)?;
    let visible: Vec<(i64, String)> = grid_roles::table
        .inner_join(grids::table)
        .filter(grid_roles::user_id.eq(id))
        .select((grid_roles::id, grids::path))
        .load(conn)?;
    let visible: Vec<i64> = visible
        .into_iter()
        .filter(|(_, path)| authed.can_see(path) || authed.user_id == id)
        .map(|(role_id, _)| role_id)
        .collect();
    let roles = role_views(conn, id)?
        .into_iter()
        .filter(|r| visible.contains(&r.role_id))
        .collect();
    Ok(UserView {
        id,
        username,
        display_name,
        phone,
        disabled,
        has_password: hash.is_some(),
        roles,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Only people holding roles in this grid's subtree (default: everything the caller sees).
    pub grid_id: Option<i64>,
    pub role: Option<Role>,
}

/// People holding roles in the grids the caller can see.
#[utoipa::path(
    tag = "people",
    params(UsersQuery),
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/users")]
async fn list_users(
    state: web::Data<AppState>,
    authed: Authed,
    query: web::Query<UsersQuery>,
) -> ApiResult<web::Json<Vec<UserView>>> {
    let query = query.into_inner();
    let views = state
        .db
        .run(move |conn| {
            let roots = match query.grid_id {
                Some(id) => {
                    let grid = grid_or_404(conn, id)?;
                    authed.require_see(&grid.path)?;
                    vec![grid.path]
                }
                None if authed.is_superuser => vec!["/".to_string()],
                None => authed.visible_roots(),
            };
            let mut ids: Vec<i64> = Vec::new();
            for root in roots {
                let mut q = grid_roles::table
                    .inner_join(grids::table)
                    .filter(grids::path.like(format!("{root}%")))
                    .select(grid_roles::user_id)
                    .into_boxed();
                if let Some(role) = query.role {
                    q = q.filter(grid_roles::role.eq(role.as_str()));
                }
                ids.extend(q.load::<i64>(conn)?);
            }
            ids.sort_unstable();
            ids.dedup();
            ids.into_iter()
                .map(|id| user_view(conn, &authed, id))
                .collect::<ApiResult<Vec<_>>>()
        })
        .await?;
    Ok(web::Json(views))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleGrantRequest {
    #[serde(deserialize_with = "crate::wire::integer")]
    pub grid_id: i64,
    pub role: Role,
    /// For inspectors: `full_time` (专职) or `part_time` (兼职).
    pub employment: Option<Employment>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 3 to 64 letters, digits, or `_ - . @`.
    #[schema(pattern = r"^[A-Za-z0-9_.@-]{3,64}$")]
    pub username: String,
    /// 1 to 100 characters, not blank.
    #[schema(
        max_length = 100,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub display_name: String,
    pub phone: Option<String>,
    /// Only for people who sign in on the web (supervisors, admins); inspectors enroll phones.
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// At least one role, each in a grid the caller manages.
    #[schema(min_items = 1)]
    pub roles: Vec<RoleGrantRequest>,
}

/// Create a person with their roles, in grids the caller manages.
#[utoipa::path(
    tag = "people",
    request_body = CreateUserRequest,
    responses(
        (status = 201, body = UserView),
        (status = 403, description = "`outside_subtree`, `role_required`", body = ErrorBody),
        (status = 400, description = "`weak_password`, `malformed_json`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`: a role's grid", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
        (status = 422, description = "`invalid_username`, `invalid_display_name`, `roles_required`, `invalid_employment`, `invalid_request`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/users")]
async fn create(
    state: web::Data<AppState>,
    authed: Authed,
    body: Json<CreateUserRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    if body.roles.is_empty() {
        return Err(ApiError::unprocessable(
            "roles_required",
            "a person needs at least one role in a grid",
        ));
    }
    // Hash outside the write transaction: argon2 is slow on purpose.
    let hashed = match &body.password {
        Some(p) => Some(
            web::block({
                let p = p.clone();
                move || credentials::hash_password(&p)
            })
            .await
            .map_err(ApiError::internal)??,
        ),
        None => None,
    };
    let view = state
        .db
        .write(move |conn| {
            for grant in &body.roles {
                let grid = grid_or_404(conn, grant.grid_id)?;
                check_may_grant(&authed, &grid, grant.role)?;
            }
            let id = create_user(
                conn,
                &NewUser {
                    username: &body.username,
                    display_name: &body.display_name,
                    phone: body.phone.as_deref(),
                    password: None,
                    is_superuser: false,
                },
            )?;
            if let Some(hash) = hashed {
                diesel::update(users::table.find(id))
                    .set(users::password_hash.eq(hash))
                    .execute(conn)?;
            }
            audit::record(
                conn,
                Event::new(Audit::UserCreated)
                    .by(authed.user_id)
                    .on(id)
                    .with(serde_json::json!({"username": normalise_username(&body.username)?, "password": body.password.is_some()})),
            )?;
            for grant in &body.roles {
                grant_role(conn, id, grant.grid_id, grant.role, grant.employment, Some(authed.user_id))?;
            }
            user_view(conn, &authed, id)
        })
        .await?;
    Ok(HttpResponse::Created().json(view))
}

/// One person, with the roles the caller can see.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/users/{id}")]
async fn get_user(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
) -> ApiResult<web::Json<UserView>> {
    let id = id.into_inner();
    let view = state
        .db
        .run(move |conn| {
            require_see_user(conn, &authed, id)?;
            user_view(conn, &authed, id)
        })
        .await?;
    Ok(web::Json(view))
}

/// Give a person another role in a grid the caller manages.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path)),
    request_body = RoleGrantRequest,
    responses(
        (status = 201, body = UserView),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`role_exists`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/users/{id}/roles")]
async fn add_role(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
    body: Json<RoleGrantRequest>,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let grant = body.into_inner();
    let view = state
        .db
        .write(move |conn| {
            // Power over the person as they stand, and over the new role.
            require_manage_user(conn, &authed, id)?;
            let grid = grid_or_404(conn, grant.grid_id)?;
            check_may_grant(&authed, &grid, grant.role)?;
            grant_role(
                conn,
                id,
                grant.grid_id,
                grant.role,
                grant.employment,
                Some(authed.user_id),
            )?;
            user_view(conn, &authed, id)
        })
        .await?;
    Ok(HttpResponse::Created().json(view))
}

/// Take a role away.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path), ("role_id" = i64, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, description = "`role_not_found`", body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/v1/users/{id}/roles/{role_id}")]
async fn remove_role(
    state: web::Data<AppState>,
    authed: Authed,
    path: web::Path<(i64, i64)>,
) -> ApiResult<HttpResponse> {
    let (user_id, role_id) = path.into_inner();
    state
        .db
        .write(move |conn| {
            let row: Option<(i64, String)> = grid_roles::table
                .filter(grid_roles::id.eq(role_id))
                .filter(grid_roles::user_id.eq(user_id))
                .select((grid_roles::grid_id, grid_roles::role))
                .first(conn)
                .optional()?;
            let (grid_id, role) = row.ok_or_else(|| {
                ApiError::not_found("role_not_found", "no such role of that user")
            })?;
            require_manage_user(conn, &authed, user_id)?;
            let grid = grid_or_404(conn, grid_id)?;
            check_may_grant(&authed, &grid, Role::parse(&role).unwrap_or(Role::Admin))?;
            diesel::delete(grid_roles::table.find(role_id)).execute(conn)?;
            audit::record(
                conn,
                Event::new(Audit::RoleRevoked)
                    .by(authed.user_id)
                    .on(user_id)
                    .in_grid(grid_id)
                    .with(serde_json::json!({"role": role})),
            )?;
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentCode {
    pub user_id: i64,
    /// Shown once; type it into the app or show it as a QR code. Valid 24 h, for one phone.
    pub code: String,
    #[serde(with = "crate::wire::utc")]
    pub expires_at: NaiveDateTime,
}

/// A one-time code to enroll a phone for this person.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path)),
    responses((status = 201, body = EnrollmentCode), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/v1/users/{id}/enrollment-codes")]
async fn new_enrollment_code(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let code = state
        .db
        .write(move |conn| {
            require_may_enroll(conn, &authed, id)?;
            let (code, expires_at) =
                credentials::new_enrollment_code(conn, id, Some(authed.user_id))?;
            audit::record(
                conn,
                Event::new(Audit::EnrollmentCodeCreated)
                    .by(authed.user_id)
                    .on(id)
                    .with(serde_json::json!({"expires_at": expires_at.and_utc()})),
            )?;
            crate::faults::point("people.code.before_commit")?;
            Ok::<_, ApiError>(EnrollmentCode {
                user_id: id,
                code,
                expires_at,
            })
        })
        .await?;
    Ok(HttpResponse::Created().json(code))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    /// The Automerge actor id bound to this device (hex).
    pub actor_id: String,
    #[serde(with = "crate::wire::utc")]
    pub enrolled_at: NaiveDateTime,
    #[serde(default, with = "crate::wire::utc::option")]
    pub revoked_at: Option<NaiveDateTime>,
    pub revoked_reason: Option<String>,
}

type DeviceRow = (
    i64,
    i64,
    String,
    String,
    NaiveDateTime,
    Option<NaiveDateTime>,
    Option<String>,
);

fn device_view(row: DeviceRow) -> DeviceView {
    DeviceView {
        id: row.0,
        user_id: row.1,
        name: row.2,
        actor_id: row.3,
        enrolled_at: row.4,
        revoked_at: row.5,
        revoked_reason: row.6,
    }
}

const DEVICE_COLUMNS: (
    devices::id,
    devices::user_id,
    devices::name,
    devices::actor_id,
    devices::enrolled_at,
    devices::revoked_at,
    devices::revoked_reason,
) = (
    devices::id,
    devices::user_id,
    devices::name,
    devices::actor_id,
    devices::enrolled_at,
    devices::revoked_at,
    devices::revoked_reason,
);

/// A person's enrolled phones.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path)),
    responses((status = 200, body = Vec<DeviceView>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/users/{id}/devices")]
async fn list_devices(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
) -> ApiResult<web::Json<Vec<DeviceView>>> {
    let id = id.into_inner();
    let list = state
        .db
        .run(move |conn| {
            if authed.user_id != id {
                require_manage_user(conn, &authed, id)?;
            }
            let rows: Vec<DeviceRow> = devices::table
                .filter(devices::user_id.eq(id))
                .order(devices::id.asc())
                .select(DEVICE_COLUMNS)
                .load(conn)?;
            Ok::<_, ApiError>(rows.into_iter().map(device_view).collect())
        })
        .await?;
    Ok(web::Json(list))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, for the audit trail (e.g. "phone lost"); not blank.
    #[schema(pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub reason: String,
}

/// Revoke a phone: its tokens stop working at once; what it recorded stays on the phone.
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path)),
    request_body = RevokeRequest,
    responses(
        (status = 200, body = DeviceView),
        (status = 403, body = ErrorBody),
        (status = 404, description = "`device_not_found`", body = ErrorBody),
        (status = 409, description = "`device_already_revoked`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/devices/{id}/revoke")]
async fn revoke_device(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
    body: Json<RevokeRequest>,
) -> ApiResult<web::Json<DeviceView>> {
    let id = id.into_inner();
    let reason = body.into_inner().reason.trim().to_string();
    if reason.is_empty() {
        return Err(ApiError::unprocessable(
            "reason_required",
            "say why the device is revoked",
        ));
    }
    let view = state
        .db
        .write(move |conn| {
            let row: Option<DeviceRow> = devices::table
                .find(id)
                .select(DEVICE_COLUMNS)
                .first(conn)
                .optional()?;
            let row =
                row.ok_or_else(|| ApiError::not_found("device_not_found", "no such device"))?;
            if authed.user_id != row.1 {
                // A device of someone out of sight does not exist, as far as the caller knows.
                require_manage_user(conn, &authed, row.1).map_err(|e| {
                    if e.code == "user_not_found" {
                        ApiError::not_found("device_not_found", "no such device")
                    } else {
                        e
                    }
                })?;
            }
            if row.5.is_some() {
                return Err(ApiError::conflict(
                    "device_already_revoked",
                    "the device was already revoked",
                ));
            }
            diesel::update(devices::table.find(id))
                .set((
                    devices::revoked_at.eq(now()),
                    devices::revoked_reason.eq(&reason),
                ))
                .execute(conn)?;
            let session_ids: Vec<i64> = sessions::table
                .filter(sessions::device_id.eq(id))
                .select(sessions::id)
                .load(conn)?;
            for sid in session_ids {
                tokens::revoke_session(conn, sid, "device revoked")?;
            }
            audit::record(
                conn,
                Event::new(Audit::DeviceRevoked)
                    .by(authed.user_id)
                    .on(row.1)
                    .with(serde_json::json!({"device_id": id, "reason": reason})),
            )?;
            let row: DeviceRow = devices::table.find(id).select(DEVICE_COLUMNS).first(conn)?;
            Ok(device_view(row))
        })
        .await?;
    Ok(web::Json(view))
}

/// Grids of the subtree that break the jurisdiction's staffing rules (榕江: fewer than 3
/// inspectors in a village grid).
#[utoipa::path(
    tag = "people",
    params(("id" = i64, Path, description = "Root of the subtree to check")),
    responses((status = 200, body = StaffingReport), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/grids/{id}/staffing")]
async fn staffing(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
) -> ApiResult<web::Json<StaffingReport>> {
    let id = id.into_inner();
    let st = state.clone();
    let report = state
        .db
        .run(move |conn| {
            let grid = grid_or_404(conn, id)?;
            authed.require_see(&grid.path)?;
            staffing_report(conn, &st.policies, &grid)
        })
        .await?;
    Ok(web::Json(report))
}
