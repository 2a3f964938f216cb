//! The console's pages: the week's overview, a grid, a patrol, signing off, downloads, photos.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, NaiveDateTime, TimeZone};
use diesel::prelude::*;
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::map::{Map, TrackFix};
use super::session::CsrfForm;
use super::{ConsoleError, ConsoleUser, page, redirect};
use crate::app::AppState;
use crate::compliance::api::{file_response, live_record};
use crate::compliance::judging::{StoredVerdict, iso_week, policy_of};
use crate::compliance::record::WeekRecord;
use crate::compliance::signoff;
use crate::error::ApiError;
use crate::schema::{grids, patrol_photos, patrol_verdicts, patrols, photos, problems, users};

/// Map size in CSS pixels (the SVG scales to its box).
const MAP_WIDTH: u32 = 720;
const MAP_HEIGHT: u32 = 480;
/// Two fixes further apart than this are drawn as a gap (no position in between).
const GAP_MS: i64 = 3 * 60_000;

type GridTuple = (i64, String, String, String, String);

/// A serializable value for a template.
fn ser<T: Serialize>(value: &T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

fn api(error: ApiError) -> ConsoleError {
    ConsoleError::from_api(error)
}

/// The ISO week of now in the grid's jurisdiction.
fn this_week(state: &AppState, grid_id: i64) -> String {
    let (_, tz) = policy_of(state, grid_id);
    iso_week(chrono::Utc::now().timestamp_millis(), tz)
        .map(|w| w.0)
        .unwrap_or_default()
}

/// The weeks before and after `week`.
fn neighbours(week: &str) -> (String, String) {
    let Some(monday) = crate::policy::parse_week(week) else {
        return (String::new(), String::new());
    };
    let name = |d: chrono::NaiveDate| {
        let w = chrono::Datelike::iso_week(&d);
        format!("{}-W{:02}", w.year(), w.week())
    };
    (
        name(monday - chrono::Duration::days(7)),
        name(monday + chrono::Duration::days(7)),
    )
}

/// "剩余 2 天 3 小时" before the deadline, "已超过截止时间 5 小时" after.
fn time_left(deadline: Option<&str>) -> Option<(String, bool)> {
    let deadline = DateTime::parse_from_rfc3339(deadline?).ok()?;
    let left = deadline.signed_duration_since(chrono::Utc::now());
    let describe = |d: chrono::Duration| {
        let (days, hours, minutes) = (d.num_days(), d.num_hours() % 24, d.num_minutes() % 60);
        if days > 0 {
            format!("{days} 天 {hours} 小时")
        } else if hours > 0 {
            format!("{hours} 小时 {minutes} 分钟")
        } else {
            format!("{minutes} 分钟")
        }
    };
    Some(if left > chrono::Duration::zero() {
        (format!("剩余 {}", describe(left)), false)
    } else {
        (format!("已超过截止时间 {}", describe(-left)), true)
    })
}

/// The map of a record's villages, coloured by their status this week, each linking to its page.
fn record_map(state: &AppState, record: &WeekRecord) -> Option<String> {
    let index = state.index.current();
    let villages: Vec<(&crate::grids::index::IndexedGrid, &str)> = record
        .townships
        .iter()
        .flat_map(|t| t.villages.iter())
        .filter_map(|v| Some((index.get(v.grid.id)?, v.status.as_str())))
        .collect();
    let bounds = Map::bounds_of(villages.iter().map(|(g, _)| &g.shape), &[], 0.03)?;
    let mut map = Map::new(bounds, MAP_WIDTH, MAP_HEIGHT);
    for (grid, status) in &villages {
        let label = match *status {
            "met" => "已达标",
            "short" => "未达标",
            _ => "无巡查",
        };
        map.polygon(
            &grid.shape,
            &format!("grid status-{status}"),
            &format!("{}：{label}", grid.name),
            Some(&format!(
                "/console/grids/{}?week={}",
                grid.code, record.week
            )),
        );
    }
    Some(map.finish(&format!("{}各村网格本周巡查情况地图", record.grid.name)))
}

#[derive(Deserialize)]
pub struct OverviewQuery {
    grid: Option<String>,
}

/// The grid `code` names (as the grid index knows it), or without a code the highest grid the
/// user may see.
fn root_of(
    state: &AppState,
    user: &ConsoleUser,
    code: Option<&str>,
) -> Result<GridTuple, ConsoleError> {
    let index = state.index.current();
    let grid = match code {
        Some(code) => index.get_by_code(code),
        None => {
            let path = user
                .authed
                .visible_roots()
                .into_iter()
                .next()
                .ok_or(ConsoleError::Forbidden)?;
            crate::grids::path_ids(&path)
                .last()
                .and_then(|id| index.get(*id))
        }
    }
    .ok_or(ConsoleError::NotFound)?;
    Ok((
        grid.id,
        grid.code.clone(),
        grid.name.clone(),
        grid.level.clone(),
        index.path_of(grid),
    ))
}

/// GET /console/: this week's overview of the user's highest grid.
pub async fn overview(
    state: web::Data<AppState>,
    user: ConsoleUser,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let root = root_of(&state, &user, query.grid.as_deref())?;
    let week = this_week(&state, root.0);
    render_overview(&state, &user, root, week).await
}

/// GET /console/weeks/{week}?grid=: the overview of a week.
pub async fn overview_of_week(
    state: web::Data<AppState>,
    user: ConsoleUser,
    week: web::Path<String>,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let root = root_of(&state, &user, query.grid.as_deref())?;
    render_overview(&state, &user, root, week.into_inner()).await
}

/// The week's record of `root` as the API shows it (frozen when signed), after checking the week
/// and that the user may see the grid.
async fn shown_record(
    state: &web::Data<AppState>,
    user: &ConsoleUser,
    root: GridTuple,
    week: String,
) -> Result<WeekRecord, ConsoleError> {
    crate::compliance::record::monday_of(&week).map_err(api)?;
    if !user.authed.can_see(&root.4) {
        return Err(ConsoleError::Forbidden);
    }
    let state2 = state.clone().into_inner();
    state
        .db
        .run(move |conn| {
            let live = live_record(&state2, conn, root, &week)?;
            signoff::shown(conn, live)
        })
        .await
        .map_err(api)
}

async fn render_overview(
    state: &web::Data<AppState>,
    user: &ConsoleUser,
    root: GridTuple,
    week: String,
) -> Result<HttpResponse, ConsoleError> {
    let record = shown_record(state, user, root.clone(), week).await?;
    let grid_id = root.0;
    let staffing = state
        .db
        .run({
            let state = state.clone();
            move |conn| {
                let row = crate::people::grid_or_404(conn, grid_id)?;
                crate::people::staffing_report(conn, &state.policies, &row)
            }
        })
        .await
        .map_err(api)?;
    let (previous, next) = neighbours(&record.week);
    let left = time_left(record.deadline.as_deref());
    let map = record_map(state, &record);
    let can_sign = record.signoff.is_none() && user.authed.can_manage(&root.4);
    Ok(page(
        200,
        "overview.html",
        context! {
            user => user_context(user),
            record => ser(&record),
            staffing => ser(&staffing.gaps),
            previous, next,
            time_left => left.as_ref().map(|l| l.0.clone()),
            overdue => left.is_some_and(|l| l.1),
            map => map.map(Value::from_safe_string),
            can_sign,
            live_after => latest_seq(state).await,
        },
    ))
}

fn user_context(user: &ConsoleUser) -> Value {
    context! { name => &user.name, username => &user.username, csrf => &user.csrf }
}

/// The newest change's sequence number: the live list starts after it.
async fn latest_seq(state: &AppState) -> i64 {
    use crate::schema::sync_changes;
    state
        .db
        .run(|conn| {
            sync_changes::table
                .select(diesel::dsl::max(sync_changes::seq))
                .first::<Option<i64>>(conn)
                .map_err(ApiError::from)
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[derive(Deserialize)]
pub struct GridQuery {
    week: Option<String>,
}

#[derive(Serialize)]
struct PatrolLine {
    id: String,
    inspector: String,
    method: String,
    started_at: String,
    minutes: Option<i64>,
    week: Option<String>,
    counted: Option<bool>,
    review: Option<String>,
    photos: i32,
}

/// The patrols of a grid, newest first, with their verdicts and inspectors' names.
fn patrol_lines(
    conn: &mut crate::db::DbConnection,
    grid_id: i64,
    tz: chrono_tz::Tz,
    limit: i64,
) -> Result<Vec<PatrolLine>, ApiError> {
    type Row = (
        String,
        String,
        String,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<String>,
        Option<bool>,
        Option<String>,
        i32,
    );
    let rows: Vec<Row> = patrols::table
        .inner_join(users::table.on(users::id.eq(patrols::inspector_id)))
        .left_join(patrol_verdicts::table.on(patrol_verdicts::patrol_id.eq(patrols::id)))
        .filter(patrols::grid_id.eq(grid_id))
        .order(patrols::started_at.desc())
        .limit(limit)
        .select((
            patrols::id,
            users::display_name,
            patrols::method,
            patrols::started_at,
            patrols::ended_at,
            patrol_verdicts::week.nullable(),
            patrol_verdicts::counted.nullable(),
            patrols::review_state,
            patrols::photo_count,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, inspector, method, started, ended, week, counted, review, photos)| PatrolLine {
                id,
                inspector,
                method: method_name(&method).to_string(),
                started_at: local(started, tz),
                minutes: ended.map(|e| (e - started).num_minutes()),
                week,
                counted,
                review,
                photos,
            },
        )
        .collect())
}

fn method_name(method: &str) -> &'static str {
    match method {
        "announced" => "明查",
        "unannounced" => "暗查",
        _ => "巡查",
    }
}

fn local(at: NaiveDateTime, tz: chrono_tz::Tz) -> String {
    tz.from_utc_datetime(&at)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

fn local_ms(ms: i64, tz: chrono_tz::Tz) -> String {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Minutes east of UTC of the zone at an instant (for the map's local times).
fn offset_minutes(tz: chrono_tz::Tz, at_ms: i64) -> i32 {
    use chrono::Offset;
    tz.timestamp_millis_opt(at_ms)
        .single()
        .map_or(0, |t| t.offset().fix().local_minus_utc() / 60)
}

/// A patrol's track as the map draws it, fixes inside the grid marked.
fn track_of(
    view: &sync_protocol::schema::PatrolView,
    shape: &geo::MultiPolygon<f64>,
) -> Vec<TrackFix> {
    crate::compliance::verdict::fixes_inside(&view.track, shape)
        .into_iter()
        .map(|(lon, lat, at_ms, inside)| TrackFix {
            lon,
            lat,
            at_ms,
            inside,
        })
        .collect()
}

/// A grid's map: its outline, its key points, and tracks (each with its CSS class and an
/// optional link), fitted to all of them; times in the tracks' titles are local to `tz`.
fn grid_map(
    index: &crate::grids::index::GridIndex,
    grid_id: i64,
    tracks: &[(Vec<TrackFix>, String, Option<String>)],
    tz: chrono_tz::Tz,
    label: &str,
) -> Option<String> {
    let grid = index.get(grid_id)?;
    let points: Vec<(f64, f64)> = tracks
        .iter()
        .flat_map(|(fixes, _, _)| fixes.iter().map(|f| (f.lon, f.lat)))
        .collect();
    let bounds = Map::bounds_of([&grid.shape], &points, 0.05)?;
    let mut map = Map::new(bounds, MAP_WIDTH, MAP_HEIGHT);
    map.polygon(&grid.shape, "grid focus", &grid.name, None);
    for point in index.key_points_of(grid_id) {
        if let Some(c) = geo::Centroid::centroid(&point.shape) {
            map.point(
                c.x(),
                c.y(),
                6.0,
                "key-point",
                &format!("重点点位：{}", point.name),
            );
        }
    }
    for (fixes, class, href) in tracks {
        let offset = fixes.first().map_or(480, |f| offset_minutes(tz, f.at_ms));
        map.track(fixes, GAP_MS, offset, class, href.as_deref());
    }
    Some(map.finish(label))
}

/// A stored patrol document, read.
fn load_patrol(
    conn: &mut crate::db::DbConnection,
    id: &str,
) -> Result<Option<sync_protocol::schema::PatrolView>, ApiError> {
    let stored = crate::sync::stored::load_one(conn, id)?;
    if stored.is_empty() {
        return Ok(None);
    }
    let doc = stored.load().map_err(ApiError::internal)?;
    Ok(sync_protocol::schema::read_patrol(&doc).ok())
}

/// GET /console/grids/{code}: a village's inspectors, patrols and map; a wider grid's page is its
/// overview.
pub async fn grid(
    state: web::Data<AppState>,
    user: ConsoleUser,
    code: web::Path<String>,
    query: web::Query<GridQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let root = root_of(&state, &user, Some(&code))?;
    if !user.authed.can_see(&root.4) {
        return Err(ConsoleError::Forbidden);
    }
    let week = query
        .week
        .clone()
        .unwrap_or_else(|| this_week(&state, root.0));
    if root.3 != "village" {
        return Ok(redirect(&format!("/console/weeks/{week}?grid={}", root.1)));
    }
    let record = shown_record(&state, &user, root.clone(), week.clone()).await?;
    let village = record
        .townships
        .iter()
        .flat_map(|t| t.villages.iter())
        .find(|v| v.grid.id == root.0)
        .cloned();
    let (_, tz) = policy_of(&state, root.0);
    let grid_id = root.0;
    let (lines, tracks) = state
        .db
        .run(move |conn| -> Result<_, ApiError> {
            let lines = patrol_lines(conn, grid_id, tz, 60)?;
            let mut tracks = Vec::new();
            for line in lines
                .iter()
                .filter(|l| l.week.as_deref() == Some(week.as_str()))
            {
                if let Some(view) = load_patrol(conn, &line.id)? {
                    tracks.push((line.id.clone(), view));
                }
            }
            Ok((lines, tracks))
        })
        .await
        .map_err(api)?;
    let index = state.index.current();
    let drawn: Vec<(Vec<TrackFix>, String, Option<String>)> = match index.get(root.0) {
        Some(grid) => tracks
            .iter()
            .enumerate()
            .map(|(k, (id, view))| {
                (
                    track_of(view, &grid.shape),
                    format!("series-{}", k % 6),
                    Some(format!("/console/patrols/{id}")),
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let map = grid_map(
        &index,
        root.0,
        &drawn,
        tz,
        &format!("{}网格与本周巡查轨迹", root.2),
    );
    Ok(page(
        200,
        "grid.html",
        context! {
            user => user_context(&user),
            grid => context! { code => &root.1, name => &root.2, level => &root.3 },
            record => ser(&record),
            village => village.map(|v| ser(&v)),
            patrols => ser(&lines),
            map => map.map(Value::from_safe_string),
        },
    ))
}

#[derive(Serialize)]
struct PhotoLine {
    sha256: String,
    caption: String,
    taken_at: String,
    received: bool,
    exif_time: Option<String>,
    exif_place: Option<String>,
}

/// GET /console/patrols/{id}
pub async fn patrol(
    state: web::Data<AppState>,
    user: ConsoleUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let id = id.into_inner();
    let lookup = id.clone();
    type Head = (i64, String, String, String, String, i64, String);
    let head: Option<Head> = state
        .db
        .run(move |conn| {
            patrols::table
                .inner_join(grids::table.on(grids::id.eq(patrols::grid_id)))
                .inner_join(users::table.on(users::id.eq(patrols::inspector_id)))
                .filter(patrols::id.eq(&lookup))
                .select((
                    grids::id,
                    grids::code,
                    grids::name,
                    grids::level,
                    grids::path,
                    patrols::inspector_id,
                    users::display_name,
                ))
                .first(conn)
                .optional()
                .map_err(ApiError::from)
        })
        .await
        .map_err(api)?;
    let (grid_id, grid_code, grid_name, _, path, inspector_id, inspector) =
        head.ok_or(ConsoleError::NotFound)?;
    // An inspector sees their own patrols; everyone else by the grid tree.
    if !(user.authed.can_see(&path) || user.authed.user_id == inspector_id) {
        return Err(ConsoleError::Forbidden);
    }
    let (_, tz) = policy_of(&state, grid_id);
    let lookup = id.clone();
    let (view, verdict, photo_lines, problem_lines, reviewer) = state
        .db
        .run(move |conn| -> Result<_, ApiError> {
            let view = load_patrol(conn, &lookup)?;
            let verdict: Option<(Option<String>, i64, i64)> = patrol_verdicts::table
                .find(&lookup)
                .select((
                    patrol_verdicts::verdict,
                    patrol_verdicts::version,
                    patrol_verdicts::judged_version,
                ))
                .first(conn)
                .optional()?;
            let verdict: Option<StoredVerdict> = verdict
                .filter(|(_, version, judged)| version == judged)
                .and_then(|(text, _, _)| serde_json::from_str(text.as_deref()?).ok());
            let rows: Vec<(String, String, NaiveDateTime, Option<String>)> = patrol_photos::table
                .left_join(photos::table.on(photos::sha256.eq(patrol_photos::sha256)))
                .filter(patrol_photos::patrol_id.eq(&lookup))
                .order(patrol_photos::taken_at.asc())
                .select((
                    patrol_photos::sha256,
                    patrol_photos::caption,
                    patrol_photos::taken_at,
                    photos::exif.nullable(),
                ))
                .load(conn)?;
            let photo_lines: Vec<PhotoLine> = rows
                .into_iter()
                .map(|(sha256, caption, taken_at, exif)| {
                    let exif: Option<gridpatrol_photo::Exif> =
                        exif.as_deref().and_then(|e| serde_json::from_str(e).ok());
                    PhotoLine {
                        sha256,
                        caption,
                        taken_at: local(taken_at, tz),
                        received: exif.is_some(),
                        exif_time: exif.as_ref().and_then(|e| e.taken_at.clone()),
                        exif_place: exif
                            .as_ref()
                            .and_then(|e| Some(format!("{:.5}, {:.5}", e.lon?, e.lat?))),
                    }
                })
                .collect();
            let problem_lines: Vec<(String, String, String)> = problems::table
                .filter(problems::patrol_id.eq(&lookup))
                .order(problems::found_at.asc())
                .select((
                    problems::category,
                    problems::description,
                    problems::disposition,
                ))
                .load(conn)?;
            let reviewer: Option<String> = match view.as_ref().and_then(|v| v.review.as_ref()) {
                Some(review) => users::table
                    .find(review.reviewer)
                    .select(users::display_name)
                    .first(conn)
                    .optional()?,
                None => None,
            };
            Ok((view, verdict, photo_lines, problem_lines, reviewer))
        })
        .await
        .map_err(api)?;
    let view = view.ok_or(ConsoleError::NotFound)?;
    let index = state.index.current();
    let fixes = index
        .get(grid_id)
        .map(|g| track_of(&view, &g.shape))
        .unwrap_or_default();
    let inside = fixes.iter().filter(|f| f.inside).count();
    let outside = fixes.len() - inside;
    // Counted on the fixes drawn, as the map shows them.
    let gaps = fixes
        .windows(2)
        .filter(|w| w[1].at_ms - w[0].at_ms > GAP_MS)
        .count();
    let drawn = [(fixes, "series-0".to_string(), None)];
    let map = grid_map(
        &index,
        grid_id,
        &drawn,
        tz,
        &format!("巡查轨迹：{grid_name}"),
    );
    let may_review = user.authed.can_manage(&path);
    let notes: Vec<(String, String)> = view
        .notes
        .iter()
        .map(|n| (local_ms(n.at_ms, tz), n.text.clone()))
        .collect();
    let review = view.review.as_ref().map(|r| {
        context! {
            state => r.state.as_str(),
            comment => &r.comment,
            at => local_ms(r.at_ms, tz),
            reviewer => reviewer.clone().unwrap_or_else(|| format!("用户 {}", r.reviewer)),
        }
    });
    Ok(page(
        200,
        "patrol.html",
        context! {
            user => user_context(&user),
            patrol => context! {
                id => &id,
                grid_code => &grid_code,
                grid_name => &grid_name,
                inspector => &inspector,
                method => method_name(view.method.as_str()),
                started_at => local_ms(view.started_at_ms, tz),
                ended_at => view.ended_at_ms.map(|ms| local_ms(ms, tz)),
                minutes => view.ended_at_ms.map(|e| (e - view.started_at_ms) / 60_000),
                status => view.status.as_str(),
                fixes => view.track.len(),
                inside, outside, gaps,
            },
            verdict => verdict.map(|v| ser(&v)),
            photos => ser(&photo_lines),
            problems => ser(&problem_lines),
            notes => ser(&notes),
            review,
            may_review,
            map => map.map(Value::from_safe_string),
        },
    ))
}

/// GET /console/photos/{sha}/{thumbnail|preview}: the API's derived images, by the console's
/// sign-in (the same rule: only people who may see a patrol that uses the photo).
pub async fn photo(
    state: web::Data<AppState>,
    user: ConsoleUser,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ConsoleError> {
    let (sha, kind) = path.into_inner();
    let kind = match kind.as_str() {
        "thumbnail" => crate::photos::Derived::Thumbnail,
        "preview" => crate::photos::Derived::Preview,
        _ => return Err(ConsoleError::NotFound),
    };
    crate::photos::api::derived(state, user.authed, req, &sha, kind)
        .await
        .map_err(api)
}

/// GET /console/weeks/{week}/signoff?grid=: what will be signed, and the button.
pub async fn signoff_form(
    state: web::Data<AppState>,
    user: ConsoleUser,
    week: web::Path<String>,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let code = query
        .grid
        .clone()
        .ok_or(ConsoleError::BadRequest("缺少网格参数".into()))?;
    let root = root_of(&state, &user, Some(&code))?;
    let record = shown_record(&state, &user, root.clone(), week.into_inner()).await?;
    if !user.authed.can_manage(&root.4) {
        return Err(ConsoleError::Forbidden);
    }
    let left = time_left(record.deadline.as_deref());
    Ok(page(
        200,
        "signoff.html",
        context! {
            user => user_context(&user),
            record => ser(&record),
            time_left => left.as_ref().map(|l| l.0.clone()),
            overdue => left.is_some_and(|l| l.1),
        },
    ))
}

/// POST /console/weeks/{week}/signoff?grid=: signs the week off, then shows the frozen record.
pub async fn signoff(
    state: web::Data<AppState>,
    user: ConsoleUser,
    week: web::Path<String>,
    query: web::Query<OverviewQuery>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    user.check_csrf(&form.csrf)?;
    let code = query
        .grid
        .clone()
        .ok_or(ConsoleError::BadRequest("缺少网格参数".into()))?;
    let week = week.into_inner();
    crate::compliance::record::monday_of(&week).map_err(api)?;
    let root = root_of(&state, &user, Some(&code))?;
    if !user.authed.can_manage(&root.4) {
        return Err(ConsoleError::Forbidden);
    }
    let state2 = state.clone().into_inner();
    let user_id = user.authed.user_id;
    let week2 = week.clone();
    state
        .db
        .write(move |conn| {
            let live = live_record(&state2, conn, root, &week2)?;
            signoff::sign(conn, live, user_id)
        })
        .await
        .map_err(api)?;
    Ok(redirect(&format!("/console/weeks/{week}?grid={code}")))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    grid: Option<String>,
    format: Option<String>,
}

/// GET /console/weeks/{week}/export?grid=&format=
pub async fn export(
    state: web::Data<AppState>,
    user: ConsoleUser,
    week: web::Path<String>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let ExportQuery { grid, format } = query.into_inner();
    let format = format.unwrap_or_else(|| "xlsx".into());
    if !matches!(format.as_str(), "xlsx" | "csv" | "json") {
        return Err(ConsoleError::BadRequest(format!("不支持的格式：{format}")));
    }
    let code = grid.ok_or(ConsoleError::BadRequest("缺少网格参数".into()))?;
    let root = root_of(&state, &user, Some(&code))?;
    let record = shown_record(&state, &user, root, week.into_inner()).await?;
    file_response(&record, &format).map_err(api)
}
