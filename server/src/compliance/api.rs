//! `GET /v1/patrols/{id}/verdict`: whether a patrol counts, and why.

use actix_web::{get, post, web};
use diesel::prelude::*;
use utoipa_actix_web::service_config::ServiceConfig;

use super::judging::StoredVerdict;
use super::record::WeekRecord;
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{grids, patrol_verdicts};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(verdict)
        .service(get_week)
        .service(sign_week)
        .service(reopen_week)
        .service(export_week)
        .service(flagged_patrols);
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
    params(("week" = String, Path, description = "ISO week, `2026-W48` (`W53` too in years that have one)", pattern = r"^[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-2])$"), WeekQuery),
    responses(
        (status = 200, body = WeekRecord),
        (status = 400, description = "`invalid_week`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/compliance/weeks/{week}")]
async fn get_week(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<WeekQuery>,
) -> ApiResult<web::Json<WeekRecord>> {
    let (root, week) = resolve(&state, &authed, week.into_inner(), query.into_inner()).await?;
    authed.require_see(&root.4)?;
    let state2 = state.clone().into_inner();
    let record = state
        .db
        .run(move |conn| {
            let live = live_record(&state2, conn, root, &week)?;
            super::signoff::shown(conn, live)
        })
        .await?;
    Ok(web::Json(record))
}

/// The week checked and the subtree's root: the grid asked for, or the caller's highest.
async fn resolve(
    state: &AppState,
    authed: &Authed,
    week: String,
    query: WeekQuery,
) -> ApiResult<((i64, String, String, String, String), String)> {
    super::record::monday_of(&week)?;
    let roots = authed.visible_roots();
    let root = state
        .db
        .run(move |conn| -> ApiResult<_> {
            match query.grid {
                Some(code) => super::signoff::grid_row(conn, Some(&code), None),
                None => {
                    let path = roots.first().ok_or_else(|| {
                        ApiError::not_found("grid_not_found", "you hold no role in any grid")
                    })?;
                    super::signoff::grid_row(conn, None, Some(path))
                }
            }
        })
        .await?;
    Ok((root, week))
}

pub(crate) fn live_record(
    state: &AppState,
    conn: &mut crate::db::DbConnection,
    root: (i64, String, String, String, String),
    week: &str,
) -> ApiResult<WeekRecord> {
    let (policy, tz) = super::judging::policy_of(state, root.0);
    super::record::week_record(conn, root, week, policy, tz)
}

/// Signs the week off for the grid (a leader, deputy, supervisor or admin of it or above): the
/// record is frozen as it stands, with the SHA-256 of its content, and marked late if the
/// deadline has passed. Patrols of the week that sync later appear as late amendments.
#[utoipa::path(
    tag = "compliance",
    params(("week" = String, Path, description = "ISO week, `2026-W48` (`W53` too in years that have one)", pattern = r"^[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-2])$"), WeekQuery),
    responses(
        (status = 200, body = WeekRecord, description = "The signed, frozen record"),
        (status = 400, description = "`invalid_week`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`, `role_required`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
        (status = 409, description = "`already_signed`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/compliance/weeks/{week}/signoff")]
async fn sign_week(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<WeekQuery>,
) -> ApiResult<web::Json<WeekRecord>> {
    let (root, week) = resolve(&state, &authed, week.into_inner(), query.into_inner()).await?;
    authed.require_manage(&root.4)?;
    let state2 = state.clone().into_inner();
    let user = authed.user_id;
    let record = state
        .db
        .write(move |conn| {
            let live = live_record(&state2, conn, root, &week)?;
            let signed = super::signoff::sign(conn, live, user)?;
            crate::faults::point("signoff.before_commit")?;
            Ok::<_, ApiError>(signed)
        })
        .await?;
    crate::faults::point("signoff.after_commit")?;
    Ok(web::Json(record))
}

/// The patrols of the week with fraud signals (巡查走形式) under a grid, hard ones first: what a
/// supervisor looks at before signing off.
#[utoipa::path(
    tag = "compliance",
    params(("week" = String, Path, description = "ISO week, `2026-W48` (`W53` too in years that have one)", pattern = r"^[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-2])$"), WeekQuery),
    responses(
        (status = 200, body = Vec<super::record::FlaggedPatrol>),
        (status = 400, description = "`invalid_week`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/compliance/weeks/{week}/flags")]
async fn flagged_patrols(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<WeekQuery>,
) -> ApiResult<web::Json<Vec<super::record::FlaggedPatrol>>> {
    let (root, week) = resolve(&state, &authed, week.into_inner(), query.into_inner()).await?;
    authed.require_see(&root.4)?;
    let list = state
        .db
        .run(move |conn| super::record::flagged(conn, &root.4, &week))
        .await?;
    Ok(web::Json(list))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct ExportQuery {
    /// The code of the subtree's root grid (default: the highest grid the caller may see).
    pub grid: Option<String>,
    /// `xlsx` (default), `csv` or `json`.
    #[param(pattern = r"^(xlsx|csv|json)$")]
    pub format: Option<String>,
}

/// The week's record as a file: XLSX (a summary sheet and a sheet per township, Chinese
/// headers), CSV (UTF-8 with BOM) or JSON; named `巡查台账_<grid>_<code>_<week>.<ext>`. A signed
/// week exports its frozen record.
#[utoipa::path(
    tag = "compliance",
    params(("week" = String, Path, description = "ISO week, `2026-W48` (`W53` too in years that have one)", pattern = r"^[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-2])$"), ExportQuery),
    responses(
        (status = 200, description = "The file", content(
            ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            ("text/csv"),
            (WeekRecord = "application/json"),
        )),
        (status = 400, description = "`invalid_week`, `unknown_format`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/compliance/weeks/{week}/export")]
async fn export_week(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<ExportQuery>,
) -> ApiResult<actix_web::HttpResponse> {
    let ExportQuery { grid, format } = query.into_inner();
    let format = format.unwrap_or_else(|| "xlsx".into());
    if !matches!(format.as_str(), "xlsx" | "csv" | "json") {
        return Err(ApiError::bad_request(
            "unknown_format",
            format!("format is xlsx, csv or json, not {format:?}"),
        ));
    }
    let (root, week) = resolve(&state, &authed, week.into_inner(), WeekQuery { grid }).await?;
    authed.require_see(&root.4)?;
    let state2 = state.clone().into_inner();
    let record = state
        .db
        .run(move |conn| {
            let live = live_record(&state2, conn, root, &week)?;
            super::signoff::shown(conn, live)
        })
        .await?;
    file_response(&record, &format)
}

/// The record as a downloadable file in `format` (`xlsx`, `csv` or `json`), named after the grid
/// and week (the Chinese name for browsers that read RFC 6266's `filename*`).
pub(crate) fn file_response(
    record: &WeekRecord,
    format: &str,
) -> ApiResult<actix_web::HttpResponse> {
    use actix_web::http::header::{
        Charset, ContentDisposition, DispositionParam, DispositionType, ExtendedValue,
    };
    let (bytes, content_type) = match format {
        "csv" => (super::export::csv(record), "text/csv; charset=utf-8"),
        "json" => (
            serde_json::to_vec_pretty(record).map_err(ApiError::internal)?,
            "application/json",
        ),
        _ => (
            super::export::xlsx(record).map_err(ApiError::internal)?,
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
    };
    let name = super::export::file_name(record, format);
    let disposition = ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![
            DispositionParam::Filename(format!(
                "gridpatrol_{}_{}.{format}",
                record.grid.code, record.week
            )),
            DispositionParam::FilenameExt(ExtendedValue {
                charset: Charset::Ext("UTF-8".into()),
                language_tag: None,
                value: name.into_bytes(),
            }),
        ],
    };
    Ok(actix_web::HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(disposition)
        .body(bytes))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReopenRequest {
    /// Why the signed record is reopened (kept in the audit log); not blank.
    #[schema(pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub reason: String,
}

/// Reopens a signed week (an admin of the grid or above, with a reason kept in the audit log).
#[utoipa::path(
    tag = "compliance",
    params(("week" = String, Path, description = "ISO week, `2026-W48` (`W53` too in years that have one)", pattern = r"^[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-2])$"), WeekQuery),
    request_body = ReopenRequest,
    responses(
        (status = 200, body = WeekRecord, description = "The live record again"),
        (status = 400, description = "`invalid_week`, `invalid_query`, `malformed_json`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`, `role_required`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
        (status = 409, description = "`not_signed`", body = ErrorBody),
        (status = 422, description = "`reason_required`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/compliance/weeks/{week}/reopen")]
async fn reopen_week(
    state: web::Data<AppState>,
    authed: Authed,
    week: web::Path<String>,
    query: web::Query<WeekQuery>,
    body: web::Json<ReopenRequest>,
) -> ApiResult<web::Json<WeekRecord>> {
    let reason = body.into_inner().reason.trim().to_string();
    if reason.is_empty() {
        return Err(ApiError::unprocessable(
            "reason_required",
            "say why the signed record is reopened",
        ));
    }
    let (root, week) = resolve(&state, &authed, week.into_inner(), query.into_inner()).await?;
    authed.require_admin(&root.4)?;
    let state2 = state.clone().into_inner();
    let user = authed.user_id;
    let record = state
        .db
        .write(move |conn| {
            super::signoff::reopen(conn, root.0, &week, user, &reason)?;
            let live = live_record(&state2, conn, root, &week)?;
            super::signoff::shown(conn, live)
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
        (status = 404, description = "`patrol_not_found` (none, or one out of the caller's sight: the same answer), `verdict_pending`", body = ErrorBody),
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
        // The same answer as for no patrol at all: nothing learnt about patrols elsewhere.
        return Err(ApiError::not_found(
            "patrol_not_found",
            "no such patrol on the server",
        ));
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
