//! `/v1/grids*`.

use actix_web::{get, post, web};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::import::{self, FeatureProblem, ImportError, ImportReport, Importer};
use super::{GridKind, GridRow, GridSummary, find_by_id, path_ids};
use crate::app::AppState;
use crate::auth::Authed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::grids;

pub fn configure(cfg: &mut ServiceConfig) {
    // `locate` and `import` before `{id}`: actix matches in registration order.
    cfg.service(locate)
        .service(import_grids)
        .service(list)
        .service(detail);
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LocateQuery {
    /// Longitude, WGS-84/CGCS2000 degrees.
    #[param(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
    /// Latitude, WGS-84/CGCS2000 degrees.
    #[param(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
}

/// One grid of a located chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LocatedGrid {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub kind: GridKind,
    pub level: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LocateResponse {
    pub lon: f64,
    pub lat: f64,
    /// Territorial grids containing the point, root first (county → township → village).
    /// Empty when the point lies outside every grid.
    pub chain: Vec<LocatedGrid>,
    /// Key areas and department grids containing the point.
    pub overlays: Vec<LocatedGrid>,
}

fn located(g: &super::index::IndexedGrid) -> LocatedGrid {
    LocatedGrid {
        id: g.id,
        code: g.code.clone(),
        name: g.name.clone(),
        kind: g.kind,
        level: g.level.clone(),
    }
}

/// Which grids contain a point (WGS-84/CGCS2000). Public: grid boundaries are published (信息公开).
#[utoipa::path(
    tag = "grids",
    params(LocateQuery),
    responses(
        (status = 200, body = LocateResponse),
        (status = 400, description = "`invalid_query`, `coordinate_out_of_range`", body = ErrorBody),
    )
)]
#[get("/v1/grids/locate")]
async fn locate(
    state: web::Data<AppState>,
    query: web::Query<LocateQuery>,
) -> ApiResult<web::Json<LocateResponse>> {
    let LocateQuery { lon, lat } = query.into_inner();
    if !lon.is_finite()
        || !lat.is_finite()
        || !(-180.0..=180.0).contains(&lon)
        || !(-90.0..=90.0).contains(&lat)
    {
        return Err(ApiError::bad_request(
            "coordinate_out_of_range",
            "lon must be within -180..180 and lat within -90..90 (degrees, WGS-84)",
        ));
    }
    let index = state.index.current();
    let found = index.locate(lon, lat);
    Ok(web::Json(LocateResponse {
        lon,
        lat,
        chain: found.chain.into_iter().map(located).collect(),
        overlays: found.overlays.into_iter().map(located).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the direct children of this grid.
    pub parent_id: Option<i64>,
    /// Only grids of this level (e.g. `village`).
    pub level: Option<String>,
    pub kind: Option<GridKind>,
}

/// The grids the caller may see (its roles' subtrees), without geometry.
#[utoipa::path(
    tag = "grids",
    params(ListQuery),
    responses((status = 200, body = Vec<GridSummary>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, description = "`grid_not_found`: no grid `parent_id`", body = ErrorBody)),
    security(("bearer" = []))
)]
#[get("/v1/grids")]
async fn list(
    state: web::Data<AppState>,
    authed: Authed,
    query: web::Query<ListQuery>,
) -> ApiResult<web::Json<Vec<GridSummary>>> {
    let query = query.into_inner();
    let rows = state
        .db
        .run(move |conn| {
            let mut q = grids::table.select(GridRow::as_select()).into_boxed();
            if !authed.is_superuser {
                let roots = authed.visible_roots();
                if roots.is_empty() {
                    return Ok(Vec::new());
                }
                let mut visible = Box::new(grids::path.like(format!("{}%", roots[0])))
                    as Box<
                        dyn BoxableExpression<grids::table, _, SqlType = diesel::sql_types::Bool>,
                    >;
                for root in &roots[1..] {
                    visible = Box::new(visible.or(grids::path.like(format!("{root}%"))));
                }
                q = q.filter(visible);
            }
            if let Some(parent) = query.parent_id {
                let parent_row = find_by_id(conn, parent)?
                    .ok_or_else(|| ApiError::not_found("grid_not_found", "no such grid"))?;
                authed.require_see(&parent_row.path)?;
                q = q.filter(grids::parent_id.eq(parent));
            }
            if let Some(level) = query.level {
                q = q.filter(grids::level.eq(level));
            }
            if let Some(kind) = query.kind {
                q = q.filter(grids::kind.eq(kind.as_str()));
            }
            let rows: Vec<GridRow> = q
                .order((grids::depth.asc(), grids::code.asc()))
                .load(conn)?;
            Ok::<_, ApiError>(rows)
        })
        .await?;
    Ok(web::Json(rows.iter().map(GridSummary::from).collect()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GridDetail {
    #[serde(flatten)]
    pub grid: GridSummary,
    /// The grid's ancestors, root first.
    pub ancestors: Vec<GridSummary>,
    /// Number of direct children.
    pub children: i64,
    /// GeoJSON geometry (Polygon or MultiPolygon), WGS-84/CGCS2000 lon/lat.
    #[schema(value_type = Object)]
    pub geometry: serde_json::Value,
    /// Further properties from the imported file (e.g. `synthetic`).
    #[schema(value_type = Object)]
    pub properties: serde_json::Value,
}

/// One grid with its geometry and ancestors.
#[utoipa::path(
    tag = "grids",
    params(("id" = i64, Path, description = "Grid id")),
    responses(
        (status = 200, body = GridDetail),
        (status = 403, description = "`outside_subtree`", body = ErrorBody),
        (status = 404, description = "`grid_not_found`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/grids/{id}")]
async fn detail(
    state: web::Data<AppState>,
    authed: Authed,
    id: web::Path<i64>,
) -> ApiResult<web::Json<GridDetail>> {
    let id = id.into_inner();
    let detail = state
        .db
        .run(move |conn| {
            let row = find_by_id(conn, id)?
                .ok_or_else(|| ApiError::not_found("grid_not_found", "no such grid"))?;
            authed.require_see(&row.path)?;
            let ancestor_ids: Vec<i64> = path_ids(&row.path)
                .into_iter()
                .filter(|a| *a != id)
                .collect();
            let ancestors: Vec<GridRow> = grids::table
                .filter(grids::id.eq_any(&ancestor_ids))
                .order(grids::depth.asc())
                .select(GridRow::as_select())
                .load(conn)?;
            let children: i64 = grids::table
                .filter(grids::parent_id.eq(id))
                .count()
                .get_result(conn)?;
            Ok::<_, ApiError>(GridDetail {
                grid: GridSummary::from(&row),
                ancestors: ancestors.iter().map(GridSummary::from).collect(),
                children,
                geometry: serde_json::from_str(&row.geometry).map_err(ApiError::internal)?,
                properties: serde_json::from_str(&row.properties).unwrap_or_default(),
            })
        })
        .await?;
    Ok(web::Json(detail))
}

/// Import or update grids from a GeoJSON FeatureCollection, all or nothing.
///
/// Feature properties: `code`, `name`, `level`, optional `parent_code`, `kind` and `radius_m`.
/// Needs an admin role at or above every grid written; new top-level grids only come in through
/// the operator's `gridpatrol import-grids`.
#[utoipa::path(
    tag = "grids",
    request_body(content = Object, content_type = "application/geo+json", description = "GeoJSON FeatureCollection"),
    responses(
        (status = 200, body = ImportReport),
        (status = 400, description = "`malformed_geojson`", body = ErrorBody),
        (status = 403, description = "`outside_subtree`, `role_required`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_grids`: `details.features` lists every problem; `too_many_vertices`: more positions than `GRIDPATROL_IMPORT_MAX_VERTICES`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/grids/import")]
async fn import_grids(
    state: web::Data<AppState>,
    authed: Authed,
    body: web::Bytes,
) -> ApiResult<web::Json<ImportReport>> {
    let importer = if authed.is_superuser {
        Importer::Operator
    } else {
        let paths = authed.admin_paths();
        if paths.is_empty() {
            return Err(ApiError::forbidden(
                "role_required",
                "importing grids needs an admin role",
            ));
        }
        Importer::Admin(paths)
    };
    // Parsing and every check run before the write transaction (issue 22, finding 2): the
    // file's own checks on the blocking pool, those against the tree on a read connection.
    let limits = state.import_limits;
    let parsed = tokio::task::spawn_blocking(move || import::parse(&body, &limits))
        .await
        .map_err(ApiError::internal)?
        .map_err(import_error)?;
    let plan = state
        .db
        .run(move |conn| import::plan(conn, parsed, &importer).map_err(import_error))
        .await?;
    let report = state
        .db
        .write(move |conn| plan.write(conn).map_err(import_error))
        .await?;
    state.refresh_index().await?;
    Ok(web::Json(report))
}

pub fn import_error(error: ImportError) -> ApiError {
    match error {
        ImportError::Malformed(message) => ApiError::bad_request("malformed_geojson", message),
        ImportError::Invalid(problems) => {
            let message = summarize(&problems);
            ApiError::unprocessable("invalid_grids", message)
                .with_details(serde_json::json!({ "features": problems }))
        }
        ImportError::TooManyVertices { found, limit } => ApiError::unprocessable(
            "too_many_vertices",
            format!(
                "the file has {found} positions; at most {limit} are accepted in one import \
                 (split the file or simplify the boundaries)"
            ),
        )
        .with_details(serde_json::json!({ "vertices": found, "limit": limit })),
        ImportError::Forbidden(code) => ApiError::forbidden(
            "outside_subtree",
            format!("grid {code} would lie outside the grids you administer"),
        ),
        ImportError::Database(e) => e.into(),
        ImportError::Pool(e) => e.into(),
    }
}

/// "3 feature(s) are invalid; nothing was imported: #4 522632001004 ring_not_closed; …"
pub fn summarize(problems: &[FeatureProblem]) -> String {
    let shown: Vec<String> = problems
        .iter()
        .take(5)
        .map(|p| {
            format!(
                "#{} {} {}",
                p.index,
                p.code.as_deref().unwrap_or("(no code)"),
                p.reason
            )
        })
        .collect();
    let more = problems.len().saturating_sub(shown.len());
    let mut text = format!(
        "{} problem(s) found; nothing was imported: {}",
        problems.len(),
        shown.join("; ")
    );
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}
