//! `GET /v1/patrols/{id}/verdict`: whether a patrol counts, and why.

use actix_web::{get, web};
use diesel::prelude::*;
use utoipa_actix_web::service_config::ServiceConfig;

use super::judging::StoredVerdict;
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::{grids, patrol_verdicts};

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(verdict);
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
