//! The security audit log: users created, roles granted and revoked, enrollment codes, devices
//! enrolled and revoked, password sign-ins, failed sign-ins and lockouts (with the client's
//! address). Each is a row of `security_events` (who did it, to whom, in which grid),
//! written in the same
//! transaction as what it records, and readable by admins through `GET /v1/security-events`
//! (docs/SECURITY.md). Structured log lines go out beside them (`target: "security"`).

use actix_web::{get, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::app::AppState;
use crate::auth::Authed;
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{grid_roles, grids, security_events};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UserCreated,
    RoleGranted,
    RoleRevoked,
    EnrollmentCodeCreated,
    DeviceEnrolled,
    DeviceRevoked,
    SignedIn,
    SignInFailed,
    SignInLocked,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UserCreated => "user_created",
            Kind::RoleGranted => "role_granted",
            Kind::RoleRevoked => "role_revoked",
            Kind::EnrollmentCodeCreated => "enrollment_code_created",
            Kind::DeviceEnrolled => "device_enrolled",
            Kind::DeviceRevoked => "device_revoked",
            Kind::SignedIn => "signed_in",
            Kind::SignInFailed => "sign_in_failed",
            Kind::SignInLocked => "sign_in_locked",
        }
    }
}

/// One event to record.
pub struct Event {
    pub kind: Kind,
    pub actor: Option<i64>,
    pub target: Option<i64>,
    pub grid: Option<i64>,
    /// The client's address, for what a client did (sign-ins).
    pub client: Option<String>,
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(kind: Kind) -> Event {
        Event {
            kind,
            actor: None,
            target: None,
            grid: None,
            client: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }
    pub fn by(mut self, actor: i64) -> Self {
        self.actor = Some(actor);
        self
    }
    pub fn on(mut self, target: i64) -> Self {
        self.target = Some(target);
        self
    }
    pub fn in_grid(mut self, grid: i64) -> Self {
        self.grid = Some(grid);
        self
    }
    pub fn from_client(mut self, client: &str) -> Self {
        self.client = Some(client.to_string());
        self
    }
    pub fn with(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Writes one event (in the caller's transaction, so that it stands or falls with what it
/// records) and logs it.
pub fn record(conn: &mut DbConnection, event: Event) -> QueryResult<()> {
    tracing::info!(
        target: "security",
        event = event.kind.as_str(),
        actor = event.actor,
        target_user = event.target,
        grid = event.grid,
        client = event.client.as_deref(),
        detail = %event.detail,
        "security event"
    );
    diesel::insert_into(security_events::table)
        .values((
            security_events::at.eq(now()),
            security_events::kind.eq(event.kind.as_str()),
            security_events::actor_id.eq(event.actor),
            security_events::target_user_id.eq(event.target),
            security_events::grid_id.eq(event.grid),
            security_events::client.eq(&event.client),
            security_events::detail.eq(event.detail.to_string()),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(list);
}

/// One recorded event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SecurityEvent {
    pub id: i64,
    /// UTC.
    pub at: chrono::DateTime<chrono::Utc>,
    /// `user_created`, `role_granted`, `role_revoked`, `enrollment_code_created`,
    /// `device_enrolled`, `device_revoked`, `signed_in`, `sign_in_failed` (the target when the
    /// name is an account; the name typed is never stored), `sign_in_locked` (the first refusal
    /// of a window; `detail.scope` is `account` for one client, `account_wide` for all clients
    /// the owner never signed in from).
    pub kind: String,
    /// Who did it (absent: anonymous, or the operator's command line).
    pub actor_id: Option<i64>,
    /// Whom it concerns.
    pub target_user_id: Option<i64>,
    pub grid_id: Option<i64>,
    /// The client's address, for sign-in events: the connection's peer address (the server
    /// believes no `X-Forwarded-For`).
    pub client: Option<String>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger id (page forward from the last id seen).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Only this kind.
    pub kind: Option<String>,
}

type EventRow = (
    i64,
    NaiveDateTime,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
);

/// The security audit log, oldest first: for the operator every event; for a county admin the
/// events about grids of its subtree and about people holding roles there. Other roles: 403.
#[utoipa::path(
    tag = "people",
    params(EventsQuery),
    responses(
        (status = 200, body = Vec<SecurityEvent>),
        (status = 400, description = "`invalid_limit`", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`role_required`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/security-events")]
async fn list(
    state: web::Data<AppState>,
    authed: Authed,
    query: web::Query<EventsQuery>,
) -> ApiResult<web::Json<Vec<SecurityEvent>>> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit is 1 to 1000"));
    }
    let admin_paths = authed.admin_paths();
    if !authed.is_superuser && admin_paths.is_empty() {
        return Err(ApiError::forbidden(
            "role_required",
            "the security log is for county admins and the operator",
        ));
    }
    let rows: Vec<EventRow> = state
        .db
        .run(move |conn| {
            // The operator reads everything; an admin, per admin grid, the events about grids of
            // its subtree or about people holding a role there (subqueries, so that a county of
            // thousands of people stays within SQLite's bound-parameter limit).
            let scopes: Vec<Option<String>> = if authed.is_superuser {
                vec![None]
            } else {
                admin_paths.into_iter().map(Some).collect()
            };
            let mut rows: Vec<EventRow> = Vec::new();
            for scope in scopes {
                let mut q = security_events::table
                    .order(security_events::id.asc())
                    .filter(security_events::id.gt(query.after.unwrap_or(0)))
                    .select((
                        security_events::id,
                        security_events::at,
                        security_events::kind,
                        security_events::actor_id,
                        security_events::target_user_id,
                        security_events::grid_id,
                        security_events::client,
                        security_events::detail,
                    ))
                    .limit(limit)
                    .into_boxed();
                if let Some(kind) = &query.kind {
                    q = q.filter(security_events::kind.eq(kind.clone()));
                }
                if let Some(path) = scope {
                    let grids_in = grids::table
                        .filter(grids::path.like(format!("{path}%")))
                        .select(grids::id.nullable());
                    let people_in = grid_roles::table
                        .inner_join(grids::table)
                        .filter(grids::path.like(format!("{path}%")))
                        .select(grid_roles::user_id.nullable());
                    q = q.filter(
                        security_events::grid_id
                            .eq_any(grids_in)
                            .or(security_events::target_user_id.eq_any(people_in)),
                    );
                }
                rows.extend(q.load::<EventRow>(conn)?);
            }
            rows.sort_by_key(|r| r.0);
            rows.dedup_by_key(|r| r.0);
            rows.truncate(limit as usize);
            Ok::<_, ApiError>(rows)
        })
        .await?;
    Ok(web::Json(
        rows.into_iter()
            .map(|r| SecurityEvent {
                id: r.0,
                at: r.1.and_utc(),
                kind: r.2,
                actor_id: r.3,
                target_user_id: r.4,
                grid_id: r.5,
                client: r.6,
                detail: serde_json::from_str(&r.7).unwrap_or_default(),
            })
            .collect(),
    ))
}
