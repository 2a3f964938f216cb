//! Live updates for the console: server-sent events from the changes feed. Every two seconds the
//! stream reads the changes stored since its cursor in the user's part of the grid tree (from any
//! server process sharing the database) and sends one `patrol` event per patrol that changed, or
//! a comment line when none did.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::ConsoleUser;
use crate::app::AppState;
use crate::error::ApiError;
use crate::schema::{grids, patrols, sync_changes, sync_documents, users};

const POLL: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
}

/// One patrol that changed.
#[derive(Serialize)]
struct PatrolEvent {
    seq: i64,
    id: String,
    grid_code: String,
    grid_name: String,
    inspector: String,
    received_at: NaiveDateTime,
}

/// The patrols changed after `after` under `roots` (all for a superuser): the newest seq too.
fn changed(
    conn: &mut crate::db::DbConnection,
    roots: &[String],
    everything: bool,
    after: i64,
) -> Result<(Vec<PatrolEvent>, i64), ApiError> {
    let mut query = sync_changes::table
        .inner_join(sync_documents::table.inner_join(grids::table))
        .inner_join(patrols::table.on(patrols::id.eq(sync_changes::doc_id)))
        .inner_join(users::table.on(users::id.eq(patrols::inspector_id)))
        .filter(sync_changes::seq.gt(after))
        .filter(sync_documents::kind.eq("patrol"))
        .select((
            sync_changes::seq,
            sync_changes::doc_id,
            grids::code,
            grids::name,
            users::display_name,
            sync_changes::received_at,
        ))
        .order(sync_changes::seq.asc())
        .limit(500)
        .into_boxed();
    if !everything {
        let mut visible: Box<dyn BoxableExpression<_, _, SqlType = diesel::sql_types::Bool>> =
            Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("1 = 0"));
        for root in roots {
            visible = Box::new(visible.or(grids::path.like(format!("{root}%"))));
        }
        query = query.filter(visible);
    }
    let rows: Vec<(i64, String, String, String, String, NaiveDateTime)> = query.load(conn)?;
    let newest = rows.last().map_or(after, |r| r.0);
    let mut events: Vec<PatrolEvent> = Vec::new();
    for (seq, id, grid_code, grid_name, inspector, received_at) in rows {
        // One event a patrol, at its newest change.
        events.retain(|e| e.id != id);
        events.push(PatrolEvent {
            seq,
            id,
            grid_code,
            grid_name,
            inspector,
            received_at,
        });
    }
    Ok((events, newest))
}

/// The user's reach now, if the console session still stands: signed out (the console session
/// gone), the session revoked, the user disabled, or roles taken away all show at the next
/// poll, not only at the next page load.
fn reach_now(
    conn: &mut crate::db::DbConnection,
    user_id: i64,
    session_id: i64,
) -> Result<Option<(Vec<String>, bool)>, ApiError> {
    use crate::schema::console_sessions;
    let open: i64 = console_sessions::table
        .filter(console_sessions::session_id.eq(session_id))
        .filter(console_sessions::expires_at.gt(crate::db::now()))
        .count()
        .get_result(conn)?;
    if open == 0 {
        return Ok(None);
    }
    Ok(crate::auth::load(conn, user_id, session_id, None)
        .ok()
        .map(|authed| (authed.visible_roots(), authed.is_superuser)))
}

/// GET /console/events?after=: `text/event-stream`. The stream ends (after an `event:
/// signed-out`) once the session no longer stands.
pub async fn events(
    state: web::Data<AppState>,
    user: ConsoleUser,
    query: web::Query<EventsQuery>,
) -> HttpResponse {
    let (user_id, session_id) = (user.authed.user_id, user.authed.session_id);
    let after = query.after.unwrap_or(0).max(0);
    // `None` after: the stream has said it is over.
    let stream = futures_util::stream::unfold((state, Some(after)), move |(state, after)| {
        async move {
            let after = after?;
            tokio::time::sleep(POLL).await;
            let found = state
                .db
                .run(move |conn| {
                    let Some((roots, everything)) = reach_now(conn, user_id, session_id)? else {
                        return Ok(None);
                    };
                    changed(conn, &roots, everything, after).map(Some)
                })
                .await;
            let found = match found {
                Ok(None) => {
                    let end = Bytes::from("event: signed-out\ndata: {}\n\n");
                    return Some((Ok::<_, actix_web::Error>(end), (state, None)));
                }
                Ok(Some(found)) => Ok(found),
                Err(error) => Err(error),
            };
            let (text, after) = match found {
                Ok((events, newest)) if !events.is_empty() => {
                    let mut text = String::new();
                    for event in events {
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        text.push_str(&format!(
                            "id: {}\nevent: patrol\ndata: {data}\n\n",
                            event.seq
                        ));
                    }
                    (text, newest)
                }
                // A comment line on every quiet poll: it keeps proxies from closing the
                // stream, and a write is how a closed browser tab is noticed.
                Ok((_, newest)) => (": ping\n\n".to_string(), newest),
                Err(error) => {
                    tracing::warn!(error = %error.message, "console events");
                    (": ping\n\n".to_string(), after)
                }
            };
            Some((
                Ok::<_, actix_web::Error>(Bytes::from(text)),
                (state, Some(after)),
            ))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        // Not compressed: a compressor would hold events back until its buffer fills.
        .insert_header(actix_web::http::header::ContentEncoding::Identity)
        .insert_header(("cache-control", "no-store"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream)
}
