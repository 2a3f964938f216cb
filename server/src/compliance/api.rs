//! `GET /v1/patrols/{id}/verdict`: whether a patrol counts, and why.

use actix_web::{get, web};
use diesel::prelude::*;
use utoipa_actix_web::service_config::ServiceConfig;

use super::judging::StoredVerdict;
use super::record::WeekRecord;
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{grids, patrol_verdicts};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(verdict).service(week);
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct WeekQuery {
    /// The code of the subtree's root grid (default: the highest grid the caller may see).
    pub grid: Option<String>,
}

/// The weekly record (巡查台账) of ISO week `week` (`2026-W48`, in the jurisdiction's time zone)
/// for a part of the grid tree: every village grid and inspector, counted patrols against the
/// duty, the patrols that did not count and why, soft signals, rolled up to township and the
/// whole subtree, with the record's deadline. Kept current as patrols sync.
#[utoipa::path(
    tag = "compliance",
    params(("week" = String, Path), WeekQuery),
    responses(
        (status = 200, body = WeekRecord),
        (status = 400, description = "`invalid_week`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/compliance/weeks/{week}")]
async fn week(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<WeekQuery>,
) -> ApiResult<web::Json<WeekRecord>> {
    let week = week.into_inner();
    crate::policy::parse_week(&week).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_week",
            format!("{week:?} is not an ISO week like 2026-W48"),
        )
    })?;
    let code = query.into_inner().grid;
    let roots = authed.visible_roots();
    let root: (i64, String, String, String, String) = state
        .db
        .run(move |conn| -> ApiResult<_> {
            let row = match code {
                Some(code) => grids::table
                    .filter(grids::code.eq(code))
                    .select((
                        grids::id,
                        grids::code,
                        grids::name,
                        grids::level,
                        grids::path,
                    ))
                    .first(conn)
                    .optional()?,
                None => match roots.first() {
                    Some(path) => grids::table
                        .filter(grids::path.eq(path))
                        .select((
                            grids::id,
                            grids::code,
                            grids::name,
                            grids::level,
                            grids::path,
                        ))
                        .first(conn)
                        .optional()?,
                    None => None,
                },
            };
            row.ok_or_else(|| ApiError::not_found("grid_not_found", "no such grid"))
        })
        .await?;
    authed.require_see(&root.4)?;
    let state2 = state.clone().into_inner();
    let record = state
        .db
        .run(move |conn| {
            let (policy, tz) = super::judging::policy_of(&state2, root.0);
            super::record::week_record(conn, root, &week, policy, tz)
        })
        .await?;
    Ok(web::Json(record))
}

/// A patrol's verdict: counted or not, each rule with the figures it was judged on, and the
/// fraud signals (soft: shown; hard: not counted), with Chinese messages. `404 verdict_pending`
/// while the patrol is being judged (a second or so after it syncs).
#[utoipa::path(
    tag = "compliance",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = StoredVerdict),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`patrol_not_found`, `verdict_pending`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/patrols/{id}/verdict")]
async fn verdict(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<String>,
) -> ApiResult<web::Json<StoredVerdict>> {
    let id = id.into_inner();
    let row: Option<(String, i64, Option<String>, i64, i64)> = state
        .db
        .run(move |conn| -> ApiResult<_> {
            Ok(patrol_verdicts::table
                .inner_join(grids::table.on(grids::id.eq(patrol_verdicts::grid_id)))
                .filter(patrol_verdicts::patrol_id.eq(&id))
                .select((
                    grids::path,
                    patrol_verdicts::inspector_id,
                    patrol_verdicts::verdict,
                    patrol_verdicts::version,
                    patrol_verdicts::judged_version,
                ))
                .first(conn)
                .optional()?)
        })
        .await?;
    let Some((path, inspector, verdict, version, judged)) = row else {
        return Err(ApiError::not_found(
            "patrol_not_found",
            "no such patrol on the server",
        ));
    };
    if !authed.can_see(&path) && inspector != authed.user_id {
        return Err(ApiError::outside_subtree());
    }
    match verdict {
        Some(text) if judged == version => Ok(web::Json(
            serde_json::from_str(&text).map_err(ApiError::internal)?,
        )),
        _ => Err(ApiError::not_found(
            "verdict_pending",
            "the patrol is being judged; ask again in a moment",
        )),
    }
}
