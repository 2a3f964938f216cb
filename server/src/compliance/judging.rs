//! Keeping verdicts current: a merge of a patrol's document, or a photo of it arriving or being
//! hashed, bumps the patrol's `version` (cheap, inside the write that caused it); the compliance
//! worker judges patrols whose `judged_version` is behind, off the request path, and records the
//! version it judged. A verdict is shown only when it is of the latest version.
//! `recompute-compliance` bumps every patrol and judges them all, and gives the same verdicts.
//! A patrol a sync just merged is judged from the view that sync left in memory ([`FreshViews`]),
//! and the snapshot it then owes is written when syncs pause ([`compact_owed`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDateTime, TimeZone};
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::verdict::{self, Context, PatrolRules, PhotoEvidence, Verdict};
use crate::app::AppState;
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult};
use crate::on_each_backend;
use crate::schema::{
    patrol_photos, patrol_verdicts, patrols, photos, sync_documents, sync_snapshots, users,
};
use crate::sync::stored::{SNAPSHOT_AFTER, Snapshot, StoredDoc};

/// Marks patrols' verdicts stale (creating their rows): `(patrol, grid, inspector)` each, in one
/// statement per 500 patrols.
pub fn mark_stale(conn: &mut DbConnection, patrols: &[(&str, i64, i64)]) -> ApiResult<()> {
    for chunk in patrols.chunks(500) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|&(patrol_id, grid_id, inspector_id)| {
                (
                    patrol_verdicts::patrol_id.eq(patrol_id),
                    patrol_verdicts::grid_id.eq(grid_id),
                    patrol_verdicts::inspector_id.eq(inspector_id),
                )
            })
            .collect();
        on_each_backend!(conn, |c| diesel::insert_into(patrol_verdicts::table)
            .values(&rows)
            .on_conflict(patrol_verdicts::patrol_id)
            .do_update()
            .set((
                patrol_verdicts::grid_id.eq(excluded(patrol_verdicts::grid_id)),
                patrol_verdicts::version.eq(patrol_verdicts::version + 1),
            ))
            .execute(c))?;
    }
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

/// Patrols as the syncs that changed them left them, for the worker to judge without loading and
/// replaying their changes (a third of judging's time), and the documents judged so whose
/// snapshot is owed. Views are only a hint: the worker uses one only when the stored document's
/// heads are still the view's, and otherwise (a later sync, another server process's sync, a
/// view dropped for room) loads the document as before.
///
/// A document judged from a view is not loaded, so it is not saved either: when a snapshot is
/// due (see [`crate::sync::stored`]), it is owed, and the worker writes it once syncs have paused
/// for [`QUIET`] ([`compact_owed`]). Saving inside the sync, or right after each judging, would
/// put that work back on the busy moment the view spares (measured: no gain). Owed snapshots are
/// kept in memory only; one lost with a restart is written when the document is next loaded.
#[derive(Default)]
pub struct FreshViews {
    inner: std::sync::Mutex<FreshInner>,
}

#[derive(Default)]
struct FreshInner {
    views: HashMap<String, Fresh>,
    bytes: usize,
    /// Documents judged from a view while their snapshot was due.
    owed: std::collections::BTreeSet<String>,
    /// When a sync last kept views.
    last_sync: Option<std::time::Instant>,
}

struct Fresh {
    heads: String,
    view: sync_protocol::schema::PatrolView,
    bytes: usize,
    at: std::time::Instant,
}

/// Room for views waiting to be judged: a few thousand typical patrols. A worker that falls behind
/// loads the rest from the database; views another process judged are dropped after
/// [`FRESH_FOR`].
const FRESH_BYTES: usize = 16 * 1024 * 1024;
const FRESH_FOR: Duration = Duration::from_secs(120);
/// Owed snapshots remembered at most (ids only: ~100 bytes each); past that, a document judged
/// from its view is loaded and saved at once, as without a view.
const OWED_MAX: usize = 100_000;
/// Owed snapshots are written once no sync changed a document for this long.
pub const QUIET: Duration = Duration::from_secs(2);

impl FreshViews {
    /// Keeps the views of patrols a sync just committed.
    pub fn keep(&self, saved: Vec<sync_protocol::server::SavedView>) {
        use sync_protocol::server::View;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !saved.is_empty() {
            inner.last_sync = Some(std::time::Instant::now());
        }
        for saved in saved {
            let View::Patrol(view) = saved.view else {
                continue;
            };
            let bytes = view_bytes(&view);
            if let Some(old) = inner.views.remove(&saved.id) {
                inner.bytes -= old.bytes;
            }
            if inner.bytes + bytes > FRESH_BYTES {
                let now = std::time::Instant::now();
                inner
                    .views
                    .retain(|_, f| now.duration_since(f.at) < FRESH_FOR);
                inner.bytes = inner.views.values().map(|f| f.bytes).sum();
                if inner.bytes + bytes > FRESH_BYTES {
                    continue;
                }
            }
            inner.bytes += bytes;
            let fresh = Fresh {
                heads: crate::sync::heads_text(&saved.heads),
                view,
                bytes,
                at: std::time::Instant::now(),
            };
            inner.views.insert(saved.id, fresh);
        }
    }

    /// The patrols this process holds views of.
    fn ids(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.views.keys().cloned().collect()
    }

    /// Takes a patrol's view, if it is of the document with these heads (as stored now).
    fn take(&self, id: &str, heads: &str) -> Option<sync_protocol::schema::PatrolView> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = inner.views.remove(id)?;
        inner.bytes -= fresh.bytes;
        (fresh.heads == heads).then_some(fresh.view)
    }

    /// Notes that a document's snapshot is owed; false when there is no room to remember it.
    fn owe(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.owed.len() >= OWED_MAX && !inner.owed.contains(id) {
            return false;
        }
        inner.owed.insert(id.to_string());
        true
    }

    /// Up to `most` owed documents, taken from the set, once syncs have been quiet for
    /// [`QUIET`]; or how long to wait before asking again.
    fn take_owed(&self, most: usize) -> Result<Vec<String>, Option<Duration>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.owed.is_empty() {
            return Err(None);
        }
        let since = inner.last_sync.map_or(QUIET, |at| at.elapsed());
        if since < QUIET {
            return Err(Some(QUIET - since));
        }
        let mut taken = Vec::with_capacity(most);
        while taken.len() < most {
            let Some(id) = inner.owed.pop_first() else {
                break;
            };
            taken.push(id);
        }
        Ok(taken)
    }

    /// Snapshots owed and not yet written.
    pub fn owed(&self) -> usize {
        self.inner.lock().map(|i| i.owed.len()).unwrap_or(0)
    }

    /// Views kept and not yet taken.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.views.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Roughly the memory a view holds.
fn view_bytes(view: &sync_protocol::schema::PatrolView) -> usize {
    use sync_protocol::schema::{Fix, Note, PhotoRef};
    std::mem::size_of_val(view)
        + view.track.len() * std::mem::size_of::<Fix>()
        + view
            .notes
            .iter()
            .map(|n| std::mem::size_of::<Note>() + n.text.len())
            .sum::<usize>()
        + view.photos.len() * (std::mem::size_of::<PhotoRef>() + 128)
        + view.problems.len() * 64
}

/// Patrols claimed at a time: enough that a full recompute spends its time judging, not in
/// transactions; a claim left by a process that died is taken again after ten minutes.
const CLAIM: i64 = 256;

/// Judges every stale patrol until none is left, and returns how many. Patrols are claimed a
/// batch at a time; the batch is judged on as many low-priority threads as there are cores (each
/// loading its documents on its own pooled connection, see [`in_background`]), and its verdicts are
/// written in one transaction.
pub async fn judge_stale(state: &Arc<AppState>) -> ApiResult<usize> {
    Ok(judge(state, Others::All).await?.0)
}

/// What a claim takes of the stale patrols the process holds no view of.
#[derive(Clone, Copy, PartialEq)]
enum Others {
    /// All of them (a recompute).
    All,
    /// Those not synced for [`QUIET`].
    Quiet,
    /// None: only patrols with views (the worker looks for the others once per [`QUIET`]).
    None,
}

/// [`judge_stale`] for the worker: it claims the patrols it holds views of first, and leaves a
/// patrol it has no view of for [`QUIET`] after the patrol's last sync, so that when several
/// server processes share the database, each judges the patrols its own syncs left views of
/// instead of loading and replaying the others' (a third of the patrols with two processes).
/// Also returns whether patrols were left so: the worker then looks again after [`QUIET`].
///
/// Claims until a claim comes back short of [`CLAIM`]: it then took everything claimable, and
/// patrols made stale since wake the worker again.
async fn judge(state: &Arc<AppState>, others: Others) -> ApiResult<(usize, bool)> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut judged = 0;
    loop {
        let stuck = now() - chrono::Duration::from_std(CLAIM_LEASE).unwrap_or_default();
        let mine = state.fresh.ids();
        let (claimed, left): (Vec<(String, i64, i64)>, bool) = state
            .db
            .write(move |conn| -> ApiResult<_> {
                let stale = || {
                    patrol_verdicts::table
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
                        .into_boxed()
                };
                let mut rows: Vec<(String, i64, i64)> = if mine.is_empty() {
                    Vec::new()
                } else {
                    stale()
                        .filter(patrol_verdicts::patrol_id.eq_any(&mine))
                        .limit(CLAIM)
                        .load(conn)?
                };
                let without_view = || stale().filter(patrol_verdicts::patrol_id.ne_all(&mine));
                let mut left = false;
                if (rows.len() as i64) < CLAIM && others != Others::None {
                    let mut claimable = without_view();
                    if others == Others::Quiet {
                        let synced_by_now =
                            now() - chrono::Duration::from_std(QUIET).unwrap_or_default();
                        let quiet = sync_documents::table
                            .filter(sync_documents::updated_at.le(synced_by_now))
                            .select(sync_documents::id);
                        claimable = claimable.filter(patrol_verdicts::patrol_id.eq_any(quiet));
                        // Whether any were left for now (a claim may have fewer than it could).
                        let recent = sync_documents::table
                            .filter(sync_documents::updated_at.gt(synced_by_now))
                            .select(sync_documents::id);
                        left = !without_view()
                            .filter(patrol_verdicts::patrol_id.eq_any(recent))
                            .limit(1)
                            .load::<(String, i64, i64)>(conn)?
                            .is_empty();
                    }
                    rows.extend(
                        claimable
                            .limit(CLAIM - rows.len() as i64)
                            .load::<(String, i64, i64)>(conn)?,
                    );
                }
                if !rows.is_empty() {
                    let ids: Vec<&String> = rows.iter().map(|(id, _, _)| id).collect();
                    diesel::update(
                        patrol_verdicts::table.filter(patrol_verdicts::patrol_id.eq_any(ids)),
                    )
                    .set(patrol_verdicts::claimed_at.eq(Some(now())))
                    .execute(conn)?;
                }
                Ok((rows, left))
            })
            .await?;
        if claimed.is_empty() {
            return Ok((judged, left));
        }
        let short = (claimed.len() as i64) < CLAIM;
        judged += claimed.len();
        // The claim is a lease: renewed while this batch is judged, so that a process that dies
        // holding it (SIGKILL, a lost machine) leaves its patrols to the others, or to itself
        // restarted, within CLAIM_LEASE and a worker's wake, not minutes.
        let renewal = {
            let state = state.clone();
            let ids: Vec<String> = claimed.iter().map(|(id, _, _)| id.clone()).collect();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CLAIM_LEASE / 4).await;
                    let ids = ids.clone();
                    let renewed = state
                        .db
                        .write(move |conn| -> ApiResult<usize> {
                            let mut n = 0;
                            for chunk in ids.chunks(500) {
                                n += diesel::update(
                                    patrol_verdicts::table
                                        .filter(patrol_verdicts::patrol_id.eq_any(chunk))
                                        .filter(patrol_verdicts::claimed_at.is_not_null()),
                                )
                                .set(patrol_verdicts::claimed_at.eq(Some(now())))
                                .execute(conn)?;
                            }
                            Ok(n)
                        })
                        .await;
                    if let Err(error) = renewed {
                        tracing::warn!(%error, "could not renew a judging lease");
                    }
                }
            })
        };
        let _stop_renewing = AbortOnDrop(renewal);
        crate::faults::point("compliance.judge.after_claim")?;
        let per_lane = claimed.len().div_ceil(cores);
        let mut claimed = claimed.into_iter();
        let lanes: Vec<Vec<(String, i64, i64)>> = std::iter::from_fn(|| {
            let lane: Vec<_> = claimed.by_ref().take(per_lane).collect();
            (!lane.is_empty()).then_some(lane)
        })
        .collect();
        let judged_lanes = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let jobs: Vec<_> = lanes
                    .into_iter()
                    .map(|lane| {
                        let state = &state;
                        move |conn: &mut DbConnection| judge_lane(state, conn, lane)
                    })
                    .collect();
                in_background(&state, "judging", jobs)
            })
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
        crate::faults::point("compliance.judge.before_write")?;
        state
            .db
            .write(move |conn| -> ApiResult<()> {
                write_verdicts(conn, verdicts)?;
                // Compaction: the documents just loaded from a long tail of changes are saved
                // whole, so the next load (a recompute, the console) starts from the save.
                crate::sync::stored::write(conn, &snapshots)
            })
            .await?;
        crate::faults::point("compliance.judge.after_write")?;
        if short {
            return Ok((judged, left));
        }
    }
}

/// Records verdicts: `(patrol, version judged, verdict, its JSON)` each, releasing the claims.
/// On PostgreSQL one statement for the batch (a statement per patrol was a round trip each, and
/// the worker's batches are 256 patrols); SQLite's statements are in-process calls.
fn write_verdicts(
    conn: &mut DbConnection,
    verdicts: Vec<(String, i64, StoredVerdict, String)>,
) -> ApiResult<()> {
    if verdicts.is_empty() {
        return Ok(());
    }
    let at = now();
    match conn {
        DbConnection::Sqlite(c) => {
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
                    .execute(c)?;
            }
        }
        DbConnection::Postgres(c) => {
            use diesel::sql_types::{Array, BigInt, Bool, Text, Timestamp};
            let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, version, stored, text) in verdicts {
                columns.0.push(id);
                columns.1.push(stored.week);
                columns.2.push(stored.verdict.counted);
                columns.3.push(text);
                columns.4.push(version);
            }
            diesel::sql_query(
                "UPDATE patrol_verdicts AS v SET week = u.week, counted = u.counted, \
                   verdict = u.verdict, judged_version = u.judged_version, claimed_at = NULL, \
                   computed_at = $6 \
                 FROM UNNEST($1, $2, $3, $4, $5) \
                   AS u (patrol_id, week, counted, verdict, judged_version) \
                 WHERE v.patrol_id = u.patrol_id",
            )
            .bind::<Array<Text>, _>(columns.0)
            .bind::<Array<Text>, _>(columns.1)
            .bind::<Array<Bool>, _>(columns.2)
            .bind::<Array<Text>, _>(columns.3)
            .bind::<Array<BigInt>, _>(columns.4)
            .bind::<Timestamp, _>(at)
            .execute(c)?;
        }
    }
    Ok(())
}

/// What one lane of a batch comes to: each patrol's verdict and snapshot, or why it was not judged.
type LaneOutcome = Vec<(String, i64, ApiResult<(StoredVerdict, Option<Snapshot>)>)>;

/// Runs each job on a thread of its own with its own pooled connection, and waits for them all.
/// The threads run at the lowest CPU priority: on a busy server the syncs (the phones waiting for
/// their receipts) go first and the worker takes what CPU is left; an idle server, or
/// `recompute-compliance`, gives it all the cores anyway.
fn in_background<T, J>(state: &AppState, name: &str, jobs: Vec<J>) -> Vec<ApiResult<T>>
where
    T: Send,
    J: FnOnce(&mut DbConnection) -> ApiResult<T> + Send,
{
    std::thread::scope(|scope| {
        let threads: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn_scoped(scope, move || {
                        background_priority();
                        state.db.run_blocking(job)
                    })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| match thread {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(ApiError::internal(format!("a {name} thread panicked")))
                }),
                Err(e) => Err(ApiError::internal(format!("no {name} thread: {e}"))),
            })
            .collect()
    })
}

/// One lane: each patrol judged from the view its sync left ([`FreshViews`]) when that is of the
/// document as stored, the others' stored forms loaded together and opened.
fn judge_lane(
    state: &AppState,
    conn: &mut DbConnection,
    lane: Vec<(String, i64, i64)>,
) -> ApiResult<LaneOutcome> {
    type Row = (String, NaiveDateTime, String, i32);
    let ids: Vec<&str> = lane.iter().map(|(id, _, _)| id.as_str()).collect();
    let documents: HashMap<String, Row> = sync_documents::table
        .filter(sync_documents::id.eq_any(&ids))
        .select((
            sync_documents::id,
            sync_documents::updated_at,
            sync_documents::heads,
            sync_documents::change_count,
        ))
        .load::<Row>(conn)?
        .into_iter()
        .map(|row| (row.0.clone(), row))
        .collect();
    // Each patrol's view, if its sync left one of the document as stored now.
    let mut to_load = Vec::new();
    let mut with_view = Vec::new();
    for id in ids {
        let taken = documents
            .get(id)
            .and_then(|(_, _, heads, count)| Some((state.fresh.take(id, heads)?, *count)));
        match taken {
            Some((view, count)) => with_view.push((id, view, count)),
            None => to_load.push(id),
        }
    }
    let snapshotted: HashMap<String, i32> = if with_view.is_empty() {
        HashMap::new()
    } else {
        sync_snapshots::table
            .filter(sync_snapshots::doc_id.eq_any(with_view.iter().map(|(id, _, _)| *id)))
            .select((sync_snapshots::doc_id, sync_snapshots::change_count))
            .load::<(String, i32)>(conn)?
            .into_iter()
            .collect()
    };
    let mut views = HashMap::new();
    for (id, view, count) in with_view {
        let since = count - snapshotted.get(id).copied().unwrap_or(0);
        // A snapshot due is owed, to be written when syncs pause; without room to remember it,
        // the document is loaded and saved now.
        if since < SNAPSHOT_AFTER as i32 || state.fresh.owe(id) {
            views.insert(id.to_string(), view);
        } else {
            to_load.push(id);
        }
    }
    let mut stored = if to_load.is_empty() {
        HashMap::new()
    } else {
        crate::sync::stored::load_many(conn, &to_load)?
    };
    Ok(lane
        .into_iter()
        .map(|(id, grid_id, version)| {
            let received = documents.get(&id).map(|row| row.1);
            let view = views.remove(&id);
            let from = if view.is_some() { "view" } else { "store" };
            state
                .metrics
                .judged
                .get_or_create(&crate::metrics::JudgedLabels { from })
                .inc();
            let outcome = match view {
                Some(view) => judge_view(state, conn, &id, grid_id, &view, received)
                    .map(|verdict| (verdict, None)),
                None => {
                    let doc = stored.remove(&id).unwrap_or_default();
                    judge_one(state, conn, &id, grid_id, doc, received)
                }
            };
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
    drop(doc);
    Ok((
        judge_view(state, conn, id, grid_id, &view, received)?,
        snapshot,
    ))
}

/// Judges one patrol as read from its document.
fn judge_view(
    state: &AppState,
    conn: &mut DbConnection,
    id: &str,
    grid_id: i64,
    view: &sync_protocol::schema::PatrolView,
    received: Option<NaiveDateTime>,
) -> ApiResult<StoredVerdict> {
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
    // A patrol's photo links are projected from its document in the transaction that merged it,
    // so a patrol whose document references no photo has none: no query for it.
    let evidence = if view.photos.is_empty() {
        Vec::new()
    } else {
        photo_evidence(conn, &state.photos.hashes, id, tz)?
    };
    let verdict = verdict::judge(
        view,
        &Context {
            key_points: &key_points,
            visit_radius_m,
            grid: &grid.shape,
            rules: &rules,
            photos: &evidence,
            received_at_ms: received.map(|at| at.and_utc().timestamp_millis()),
            replayed: if view.status == sync_protocol::schema::PatrolStatus::Submitted {
                find_replay(conn, id, view, &rules, tz)?
            } else {
                None
            },
        },
    );
    Ok(StoredVerdict {
        week,
        verdict,
        rules: origin.into(),
    })
}

/// Candidates compared with a patrol in the search for a replayed track (the patrols sharing the
/// most index cells with it).
const REPLAY_CANDIDATES: usize = 32;

/// The earlier patrol (by the server's receive time, then id) whose track this patrol's replays,
/// if any: the patrols passing the same ~250 m cells, within the look-back, most cells first,
/// compared point for point ([`super::replay::compare`]).
fn find_replay(
    conn: &mut DbConnection,
    patrol: &str,
    view: &sync_protocol::schema::PatrolView,
    rules: &PatrolRules,
    tz: chrono_tz::Tz,
) -> ApiResult<Option<verdict::Replayed>> {
    use super::replay::{self, Tolerance};
    use crate::schema::{patrol_tracks, track_cells};
    let print = replay::print_of(&view.track);
    if print.len() < rules.replay_min_fixes as usize {
        return Ok(None);
    }
    let Some(received) = patrols::table
        .find(patrol)
        .select(patrols::first_received_at)
        .first::<NaiveDateTime>(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let cells = replay::cells(&print);
    let mut shared: HashMap<String, u32> = HashMap::new();
    for chunk in cells.chunks(500) {
        for other in track_cells::table
            .filter(track_cells::cell.eq_any(chunk))
            .filter(track_cells::patrol_id.ne(patrol))
            .select(track_cells::patrol_id)
            .load::<String>(conn)?
        {
            *shared.entry(other).or_default() += 1;
        }
    }
    if shared.is_empty() {
        return Ok(None);
    }
    let since =
        received - chrono::Duration::seconds((rules.replay_lookback_days * 86_400.0) as i64);
    // Earlier patrols among them, by the server's receive time (then id), within the look-back.
    let mut earlier: Vec<(String, u32)> = Vec::new();
    let names: Vec<&String> = shared.keys().collect();
    for chunk in names.chunks(500) {
        let rows: Vec<(String, NaiveDateTime)> = patrols::table
            .filter(patrols::id.eq_any(chunk))
            .filter(patrols::first_received_at.ge(since))
            .select((patrols::id, patrols::first_received_at))
            .load(conn)?;
        for (id, at) in rows {
            if at < received || (at == received && id.as_str() < patrol) {
                let n = shared[&id];
                earlier.push((id, n));
            }
        }
    }
    earlier.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    earlier.truncate(REPLAY_CANDIDATES);
    if earlier.is_empty() {
        return Ok(None);
    }
    let tolerance = Tolerance {
        metres: rules.replay_tolerance_m,
        min_fixes: rules.replay_min_fixes,
        min_minutes: rules.replay_min_minutes,
        min_distance_m: rules.replay_min_distance_m,
        min_shift_minutes: rules.replay_min_shift_minutes,
    };
    let ids: Vec<&str> = earlier.iter().map(|(id, _)| id.as_str()).collect();
    let prints: Vec<(String, Vec<u8>)> = patrol_tracks::table
        .filter(patrol_tracks::patrol_id.eq_any(&ids))
        .select((patrol_tracks::patrol_id, patrol_tracks::fixes))
        .load(conn)?;
    let mut best: Option<(String, replay::ReplayMatch)> = None;
    for (other, bytes) in prints {
        if let Some(found) = replay::compare(&print, &replay::decode(&bytes), &tolerance)
            && best.as_ref().is_none_or(|(id, b)| {
                found.matched > b.matched || (found.matched == b.matched && other < *id)
            })
        {
            best = Some((other, found));
        }
    }
    let Some((other, found)) = best else {
        return Ok(None);
    };
    Ok(Some(verdict::Replayed {
        earlier: earlier_patrol(conn, other, tz, 0, false)?,
        found,
    }))
}

/// An earlier patrol as a reuse or replay flag names it: its id, its inspector and its day in the
/// jurisdiction's zone.
fn earlier_patrol(
    conn: &mut DbConnection,
    patrol: String,
    tz: chrono_tz::Tz,
    distance: u32,
    identical: bool,
) -> ApiResult<verdict::Reuse> {
    let found: Option<(String, NaiveDateTime)> = patrols::table
        .inner_join(users::table.on(users::id.eq(patrols::inspector_id)))
        .filter(patrols::id.eq(&patrol))
        .select((users::display_name, patrols::started_at))
        .first(conn)
        .optional()?;
    let (inspector, started) = found.unwrap_or_default();
    Ok(verdict::Reuse {
        patrol,
        inspector,
        date: started
            .and_utc()
            .with_timezone(&tz)
            .format("%Y-%m-%d")
            .to_string(),
        distance,
        identical,
    })
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
    // When the patrol reached the server and its jurisdiction, for telling an earlier patrol with
    // the same photo file: one look for all its photos.
    let this_received: Option<NaiveDateTime> = patrols::table
        .find(patrol)
        .select(patrols::first_received_at)
        .first(conn)
        .optional()?;
    // Within the jurisdiction (the patrol's top-level grid), as for look-alikes: the flag names
    // the other inspector, whom people outside it have no business seeing.
    let root: Option<String> = patrols::table
        .inner_join(crate::schema::grids::table.on(crate::schema::grids::id.eq(patrols::grid_id)))
        .filter(patrols::id.eq(patrol))
        .select(crate::schema::grids::path)
        .first::<String>(conn)
        .optional()?
        .and_then(|path| {
            crate::grids::path_ids(&path)
                .first()
                .map(|root| format!("/{root}/"))
        });
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
        // The very same file in an earlier patrol (by the server's receive time), any
        // inspector's; else the nearest earlier look-alike.
        let identical: Option<String> = match (this_received, &root) {
            (Some(received), Some(root)) => patrol_photos::table
                .inner_join(patrols::table.on(patrols::id.eq(patrol_photos::patrol_id)))
                .inner_join(
                    crate::schema::grids::table
                        .on(crate::schema::grids::id.eq(patrol_photos::grid_id)),
                )
                .filter(crate::schema::grids::path.like(format!("{root}%")))
                .filter(patrol_photos::sha256.eq(&sha256))
                .filter(patrol_photos::patrol_id.ne(patrol))
                // Received earlier; of two received in one sync, the smaller id is the earlier.
                .filter(
                    patrols::first_received_at
                        .lt(received)
                        .or(patrols::first_received_at
                            .eq(received)
                            .and(patrols::id.lt(patrol))),
                )
                .order((patrols::first_received_at.asc(), patrols::id.asc()))
                .select(patrol_photos::patrol_id)
                .first(conn)
                .optional()?,
            _ => None,
        };
        let earlier = match identical {
            Some(other) => Some((other, 0, true)),
            None => crate::photos::near_duplicates(conn, hashes, &sha256)?
                .into_iter()
                .find_map(|near| {
                    near.patrols
                        .iter()
                        .find(|(other, _)| other != patrol)
                        .map(|(other, _)| (other.clone(), near.distance, false))
                }),
        };
        let reused_from = match earlier {
            None => None,
            Some((other, distance, identical)) => {
                Some(earlier_patrol(conn, other, tz, distance, identical)?)
            }
        };
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

/// Owed snapshots written per transaction: a sync arriving waits at most for one batch.
const COMPACT: usize = 64;

/// Writes the snapshots owed by patrols judged from their views ([`FreshViews`]), a batch at a
/// time on a low-priority thread, for as long as syncs stay quiet. Returns how long to wait before
/// trying again, or `None` when nothing is owed.
pub async fn compact_owed(state: &Arc<AppState>) -> ApiResult<Option<Duration>> {
    loop {
        let ids = match state.fresh.take_owed(COMPACT) {
            Ok(ids) => ids,
            Err(wait) => return Ok(wait),
        };
        let snapshots = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let job = |conn: &mut DbConnection| owed_snapshots(conn, &ids);
                in_background(&state, "compaction", vec![job])
                    .pop()
                    .unwrap_or_else(|| Err(ApiError::internal("no compaction result")))
            })
            .await
            .map_err(|_| ApiError::internal("compaction was cancelled"))??
        };
        if !snapshots.is_empty() {
            crate::faults::point("snapshot.compact.before_write")?;
            state
                .db
                .write(move |conn| crate::sync::stored::write(conn, &snapshots))
                .await?;
            crate::faults::point("snapshot.compact.after_write")?;
        }
    }
}

/// The snapshots of these documents that are due: each loaded (from its last snapshot and the
/// changes logged since) and saved whole.
fn owed_snapshots(conn: &mut DbConnection, ids: &[String]) -> ApiResult<Vec<Snapshot>> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut snapshots = Vec::new();
    for (id, stored) in crate::sync::stored::load_many(conn, &ids)? {
        match stored.open(&id) {
            Ok((_, snapshot)) => snapshots.extend(snapshot),
            Err(error) => tracing::warn!(%error, doc = %id, "could not compact a document"),
        }
    }
    Ok(snapshots)
}

/// The compliance worker of a serving process: judges stale patrols as they appear, and writes
/// owed snapshots when syncs pause.
pub fn spawn_worker(state: Arc<AppState>) {
    tokio::spawn(async move {
        // When the worker last looked for stale patrols it holds no view of: at most once per
        // QUIET, as those wait that long anyway. Every wake (each busy moment's syncs) looking
        // for them cost a few scans of the verdicts while nearly always finding none.
        let mut looked: Option<Instant> = None;
        loop {
            let look = looked.is_none_or(|at| at.elapsed() >= QUIET);
            if look {
                looked = Some(Instant::now());
            }
            let others = if look { Others::Quiet } else { Others::None };
            let deferred = judge(&state, others).await.map_or_else(
                |error| {
                    tracing::warn!(%error, "compliance worker");
                    false
                },
                |(_, deferred)| deferred,
            );
            let compact_again = compact_owed(&state).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "compaction");
                None
            });
            // Look again after QUIET when patrols were left for now, or when this wake did not
            // look (whatever synced since may have left patrols without a view).
            let look_again = if look {
                deferred.then_some(QUIET)
            } else {
                looked.map(|at| QUIET.saturating_sub(at.elapsed()))
            };
            let retry = [look_again, compact_again].into_iter().flatten().min();
            tokio::select! {
                _ = state.wake_judging.notified() => {
                    // Let the patrols of a busy moment gather: phones syncing one after another
                    // are then judged in one claim and one verdict transaction, instead of two
                    // write transactions per sync competing with the syncs for SQLite's writer.
                    tokio::time::sleep(GATHER).await;
                }
                // Also looks every few seconds for leases a dead process left to expire.
                _ = tokio::time::sleep(retry.unwrap_or(CLAIM_LEASE / 4)) => {}
            }
        }
    });
}

/// How long a claim on patrols to judge lasts without renewal (see [`judge`]).
pub const CLAIM_LEASE: Duration = Duration::from_secs(20);

/// Aborts a task when dropped (a lease's renewal ends with the batch, however the batch ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the worker waits after a wake before judging: well under what a supervisor notices,
/// long enough for a busy server's syncs to gather into one batch.
const GATHER: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, fixes: usize) -> sync_protocol::server::View {
        use sync_protocol::schema::*;
        let fix = Fix {
            at_ms: 0,
            lon: 108.52,
            lat: 25.93,
            datum: Datum::Wgs84,
            accuracy_m: None,
            source: FixSource::Gnss,
            mock: false,
        };
        sync_protocol::server::View::Patrol(PatrolView {
            identity: Identity {
                kind: DocKind::Patrol,
                id: id.into(),
                grid: "522632100201".into(),
                inspector: 1,
                device: 1,
            },
            method: Method::Routine,
            started_at_ms: 0,
            ended_at_ms: None,
            status: PatrolStatus::Recording,
            track: vec![fix; fixes],
            notes: Vec::new(),
            photos: Vec::new(),
            problems: Vec::new(),
            review: None,
        })
    }

    fn saved(id: &str, head: u8, fixes: usize) -> sync_protocol::server::SavedView {
        sync_protocol::server::SavedView {
            id: id.into(),
            heads: vec![automerge::ChangeHash([head; 32])],
            view: view(id, fixes),
        }
    }

    /// A view is handed over once, and only for the document state it was read from; the room
    /// views take stays bounded, however many syncs keep them and the worker does not take.
    #[test]
    fn fresh_views_are_taken_once_for_their_heads_and_stay_bounded() {
        let fresh = FreshViews::default();
        let heads = |b: u8| crate::sync::heads_text(&[automerge::ChangeHash([b; 32])]);
        fresh.keep(vec![saved("a", 1, 270), saved("b", 2, 270)]);
        assert_eq!(fresh.len(), 2);
        let taken = fresh.take("a", &heads(1)).expect("a's view");
        assert_eq!((taken.identity.id.as_str(), taken.track.len()), ("a", 270));
        assert!(fresh.take("a", &heads(1)).is_none(), "taken once");
        // b changed since its view was kept (another process's sync): not used, and dropped.
        assert!(fresh.take("b", &heads(3)).is_none());
        assert!(fresh.is_empty());
        // A newer sync of a document replaces its view.
        fresh.keep(vec![saved("c", 4, 10)]);
        fresh.keep(vec![saved("c", 5, 20)]);
        assert!(fresh.take("c", &heads(4)).is_none());
        fresh.keep(vec![saved("c", 5, 20)]);
        let c = fresh.take("c", &heads(5)).expect("c");
        assert_eq!(c.track.len(), 20);
        // Thousands of 4-hour patrols nobody takes: the views stop at the room they have.
        for n in 0..2_000 {
            fresh.keep(vec![saved(&format!("p{n}"), 6, 1_440)]);
        }
        let bytes = fresh.inner.lock().expect("lock").bytes;
        assert!(bytes <= FRESH_BYTES, "{bytes}");
        assert!(fresh.len() > 100 && fresh.len() < 2_000, "{}", fresh.len());
    }

    /// Owed snapshots wait until syncs have paused for [`QUIET`], come out once each and a batch
    /// at a time, and are remembered only up to [`OWED_MAX`].
    #[test]
    fn owed_snapshots_wait_for_a_quiet_moment_and_stay_bounded() {
        let fresh = FreshViews::default();
        assert_eq!(fresh.take_owed(10), Err(None), "nothing owed");
        assert!(fresh.owe("a") && fresh.owe("b") && fresh.owe("a"));
        assert_eq!(fresh.owed(), 2);
        // No sync yet in this process: quiet.
        assert_eq!(fresh.take_owed(1), Ok(vec!["a".to_string()]));
        // A sync just now: wait for the rest of the quiet period.
        fresh.keep(vec![saved("c", 1, 10)]);
        match fresh.take_owed(10) {
            Err(Some(wait)) => assert!(wait > Duration::ZERO && wait <= QUIET, "{wait:?}"),
            other => panic!("{other:?}"),
        }
        fresh.inner.lock().expect("lock").last_sync =
            Some(std::time::Instant::now() - QUIET - Duration::from_millis(1));
        assert_eq!(fresh.take_owed(10), Ok(vec!["b".to_string()]));
        assert_eq!(fresh.take_owed(10), Err(None));
        for n in 0..OWED_MAX {
            assert!(fresh.owe(&format!("p{n}")));
        }
        assert!(
            !fresh.owe("one more"),
            "no room: the caller loads and saves it now"
        );
        assert!(fresh.owe("p7"), "already owed");
        assert_eq!(fresh.owed(), OWED_MAX);
    }

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
