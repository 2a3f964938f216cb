//! Keeping verdicts current: a merge of a patrol's document, or a photo of it arriving or being
//! hashed, bumps the patrol's `version` (cheap, inside the write that caused it); the compliance
//! worker judges patrols whose `judged_version` is behind, off the request path, and records the
//! version it judged. A verdict is shown only when it is of the latest version.
//! `recompute-compliance` bumps every patrol and judges them all, and gives the same verdicts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDateTime, TimeZone};
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::verdict::{self, Context, PatrolRules, PhotoEvidence, Verdict};
use crate::app::AppState;
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult};
use crate::on_each_backend;
use crate::schema::{patrol_photos, patrol_verdicts, photos, sync_documents};
use crate::sync::stored::{Snapshot, StoredDoc};

/// Marks a patrol's verdict stale (creating its row).
pub fn mark_stale(
    conn: &mut DbConnection,
    patrol_id: &str,
    grid_id: i64,
    inspector_id: i64,
) -> ApiResult<()> {
    on_each_backend!(conn, |c| diesel::insert_into(patrol_verdicts::table)
        .values((
            patrol_verdicts::patrol_id.eq(patrol_id),
            patrol_verdicts::grid_id.eq(grid_id),
            patrol_verdicts::inspector_id.eq(inspector_id),
        ))
        .on_conflict(patrol_verdicts::patrol_id)
        .do_update()
        .set((
            patrol_verdicts::grid_id.eq(excluded(patrol_verdicts::grid_id)),
            patrol_verdicts::version.eq(patrol_verdicts::version + 1),
        ))
        .execute(c))?;
    Ok(())
}

/// Marks stale the verdicts of the patrols that reference a photo.
pub fn mark_photo_stale(conn: &mut DbConnection, sha256: &str) -> ApiResult<()> {
    let patrols: Vec<String> = patrol_photos::table
        .filter(patrol_photos::sha256.eq(sha256))
        .select(patrol_photos::patrol_id)
        .load(conn)?;
    diesel::update(patrol_verdicts::table.filter(patrol_verdicts::patrol_id.eq_any(patrols)))
        .set(patrol_verdicts::version.eq(patrol_verdicts::version + 1))
        .execute(conn)?;
    Ok(())
}

/// ISO week (`2026-W48`) of an instant in a time zone, and its Monday.
pub fn iso_week(at_ms: i64, tz: chrono_tz::Tz) -> Option<(String, chrono::NaiveDate)> {
    let local = tz.timestamp_millis_opt(at_ms).single()?.date_naive();
    let week = local.iso_week();
    let monday =
        chrono::NaiveDate::from_isoywd_opt(week.year(), week.week(), chrono::Weekday::Mon)?;
    Some((format!("{}-W{:02}", week.year(), week.week()), monday))
}

/// A verdict as stored: the week, the verdict itself, and the rules' origin.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredVerdict {
    pub week: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// `policy` (the jurisdiction's rules for that week) or `defaults` (no rules apply).
    pub rules: String,
}

/// Patrols claimed at a time: enough that a full recompute spends its time judging, not in
/// transactions; a claim left by a process that died is taken again after ten minutes.
const CLAIM: i64 = 256;

/// Judges every stale patrol until none is left, and returns how many. Patrols are claimed a
/// batch at a time; the batch is judged on as many low-priority threads as there are cores (each
/// loading its documents on its own pooled connection, see [`judge_lanes`]), and its verdicts are
/// written in one transaction.
pub async fn judge_stale(state: &Arc<AppState>) -> ApiResult<usize> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut judged = 0;
    loop {
        let stuck = now() - chrono::Duration::minutes(10);
        let claimed: Vec<(String, i64, i64)> = state
            .db
            .write(move |conn| -> ApiResult<_> {
                let rows: Vec<(String, i64, i64)> = patrol_verdicts::table
                    .filter(patrol_verdicts::judged_version.lt(patrol_verdicts::version))
                    .filter(
                        patrol_verdicts::claimed_at
                            .is_null()
                            .or(patrol_verdicts::claimed_at.le(stuck)),
                    )
                    .select((
                        patrol_verdicts::patrol_id,
                        patrol_verdicts::grid_id,
                        patrol_verdicts::version,
                    ))
                    .limit(CLAIM)
                    .load(conn)?;
                if !rows.is_empty() {
                    let ids: Vec<&String> = rows.iter().map(|(id, _, _)| id).collect();
                    diesel::update(
                        patrol_verdicts::table.filter(patrol_verdicts::patrol_id.eq_any(ids)),
                    )
                    .set(patrol_verdicts::claimed_at.eq(Some(now())))
                    .execute(conn)?;
                }
                Ok(rows)
            })
            .await?;
        if claimed.is_empty() {
            return Ok(judged);
        }
        judged += claimed.len();
        let per_lane = claimed.len().div_ceil(cores);
        let mut claimed = claimed.into_iter();
        let lanes: Vec<Vec<(String, i64, i64)>> = std::iter::from_fn(|| {
            let lane: Vec<_> = claimed.by_ref().take(per_lane).collect();
            (!lane.is_empty()).then_some(lane)
        })
        .collect();
        let judged_lanes = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || judge_lanes(&state, lanes))
                .await
                .map_err(|_| ApiError::internal("the judging threads were cancelled"))?
        };
        let mut verdicts = Vec::new();
        let mut snapshots = Vec::new();
        for lane in judged_lanes {
            for (id, version, outcome) in lane? {
                match outcome {
                    Ok((stored, snapshot)) => {
                        let text = serde_json::to_string(&stored).map_err(ApiError::internal)?;
                        verdicts.push((id, version, stored, text));
                        snapshots.extend(snapshot);
                    }
                    // Left claimed: tried again once the claim is ten minutes old.
                    Err(error) => tracing::warn!(%error, patrol = %id, "could not judge a patrol"),
                }
            }
        }
        state
            .db
            .write(move |conn| -> ApiResult<()> {
                let at = now();
                for (id, version, stored, text) in verdicts {
                    diesel::update(patrol_verdicts::table.find(&id))
                        .set((
                            patrol_verdicts::week.eq(Some(stored.week)),
                            patrol_verdicts::counted.eq(stored.verdict.counted),
                            patrol_verdicts::verdict.eq(Some(text)),
                            patrol_verdicts::judged_version.eq(version),
                            patrol_verdicts::claimed_at.eq(None::<NaiveDateTime>),
                            patrol_verdicts::computed_at.eq(Some(at)),
                        ))
                        .execute(conn)?;
                }
                // Compaction: the documents just loaded from a long tail of changes are saved
                // whole, so the next load (a recompute, the console) starts from the save.
                crate::sync::stored::write(conn, &snapshots)
            })
            .await?;
    }
}

/// What one lane of a batch comes to: each patrol's verdict and snapshot, or why it was not judged.
type LaneOutcome = Vec<(String, i64, ApiResult<(StoredVerdict, Option<Snapshot>)>)>;

/// Judges a batch's lanes, each on a thread of its own with its own pooled connection. The threads
/// run at the lowest CPU priority: on a busy server the syncs (the phones waiting for their
/// receipts) go first and judging takes what CPU is left; an idle server, or `recompute-compliance`,
/// gives it all the cores anyway.
fn judge_lanes(
    state: &AppState,
    lanes: Vec<Vec<(String, i64, i64)>>,
) -> Vec<ApiResult<LaneOutcome>> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                std::thread::Builder::new()
                    .name("judging".into())
                    .spawn_scoped(scope, move || {
                        background_priority();
                        state.db.run_blocking(|conn| judge_lane(state, conn, lane))
                    })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|_| Err(ApiError::internal("a judging thread panicked"))),
                Err(e) => Err(ApiError::internal(format!("no judging thread: {e}"))),
            })
            .collect()
    })
}

/// One lane: its patrols' stored forms loaded together, then each judged.
fn judge_lane(
    state: &AppState,
    conn: &mut DbConnection,
    lane: Vec<(String, i64, i64)>,
) -> ApiResult<LaneOutcome> {
    let (mut stored, mut received) = load_documents(conn, &lane)?;
    Ok(lane
        .into_iter()
        .map(|(id, grid_id, version)| {
            let doc = stored.remove(&id).unwrap_or_default();
            let received = received.remove(&id);
            let outcome = judge_one(state, conn, &id, grid_id, doc, received);
            (id, version, outcome)
        })
        .collect())
}

/// Lowers the calling thread's CPU priority to the least (nice 19). Linux keeps a nice value per
/// thread, and an unprivileged thread cannot raise it again: only threads made for the purpose
/// call this. Elsewhere it does nothing.
fn background_priority() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(%error, "judging keeps its CPU priority");
    }
}

/// The policy of the nearest jurisdiction above a grid (or the grid's own), and its time zone
/// (the server's when no policy applies).
pub fn policy_of(
    state: &AppState,
    grid_id: i64,
) -> (Option<&crate::policy::Policy>, chrono_tz::Tz) {
    let index = state.index.current();
    let mut chain = Vec::new();
    let mut next = Some(grid_id);
    while let Some(grid) = next.and_then(|id| index.get(id)) {
        chain.push(grid.code.clone());
        next = grid.parent_id;
    }
    chain.reverse();
    let policy = state.policies.nearest(chain.iter().map(String::as_str));
    let tz = policy
        .and_then(|p| p.timezone.parse().ok())
        .unwrap_or(state.timezone);
    (policy, tz)
}

type Received = std::collections::HashMap<String, NaiveDateTime>;

/// The stored form of several patrols and when each was last received, in three queries rather
/// than three a patrol.
fn load_documents(
    conn: &mut DbConnection,
    claimed: &[(String, i64, i64)],
) -> ApiResult<(std::collections::HashMap<String, StoredDoc>, Received)> {
    let ids: Vec<&str> = claimed.iter().map(|(id, _, _)| id.as_str()).collect();
    let stored = crate::sync::stored::load_many(conn, &ids)?;
    let received = sync_documents::table
        .filter(sync_documents::id.eq_any(&ids))
        .select((sync_documents::id, sync_documents::updated_at))
        .load::<(String, NaiveDateTime)>(conn)?
        .into_iter()
        .collect();
    Ok((stored, received))
}

/// Judges one patrol from its stored form; also returns the snapshot to write when the patrol
/// was loaded from a long tail of changes.
fn judge_one(
    state: &AppState,
    conn: &mut DbConnection,
    id: &str,
    grid_id: i64,
    stored: StoredDoc,
    received: Option<NaiveDateTime>,
) -> ApiResult<(StoredVerdict, Option<Snapshot>)> {
    let (doc, snapshot) = stored
        .open(id)
        .map_err(|e| ApiError::internal(format!("stored document {id} does not load: {e}")))?;
    let view = sync_protocol::schema::read_patrol(&doc)
        .map_err(|e| ApiError::internal(format!("stored document {id}: {e}")))?;
    let index = state.index.current();
    let grid = index
        .get(grid_id)
        .ok_or_else(|| ApiError::internal(format!("grid {grid_id} is not in the index")))?;
    let (policy, tz) = policy_of(state, grid_id);
    let (week, monday) = iso_week(view.started_at_ms, tz)
        .ok_or_else(|| ApiError::internal(format!("patrol {id} starts at no valid time")))?;
    let week_rules = policy.and_then(|p| p.rules_for_week(monday));
    let (rules, origin) = match week_rules {
        Some(rules) => (rules.patrol.clone(), "policy"),
        None => (PatrolRules::default(), "defaults"),
    };
    let visit_radius_m = week_rules
        .and_then(|r| r.key_points.as_ref())
        .map_or(100.0, |k| k.visit_radius_m);
    let key_points: Vec<verdict::KeyPointRef<'_>> = index
        .key_points_of(grid_id)
        .map(|point| verdict::KeyPointRef {
            code: &point.code,
            name: &point.name,
            shape: &point.shape,
        })
        .collect();
    let evidence = photo_evidence(conn, &state.photos.hashes, id, tz)?;
    let verdict = verdict::judge(
        &view,
        &Context {
            key_points: &key_points,
            visit_radius_m,
            grid: &grid.shape,
            rules: &rules,
            photos: &evidence,
            received_at_ms: received.map(|at| at.and_utc().timestamp_millis()),
        },
    );
    let verdict = StoredVerdict {
        week,
        verdict,
        rules: origin.into(),
    };
    Ok((verdict, snapshot))
}

/// What the server knows of a patrol's photos: arrived or not, EXIF time and place, reuse.
fn photo_evidence(
    conn: &mut DbConnection,
    hashes: &crate::photos::HashIndex,
    patrol: &str,
    tz: chrono_tz::Tz,
) -> ApiResult<Vec<PhotoEvidence>> {
    let rows: Vec<(String, Option<String>)> = patrol_photos::table
        .left_join(photos::table.on(photos::sha256.eq(patrol_photos::sha256)))
        .filter(patrol_photos::patrol_id.eq(patrol))
        .order(patrol_photos::sha256.asc())
        .select((patrol_photos::sha256, photos::exif.nullable()))
        .load(conn)?;
    let mut evidence = Vec::new();
    for (sha256, exif) in rows {
        let Some(exif) = exif else {
            evidence.push(PhotoEvidence {
                sha256,
                ..PhotoEvidence::default()
            });
            continue;
        };
        let exif: gridpatrol_photo::Exif = serde_json::from_str(&exif).unwrap_or_default();
        let taken_at_ms = exif.taken_at.as_deref().and_then(|taken| {
            let local = NaiveDateTime::parse_from_str(taken, "%Y-%m-%dT%H:%M:%S").ok()?;
            match exif
                .offset
                .as_deref()
                .and_then(|o| o.parse::<chrono::FixedOffset>().ok())
            {
                Some(offset) => offset
                    .from_local_datetime(&local)
                    .single()
                    .map(|t| t.timestamp_millis()),
                None => tz
                    .from_local_datetime(&local)
                    .earliest()
                    .map(|t| t.timestamp_millis()),
            }
        });
        let position = match (exif.lon, exif.lat) {
            (Some(lon), Some(lat)) => {
                let datum = match exif.gps_datum.as_deref().map(str::to_ascii_uppercase) {
                    Some(d) if d.contains("GCJ") => sync_protocol::schema::Datum::Gcj02,
                    Some(d) if d.contains("BD") => sync_protocol::schema::Datum::Bd09,
                    _ => sync_protocol::schema::Datum::Wgs84,
                };
                super::coords::to_wgs84(lon, lat, datum)
            }
            _ => None,
        };
        let reused_from = crate::photos::near_duplicates(conn, hashes, &sha256)?
            .into_iter()
            .find_map(|near| {
                near.patrols
                    .iter()
                    .find(|(other, _)| other != patrol)
                    .map(|(other, _)| (other.clone(), near.distance))
            });
        evidence.push(PhotoEvidence {
            sha256,
            received: true,
            taken_at_ms,
            position,
            reused_from,
        });
    }
    Ok(evidence)
}

/// `gridpatrol recompute-compliance`: every verdict judged again from the stored documents.
pub async fn recompute_all(state: &Arc<AppState>) -> ApiResult<usize> {
    state
        .db
        .write(|conn| -> ApiResult<()> {
            diesel::update(patrol_verdicts::table)
                .set(patrol_verdicts::version.eq(patrol_verdicts::version + 1))
                .execute(conn)?;
            Ok(())
        })
        .await?;
    judge_stale(state).await
}

/// The compliance worker of a serving process: judges stale patrols as they appear.
pub fn spawn_worker(state: Arc<AppState>) {
    tokio::spawn(async move {
        loop {
            if let Err(error) = judge_stale(&state).await {
                tracing::warn!(%error, "compliance worker");
            }
            tokio::select! {
                _ = state.wake_judging.notified() => {
                    // Let the patrols of a busy moment gather: phones syncing one after another
                    // are then judged in one claim and one verdict transaction, instead of two
                    // write transactions per sync competing with the syncs for SQLite's writer.
                    tokio::time::sleep(GATHER).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    });
}

/// How long the worker waits after a wake before judging: well under what a supervisor notices,
/// long enough for a busy server's syncs to gather into one batch.
const GATHER: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    /// The week turns at Monday 00:00 in the jurisdiction's zone, whatever zone the phone's clock
    /// is set to: a patrol at Sunday 23:59 China time belongs to the week before one at Monday
    /// 00:00, though both are Sunday in UTC.
    #[test]
    fn weeks_turn_at_monday_midnight_in_the_jurisdictions_zone() {
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().expect("zone");
        // Sunday 2026-11-29 23:59 +08:00 = 15:59 UTC; Monday 2026-11-30 00:00 +08:00 = 16:00 UTC.
        let sunday = chrono::Utc
            .with_ymd_and_hms(2026, 11, 29, 15, 59, 0)
            .single()
            .expect("time")
            .timestamp_millis();
        let monday = sunday + 60_000;
        let (before, before_monday) = iso_week(sunday, tz).expect("week");
        let (after, after_monday) = iso_week(monday, tz).expect("week");
        assert_eq!(before, "2026-W48");
        assert_eq!(after, "2026-W49");
        assert_eq!(before_monday.to_string(), "2026-11-23");
        assert_eq!(after_monday.to_string(), "2026-11-30");
        // In UTC both would be the same week.
        assert_eq!(
            iso_week(sunday, chrono_tz::UTC).map(|w| w.0),
            iso_week(monday, chrono_tz::UTC).map(|w| w.0)
        );
    }
}
