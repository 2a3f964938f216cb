//! Who is asking: sign-in, device enrollment, tokens, and the [`Authed`] extractor that every
//! protected handler takes. Role and subtree checks are declared at the top of each handler with
//! [`Authed::require_see`], [`Authed::require_manage`] or [`Authed::require_admin`].

pub mod api;
pub mod credentials;
pub mod throttle;
pub mod tokens;

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::schema::{devices, grid_roles, grids, sessions, users};

/// A role a person holds in a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 网格长: the grid's leader.
    Leader,
    /// 副网格长: the deputy leader.
    Deputy,
    /// 网格员 / 网格监督员: patrols the grid.
    Inspector,
    /// 联络员: liaison.
    Liaison,
    /// Supervisor (e.g. township 网格长's office staff): reviews patrols, manages people below.
    Supervisor,
    /// County office admin (县环委办): manages grids, people and rules of the subtree.
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Leader,
        Role::Deputy,
        Role::Inspector,
        Role::Liaison,
        Role::Supervisor,
        Role::Admin,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Deputy => "deputy",
            Role::Inspector => "inspector",
            Role::Liaison => "liaison",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
    /// Roles that manage people and devices in their subtree.
    pub fn manages(self) -> bool {
        matches!(
            self,
            Role::Leader | Role::Deputy | Role::Supervisor | Role::Admin
        )
    }
    /// Authority over people at the same grid: an admin (county office) over a leader, a leader
    /// (网格长) over a deputy (副网格长) or supervisor, they over inspectors and liaisons. Below
    /// one's own grid every managing role manages every role (docs/SECURITY.md).
    pub fn rank(self) -> u8 {
        match self {
            Role::Admin => 4,
            Role::Leader => 3,
            Role::Deputy | Role::Supervisor => 2,
            Role::Inspector | Role::Liaison => 1,
        }
    }
}

/// One role of the signed-in user, with the grid's place in the tree.
#[derive(Debug, Clone)]
pub struct RoleGrant {
    pub grid_id: i64,
    pub grid_path: String,
    pub role: Role,
}

/// The signed-in caller, taken from a valid access token of a live session.
#[derive(Debug, Clone)]
pub struct Authed {
    pub user_id: i64,
    pub session_id: i64,
    pub device_id: Option<i64>,
    /// The Automerge actor bound to that device (hex): every change it syncs must be this actor's.
    pub device_actor: Option<String>,
    pub is_superuser: bool,
    pub roles: Vec<RoleGrant>,
}

impl Authed {
    /// Whether the operator is asking, or a role of the caller at the grid `path` or above it
    /// is one that `accept` takes.
    fn holds(&self, path: &str, accept: impl Fn(&RoleGrant) -> bool) -> bool {
        self.is_superuser
            || self
                .roles
                .iter()
                .any(|g| crate::grids::in_subtree(path, &g.grid_path) && accept(g))
    }
    /// Any role at the grid or above it lets one see the grid.
    pub fn can_see(&self, path: &str) -> bool {
        self.holds(path, |_| true)
    }
    pub fn can_manage(&self, path: &str) -> bool {
        self.holds(path, |g| g.role.manages())
    }
    /// Whether this caller has power over a role `role` held at the grid `path`: a managing role
    /// at a grid above it, or at the same grid with a higher rank ([`Role::rank`]). Nobody
    /// manages an equal or higher role at or above their own grid.
    pub fn outranks(&self, path: &str, role: Role) -> bool {
        self.holds(path, |g| {
            g.role.manages() && (path != g.grid_path || g.role.rank() > role.rank())
        })
    }
    /// Whether this caller holds a managing role at a grid strictly above `path`.
    pub fn manages_above(&self, path: &str) -> bool {
        self.holds(path, |g| g.role.manages() && path != g.grid_path)
    }
    pub fn is_admin_of(&self, path: &str) -> bool {
        self.holds(path, |g| g.role == Role::Admin)
    }
    pub fn require_see(&self, path: &str) -> ApiResult<()> {
        if self.can_see(path) {
            Ok(())
        } else {
            Err(ApiError::outside_subtree())
        }
    }
    pub fn require_manage(&self, path: &str) -> ApiResult<()> {
        if self.can_manage(path) {
            Ok(())
        } else if self.can_see(path) {
            Err(ApiError::forbidden(
                "role_required",
                "this needs a leader, deputy, supervisor or admin role at this grid or above",
            ))
        } else {
            Err(ApiError::outside_subtree())
        }
    }
    pub fn require_admin(&self, path: &str) -> ApiResult<()> {
        if self.is_admin_of(path) {
            Ok(())
        } else if self.can_see(path) {
            Err(ApiError::forbidden(
                "role_required",
                "this needs an admin role at this grid or above",
            ))
        } else {
            Err(ApiError::outside_subtree())
        }
    }
    /// Paths of the subtrees this user sees (the roots only, no path inside another).
    pub fn visible_roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = self.roles.iter().map(|g| g.grid_path.clone()).collect();
        roots.sort();
        roots.dedup();
        let all = roots.clone();
        roots.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q.as_str())));
        roots
    }
    /// Paths of the grids where this user holds an admin role.
    pub fn admin_paths(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|g| g.role == Role::Admin)
            .map(|g| g.grid_path.clone())
            .collect()
    }
}

fn bearer(req: &HttpRequest) -> ApiResult<String> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing_token", "sign in first: no Authorization header")
    })?;
    let value = value.to_str().map_err(|_| {
        ApiError::unauthorized("invalid_token", "the Authorization header is not text")
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_string())
        }
        _ => Err(ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be `Bearer <access token>`",
        )),
    }
}

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("AppState missing"))?;
            let claims = state.keys.verify(&token?)?;
            let user_id: i64 = claims.sub.parse().map_err(|_| {
                ApiError::unauthorized("invalid_token", "the access token is not valid")
            })?;
            let authed = state
                .db
                .run(move |conn| load(conn, user_id, claims.sid, claims.did))
                .await?;
            tracing::Span::current().record("user_id", authed.user_id);
            Ok(authed)
        })
    }
}

/// Checks that the session and device are live and loads the user's roles.
pub(crate) fn load(
    conn: &mut crate::db::DbConnection,
    user_id: i64,
    session_id: i64,
    device_id: Option<i64>,
) -> ApiResult<Authed> {
    // The session, its user and the token's device in one query (every request makes it).
    let row: Option<SessionRow> = sessions::table
        .inner_join(users::table)
        .left_join(devices::table.on(devices::id.nullable().eq(device_id)))
        .filter(sessions::id.eq(session_id))
        .select((
            sessions::user_id,
            sessions::revoked_at,
            users::disabled,
            users::is_superuser,
            devices::id.nullable(),
            devices::revoked_at.nullable(),
            devices::actor_id.nullable(),
        ))
        .first(conn)
        .optional()?;
    // A revoked device says so, rather than the more general "session revoked".
    match (device_id, &row) {
        (Some(_), Some(row)) if row.device_revoked_at.is_some() => {
            return Err(tokens::device_revoked_error());
        }
        (Some(device_id), None) => tokens::require_live_device(conn, device_id)?,
        _ => {}
    }
    let Some(row) = row else {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the access token is not valid",
        ));
    };
    let device_known = device_id.is_none() || row.device_id.is_some();
    match (row.owner == user_id, row.revoked_at) {
        (true, None) if device_known => {}
        (true, Some(_)) => {
            return Err(ApiError::unauthorized(
                "session_revoked",
                "this session was ended; sign in or enroll again",
            ));
        }
        _ => {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "the access token is not valid",
            ));
        }
    }
    if row.disabled {
        return Err(ApiError::unauthorized(
            "user_disabled",
            "this account is disabled",
        ));
    }
    let roles = grid_roles::table
        .inner_join(grids::table)
        .filter(grid_roles::user_id.eq(user_id))
        .select((grid_roles::grid_id, grids::path, grid_roles::role))
        .load::<(i64, String, String)>(conn)?
        .into_iter()
        .filter_map(|(grid_id, grid_path, role)| {
            Role::parse(&role).map(|role| RoleGrant {
                grid_id,
                grid_path,
                role,
            })
        })
        .collect();
    Ok(Authed {
        user_id,
        session_id,
        device_id,
        device_actor: row.device_actor,
        is_superuser: row.is_superuser,
        roles,
    })
}

/// A session, its user, and the device the token names (absent when it names none, or none
/// such exists).
#[derive(Queryable)]
struct SessionRow {
    owner: i64,
    revoked_at: Option<NaiveDateTime>,
    disabled: bool,
    is_superuser: bool,
    device_id: Option<i64>,
    device_revoked_at: Option<NaiveDateTime>,
    device_actor: Option<String>,
}
