//! Sync: the server side of `sync-protocol` over the database. The algorithm (merge, per-change
//! authorisation, what the phone lacks) lives in the protocol crate; this module supplies the facts
//! ([`DeviceAuthority`]) and the storage ([`DbStore`]): an append-only change store keyed by change
//! hash, and the relational rows projected from each document in the same transaction.

pub mod api;
pub mod stored;

use std::collections::HashMap;
use std::sync::Arc;

use automerge::ActorId;
use chrono::{DateTime, NaiveDateTime};
use diesel::prelude::*;
use diesel::upsert::excluded;
use geo::{Distance, Haversine, Point};
use sync_protocol::schema::{self, DocKind};
use sync_protocol::server::{Authority, FeedItem, FeedPage, Merged, Store, View};
use sync_protocol::wire::{Cursor, Hash};

use crate::db::{DbConnection, Replanned, now};
use crate::error::{ApiError, ApiResult};
use crate::grids::index::GridIndex;
use crate::on_each_backend;
use crate::schema::{grids, patrols, problems, sync_changes, sync_documents};

/// What the server knows about the device that is syncing.
pub struct DeviceAuthority {
    pub user_id: i64,
    pub device_id: i64,
    pub actor: ActorId,
    /// Paths of grids where the user is an inspector.
    pub author_paths: Vec<String>,
    /// Paths of grids where the user supervises (leader, deputy, supervisor, admin).
    pub review_paths: Vec<String>,
    pub index: Arc<GridIndex>,
}

impl DeviceAuthority {
    /// A device of a user with these roles: an inspector authors in their grids, a leader,
    /// deputy, supervisor or admin reviews in theirs.
    pub fn new(
        user_id: i64,
        roles: &[crate::auth::RoleGrant],
        device_id: i64,
        actor: ActorId,
        index: Arc<GridIndex>,
    ) -> DeviceAuthority {
        let paths = |accept: fn(crate::auth::Role) -> bool| -> Vec<String> {
            roles
                .iter()
                .filter(|g| accept(g.role))
                .map(|g| g.grid_path.clone())
                .collect()
        };
        DeviceAuthority {
            user_id,
            device_id,
            actor,
            author_paths: paths(|r| r == crate::auth::Role::Inspector),
            review_paths: paths(crate::auth::Role::manages),
            index,
        }
    }

    fn path_of(&self, code: &str) -> Option<String> {
        self.index.get_by_code(code).map(|g| self.index.path_of(g))
    }
}

impl Authority for DeviceAuthority {
    fn user_id(&self) -> i64 {
        self.user_id
    }
    fn device_id(&self) -> i64 {
        self.device_id
    }
    fn actor(&self) -> &ActorId {
        &self.actor
    }
    fn may_author(&self, grid: &str) -> bool {
        self.path_of(grid).is_some_and(|path| {
            self.author_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        })
    }
    fn may_review(&self, grid: &str) -> bool {
        self.path_of(grid).is_some_and(|path| {
            self.review_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        })
    }
}

/// Most log entries one response carries from the feed; the cursor then continues from there.
pub const FEED_BATCH: i64 = 200;

/// Past this many bytes of changes a response's feed page ends early (after the whole entry that
/// crossed it), so that a phone on 2G gets a page it can download: a new phone of an inspector
/// with years of patrols pulls them a few hundred KB at a time.
pub const FEED_BYTES: usize = 512 * 1024;

/// The protocol's storage, inside one write transaction.
pub struct DbStore<'a> {
    pub conn: &'a mut DbConnection,
    pub authority: &'a DeviceAuthority,
    /// When each document loaded in this transaction was first stored.
    pub created: HashMap<String, NaiveDateTime>,
    /// Changes merged in this request, appended to the log all at once by [`DbStore::append`].
    pending: Vec<NewChange>,
    /// Documents first stored by this request, and the rows of every document it changed:
    /// written together by [`DbStore::append`] too (a few statements, not a few per document).
    new_documents: Vec<NewDocument>,
    projections: Vec<Projection>,
    /// The log's newest entry once [`DbStore::append`] appended on PostgreSQL (which it learns
    /// there without another query).
    newest: Option<i64>,
}

impl<'a> DbStore<'a> {
    pub fn new(conn: &'a mut DbConnection, authority: &'a DeviceAuthority) -> Self {
        DbStore {
            conn,
            authority,
            created: HashMap::new(),
            pending: Vec::new(),
            new_documents: Vec::new(),
            projections: Vec::new(),
            newest: None,
        }
    }

    /// Appends the request's new changes to the log, once every document is saved: as late as
    /// possible, because on PostgreSQL this takes the log's append lock, held until the commit.
    /// Sets each document's `last_seq` to its newest entry.
    pub fn append(&mut self) -> ApiResult<()> {
        // Before the append lock: the new documents' rows (their projections refer to them),
        // then the projections.
        for rows in std::mem::take(&mut self.new_documents).chunks(500) {
            on_each_backend!(self.conn, |c| diesel::insert_into(sync_documents::table)
                .values(rows)
                .execute(c))?;
        }
        write_projections(self.conn, &std::mem::take(&mut self.projections))?;
        if self.pending.is_empty() {
            return Ok(());
        }
        // One entry per document (`save` queues one).
        let rows = std::mem::take(&mut self.pending);
        let docs: Vec<String> = rows.iter().map(|r| r.doc_id.clone()).collect();
        // Nothing here is stored yet: each document is locked (`lock`, new ones included) and its
        // merge left out what was stored under that lock. So a plain insert, without conflict
        // handling and without a key on the change hash.
        match &mut *self.conn {
            DbConnection::Sqlite(c) => {
                // 500 rows of 8 values: well under SQLite's 32,766 bound parameters.
                for chunk in rows.chunks(500) {
                    diesel::insert_into(sync_changes::table)
                        .values(chunk)
                        .execute(c)?;
                }
                let newest = sync_changes::table
                    .filter(sync_changes::doc_id.eq(sync_documents::id))
                    .select(diesel::dsl::max(sync_changes::seq))
                    .single_value()
                    .assume_not_null();
                diesel::update(sync_documents::table.filter(sync_documents::id.eq_any(&docs)))
                    .set(sync_documents::last_seq.eq(newest))
                    .execute(c)?;
            }
            DbConnection::Postgres(c) => {
                // Sequence numbers are handed out at insert, not at commit: without this lock a
                // transaction holding seq 100 could commit after one holding 101, and a phone
                // whose cursor moved past 101 would never hear of 100. Held until the commit, it
                // makes the log grow in commit order (SQLite gets that from its single writer).
                diesel::sql_query("SELECT pg_advisory_xact_lock(7417001)").execute(c)?;
                // One statement with eight array parameters, whatever the number of rows: a
                // multi-row VALUES list would be parsed and planned anew with 8 parameters a row,
                // all while the append lock is held.
                use diesel::sql_types::{Array, BigInt, Binary, Integer, Text, Timestamp};
                let mut columns = (
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                    Vec::with_capacity(rows.len()),
                );
                for row in rows {
                    columns.0.push(row.doc_id);
                    columns.1.push(row.hashes);
                    columns.2.push(row.bytes);
                    columns.3.push(row.change_count);
                    columns.4.push(row.actor);
                    columns.5.push(row.device_id);
                    columns.6.push(row.user_id);
                    columns.7.push(row.received_at);
                }
                // The documents' `last_seq` in the same statement, from what the insert returns.
                // Named by the ids in $9, so that their rows are found through the key (joined
                // to the aggregate instead, the planner scans the whole table).
                let appended = diesel::sql_query(
                    "WITH appended AS ( \
                       INSERT INTO sync_changes (doc_id, hashes, bytes, change_count, actor, \
                         device_id, user_id, received_at) \
                       SELECT doc_id, hashes, bytes, change_count, actor, device_id, user_id, \
                         received_at \
                       FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8) WITH ORDINALITY \
                         AS r (doc_id, hashes, bytes, change_count, actor, device_id, user_id, \
                           received_at, n) \
                       ORDER BY n \
                       RETURNING doc_id, seq) \
                     UPDATE sync_documents SET last_seq = \
                       (SELECT MAX(seq) FROM appended WHERE appended.doc_id = sync_documents.id) \
                     WHERE sync_documents.id = ANY($9) \
                     RETURNING last_seq",
                )
                .bind::<Array<Text>, _>(columns.0)
                .bind::<Array<Binary>, _>(columns.1)
                .bind::<Array<Binary>, _>(columns.2)
                .bind::<Array<Integer>, _>(columns.3)
                .bind::<Array<Text>, _>(columns.4)
                .bind::<Array<BigInt>, _>(columns.5)
                .bind::<Array<BigInt>, _>(columns.6)
                .bind::<Array<Timestamp>, _>(columns.7)
                .bind::<Array<Text>, _>(docs)
                .load::<LastSeq>(c)?;
                // Under the append lock every earlier entry is committed and no later one
                // exists: the newest of these is the log's newest.
                self.newest = appended.iter().map(|r| r.last_seq).max();
            }
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct LastSeq {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
}

/// Merges and stores a whole request inside the caller's write transaction, and returns each
/// document's result (a refusal carries its code). `POST /v1/sync` does the same in two steps, so
/// that the costly merge runs outside the write lock; this is for the server's own writes (a
/// supervisor's review from the console) and for benchmarks.
pub fn store_request(
    conn: &mut DbConnection,
    request: &sync_protocol::wire::SyncRequest,
    authority: &DeviceAuthority,
    limits: &sync_protocol::Limits,
) -> ApiResult<Vec<sync_protocol::wire::DocResult>> {
    let premerged = sync_protocol::server::premerge(request, authority, limits, 0, |id| {
        load_changes(conn, id)
    })?;
    let mut store = DbStore::new(conn, authority);
    let handled = sync_protocol::server::handle(request, authority, &mut store, limits, premerged)?;
    store.append()?;
    let nothing_else = FeedPage {
        items: Vec::new(),
        cursor: request.cursor,
        reset: false,
    };
    Ok(handled.respond(nothing_else, 0).results)
}

/// A document first stored: its `sync_documents` row. No field falls back to a column default, so
/// that diesel writes a batch of these as one statement on SQLite too (see [`NewChange`]).
#[derive(Insertable)]
#[diesel(table_name = sync_documents, treat_none_as_default_value = false)]
struct NewDocument {
    id: String,
    kind: String,
    grid_id: i64,
    inspector_id: i64,
    heads: String,
    change_count: i32,
    bytes: i64,
    version: i64,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
    last_seq: i64,
}

/// A log entry to append: the new changes one request brought to one document. No field falls
/// back to a column default, so diesel writes a batch of these as one multi-row `INSERT` on
/// SQLite too (with its default, every field may stand for `DEFAULT`, which SQLite's `VALUES`
/// lacks, and diesel then inserts row by row).
#[derive(Insertable)]
#[diesel(table_name = sync_changes, treat_none_as_default_value = false)]
pub struct NewChange {
    doc_id: String,
    /// The changes' 32-byte hashes, back to back, in the order of `bytes`.
    hashes: Vec<u8>,
    /// The changes' plain chunks, back to back (as Automerge's `save_after` writes them).
    bytes: Vec<u8>,
    change_count: i32,
    actor: String,
    device_id: i64,
    user_id: i64,
    received_at: NaiveDateTime,
}

pub(crate) fn heads_text(heads: &[automerge::ChangeHash]) -> String {
    heads
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_heads(text: &str) -> Vec<automerge::ChangeHash> {
    text.split(',').filter_map(|h| h.parse().ok()).collect()
}

fn timestamp(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.naive_utc())
        .unwrap_or_default()
}

/// A patrol's projected row, as written and as read back (`rebuild-projections` must reproduce it
/// exactly, which the tests check by comparing rows).
#[derive(Insertable, Queryable, Debug, PartialEq)]
#[diesel(table_name = patrols, treat_none_as_default_value = false)]
pub struct PatrolRow {
    pub id: String,
    pub grid_id: i64,
    pub inspector_id: i64,
    pub device_id: i64,
    pub method: String,
    pub status: String,
    pub started_at: NaiveDateTime,
    pub ended_at: Option<NaiveDateTime>,
    pub fix_count: i32,
    pub distance_m: f64,
    pub photo_count: i32,
    pub note_count: i32,
    pub problem_count: i32,
    pub review_state: Option<String>,
    pub review_comment: Option<String>,
    pub reviewer_id: Option<i64>,
    pub first_received_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = problems, treat_none_as_default_value = false)]
pub struct ProblemRow {
    id: String,
    grid_id: i64,
    patrol_id: String,
    inspector_id: i64,
    category: String,
    description: String,
    disposition: String,
    lon: f64,
    lat: f64,
    found_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// Length of the track in metres (great-circle, in the fixes' own datum: the datum shifts nearby
/// fixes alike, so distances hardly change).
pub fn track_length_m(track: &[schema::Fix]) -> f64 {
    track
        .windows(2)
        .map(|w| {
            Haversine.distance(
                Point::new(w[0].lon, w[0].lat),
                Point::new(w[1].lon, w[1].lat),
            )
        })
        .sum()
}

/// When the server first and last stored a change of the document: the projection's
/// `first_received_at` and `updated_at`, derived from the change store so a rebuild gives the same.
fn received_span(conn: &mut DbConnection, id: &str) -> ApiResult<(NaiveDateTime, NaiveDateTime)> {
    let (first, last): (Option<NaiveDateTime>, Option<NaiveDateTime>) = sync_changes::table
        .filter(sync_changes::doc_id.eq(id))
        .select((
            diesel::dsl::min(sync_changes::received_at),
            diesel::dsl::max(sync_changes::received_at),
        ))
        .first(conn)?;
    let at = now();
    Ok((first.unwrap_or(at), last.unwrap_or(at)))
}

/// Recomputes every projection row from the change store (`gridpatrol rebuild-projections`); the
/// rows come out identical to those written while syncing. Returns the documents projected.
pub fn rebuild_projections(conn: &mut DbConnection) -> ApiResult<usize> {
    diesel::delete(patrols::table).execute(conn)?;
    diesel::delete(problems::table).execute(conn)?;
    diesel::delete(crate::schema::patrol_tracks::table).execute(conn)?;
    diesel::delete(crate::schema::track_cells::table).execute(conn)?;
    let docs: Vec<(String, i64, NaiveDateTime)> = sync_documents::table
        .order(sync_documents::created_at.asc())
        .select((
            sync_documents::id,
            sync_documents::grid_id,
            sync_documents::created_at,
        ))
        .load(conn)?;
    for (id, grid_id, created) in &docs {
        let doc = stored::load_one(conn, id)?
            .load()
            .map_err(|e| ApiError::internal(format!("stored document {id} does not load: {e}")))?;
        let (_, last) = received_span(conn, id)?;
        let view = View::read(&doc)
            .map_err(|e| ApiError::internal(format!("stored document {id}: {e}")))?;
        write_projections(conn, &[projection(&view, *grid_id, (*created, last))])?;
    }
    Ok(docs.len())
}

/// The relational rows of a document (a patrol or a problem) from its merged state, to write
/// with [`write_projections`].
pub enum Projection {
    Patrol {
        row: PatrolRow,
        photos: Vec<schema::PhotoRef>,
        /// The print of a submitted patrol's track (replay detection), else none.
        print: Option<Vec<crate::compliance::replay::PrintFix>>,
    },
    Problem(ProblemRow),
}

/// The rows of a document: `received` is when the server first and last stored a change of it.
pub fn projection(
    view: &View,
    grid_id: i64,
    received: (NaiveDateTime, NaiveDateTime),
) -> Projection {
    match view {
        View::Patrol(view) => {
            let identity = view.identity.clone();
            Projection::Patrol {
                row: PatrolRow {
                    id: identity.id,
                    grid_id,
                    inspector_id: identity.inspector,
                    device_id: identity.device,
                    method: view.method.as_str().into(),
                    status: view.status.as_str().into(),
                    started_at: timestamp(view.started_at_ms),
                    ended_at: view.ended_at_ms.map(timestamp),
                    fix_count: view.track.len() as i32,
                    distance_m: (track_length_m(&view.track) * 10.0).round() / 10.0,
                    photo_count: view.photos.len() as i32,
                    note_count: view.notes.len() as i32,
                    problem_count: view.problems.len() as i32,
                    review_state: view.review.as_ref().map(|r| r.state.as_str().to_string()),
                    review_comment: view.review.as_ref().map(|r| r.comment.clone()),
                    reviewer_id: view.review.as_ref().map(|r| r.reviewer),
                    first_received_at: received.0,
                    updated_at: received.1,
                },
                photos: view.photos.clone(),
                print: (view.status == schema::PatrolStatus::Submitted)
                    .then(|| crate::compliance::replay::print_of(&view.track)),
            }
        }
        View::Problem(view) => {
            let identity = view.identity.clone();
            Projection::Problem(ProblemRow {
                id: identity.id,
                grid_id,
                patrol_id: view.patrol.clone(),
                inspector_id: identity.inspector,
                category: view.category.clone(),
                description: view.description.clone(),
                disposition: view.disposition.as_str().into(),
                lon: view.lon,
                lat: view.lat,
                found_at: timestamp(view.found_at_ms),
                updated_at: received.1,
            })
        }
    }
}

/// Writes documents' rows (patrols with their photo links and stale verdicts, problems): a few
/// statements for all of them, not a few for each (on PostgreSQL a statement's round trip and
/// parsing cost more than its row). Their `sync_documents` rows must exist.
pub fn write_projections(conn: &mut DbConnection, projections: &[Projection]) -> ApiResult<()> {
    let mut patrol_rows = Vec::new();
    let mut stale = Vec::new();
    let mut photos = Vec::new();
    let mut problem_rows = Vec::new();
    let mut prints = Vec::new();
    for projection in projections {
        match projection {
            Projection::Patrol {
                row,
                photos: refs,
                print,
            } => {
                stale.push((row.id.as_str(), row.grid_id, row.inspector_id));
                photos.push((row.id.as_str(), row.grid_id, refs.as_slice()));
                if let Some(print) = print {
                    prints.push((row.id.as_str(), print.as_slice()));
                }
                patrol_rows.push(row);
            }
            Projection::Problem(row) => problem_rows.push(row),
        }
    }
    crate::faults::point("projection.before_rows")?;
    crate::compliance::judging::mark_stale(conn, &stale)?;
    crate::photos::project_patrol_photos(conn, &photos, timestamp)?;
    write_prints(conn, &prints)?;
    crate::faults::point("projection.after_prints")?;
    // 18 values a patrol row, 11 a problem row: 500 rows stay under SQLite's 32,766 parameters.
    for rows in patrol_rows.chunks(500) {
        on_each_backend!(conn, |c| diesel::insert_into(patrols::table)
            .values(rows.to_vec())
            .on_conflict(patrols::id)
            .do_update()
            .set((
                patrols::method.eq(excluded(patrols::method)),
                patrols::status.eq(excluded(patrols::status)),
                patrols::started_at.eq(excluded(patrols::started_at)),
                patrols::ended_at.eq(excluded(patrols::ended_at)),
                patrols::fix_count.eq(excluded(patrols::fix_count)),
                patrols::distance_m.eq(excluded(patrols::distance_m)),
                patrols::photo_count.eq(excluded(patrols::photo_count)),
                patrols::note_count.eq(excluded(patrols::note_count)),
                patrols::problem_count.eq(excluded(patrols::problem_count)),
                patrols::review_state.eq(excluded(patrols::review_state)),
                patrols::review_comment.eq(excluded(patrols::review_comment)),
                patrols::reviewer_id.eq(excluded(patrols::reviewer_id)),
                patrols::updated_at.eq(excluded(patrols::updated_at)),
            ))
            .execute(c))?;
    }
    for rows in problem_rows.chunks(500) {
        on_each_backend!(conn, |c| diesel::insert_into(problems::table)
            .values(rows.to_vec())
            .on_conflict(problems::id)
            .do_update()
            .set((
                problems::category.eq(excluded(problems::category)),
                problems::description.eq(excluded(problems::description)),
                problems::disposition.eq(excluded(problems::disposition)),
                problems::lon.eq(excluded(problems::lon)),
                problems::lat.eq(excluded(problems::lat)),
                problems::updated_at.eq(excluded(problems::updated_at)),
            ))
            .execute(c))?;
    }
    Ok(())
}

/// Writes the prints of submitted patrols' tracks (replacing earlier ones of the same patrols):
/// the fixes and the index cells.
fn write_prints(
    conn: &mut DbConnection,
    prints: &[(&str, &[crate::compliance::replay::PrintFix])],
) -> ApiResult<()> {
    use crate::compliance::replay;
    use crate::schema::{patrol_tracks, track_cells};
    for chunk in prints.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(|p| p.0).collect();
        diesel::delete(patrol_tracks::table.filter(patrol_tracks::patrol_id.eq_any(&ids)))
            .execute(conn)?;
        diesel::delete(track_cells::table.filter(track_cells::patrol_id.eq_any(&ids)))
            .execute(conn)?;
        let tracks: Vec<_> = chunk
            .iter()
            .map(|(id, fixes)| {
                (
                    patrol_tracks::patrol_id.eq(*id),
                    patrol_tracks::fixes.eq(replay::encode(fixes)),
                )
            })
            .collect();
        on_each_backend!(conn, |c| diesel::insert_into(patrol_tracks::table)
            .values(&tracks)
            .execute(c))?;
        let cells: Vec<_> = chunk
            .iter()
            .flat_map(|(id, fixes)| {
                replay::cells(fixes)
                    .into_iter()
                    .map(move |cell| (track_cells::cell.eq(cell), track_cells::patrol_id.eq(*id)))
            })
            .collect();
        // 2 values a row: 10,000 rows stay under SQLite's 32,766 bound parameters.
        for rows in cells.chunks(10_000) {
            on_each_backend!(conn, |c| diesel::insert_into(track_cells::table)
                .values(rows)
                .execute(c))?;
        }
    }
    Ok(())
}

/// A document's stored log entries (each the plain change chunks one request brought, back to
/// back), in the order they were stored, and their total bytes.
pub type Entries = (Vec<Vec<u8>>, usize);

/// The stored log entries of a document (empty when the document is unknown).
pub fn load_changes(conn: &mut DbConnection, id: &str) -> ApiResult<Entries> {
    Ok(load_entries(conn, &[id])?.remove(id).unwrap_or_default())
}

/// The stored log entries of each of `ids` that the log has, in one query.
fn load_entries(conn: &mut DbConnection, ids: &[&str]) -> ApiResult<HashMap<String, Entries>> {
    let mut loaded: HashMap<String, Entries> = HashMap::new();
    for (id, bytes) in Replanned(
        sync_changes::table
            .filter(sync_changes::doc_id.eq_any(ids))
            .order((sync_changes::doc_id.asc(), sync_changes::seq.asc()))
            .select((sync_changes::doc_id, sync_changes::bytes)),
    )
    .load::<(String, Vec<u8>)>(conn)?
    {
        let (entries, total) = loaded.entry(id).or_default();
        *total += bytes.len();
        entries.push(bytes);
    }
    Ok(loaded)
}

/// What [`sync_protocol::server::premerge`] loads of a request's documents, read in two queries
/// instead of one per document: each stored document's entries, for the documents premerge reaches
/// within `budget` bytes (stored and pushed, in the request's order, as it counts them, the stored
/// size read from `sync_documents.bytes`). `None`: stored, but past the budget (load it on its
/// own if asked); absent: not stored.
pub fn load_for_premerge(
    conn: &mut DbConnection,
    request: &sync_protocol::wire::SyncRequest,
    budget: usize,
) -> ApiResult<HashMap<String, Option<Entries>>> {
    let ids: Vec<&str> = request.docs.iter().map(|d| d.id.as_str()).collect();
    let sizes: HashMap<String, i64> = Replanned(
        sync_documents::table
            .filter(sync_documents::id.eq_any(&ids))
            .select((sync_documents::id, sync_documents::bytes)),
    )
    .load::<(String, i64)>(conn)?
    .into_iter()
    .collect();
    let mut spent = 0usize;
    let mut wanted = Vec::new();
    for push in &request.docs {
        if spent >= budget {
            break;
        }
        let stored = sizes.get(&push.id).copied();
        spent += usize::try_from(stored.unwrap_or(0)).unwrap_or(usize::MAX)
            + push.changes.iter().map(|c| c.len()).sum::<usize>();
        if stored.is_some() {
            wanted.push(push.id.as_str());
        }
    }
    let mut loaded: HashMap<String, Option<Entries>> =
        sizes.into_keys().map(|id| (id, None)).collect();
    if !wanted.is_empty() {
        for (id, entries) in load_entries(conn, &wanted)? {
            loaded.insert(id, Some(entries));
        }
    }
    Ok(loaded)
}

impl DbStore<'_> {
    /// Takes the row locks of those of `ids` that are stored (held to the commit), in one
    /// statement; returns when each was first stored.
    fn lock_rows(&mut self, ids: &[&str]) -> ApiResult<HashMap<String, NaiveDateTime>> {
        Ok(
            diesel::update(sync_documents::table.filter(sync_documents::id.eq_any(ids)))
                .set(sync_documents::version.eq(sync_documents::version + 1))
                .returning((sync_documents::id, sync_documents::created_at))
                .load::<(String, NaiveDateTime)>(self.conn)?
                .into_iter()
                .collect(),
        )
    }

    /// The hash of the last change of the log entry `seq`, if there is one.
    fn hash_at(&mut self, seq: i64) -> ApiResult<Option<Hash>> {
        let hashes: Option<Vec<u8>> = sync_changes::table
            .find(seq)
            .select(sync_changes::hashes)
            .first(self.conn)
            .optional()?;
        Ok(hashes
            .filter(|h| h.len() >= 32)
            .and_then(|h| automerge::ChangeHash::try_from(&h[h.len() - 32..]).ok())
            .map(Hash::from))
    }

    /// The newest entry of the log (0 when empty). Read inside a request's write transaction,
    /// after [`DbStore::append`], it is where that request's feed page ends: every change before
    /// it is committed (the log grows in commit order), and any other device's change to a
    /// document the request merged is either before it, and so in that merge (the document was
    /// locked), or after it, and so in the phone's next page.
    pub fn newest(&mut self) -> ApiResult<i64> {
        if let Some(newest) = self.newest {
            return Ok(newest);
        }
        let newest: Option<i64> = sync_changes::table
            .select(diesel::dsl::max(sync_changes::seq))
            .first(self.conn)?;
        Ok(newest.unwrap_or(0))
    }

    /// The feed page after `cursor` up to log entry `newest`, leaving out the documents in
    /// `merged` (a request's own: what the phone lacks of them is in the request's answer, see
    /// [`DbStore::newest`]). Read without a transaction of its own: the log only grows, in commit
    /// order (SQLite's single writer, PostgreSQL's append lock), so every change up to `newest`
    /// is there when the rows are read.
    pub fn feed_after(
        &mut self,
        cursor: &Cursor,
        newest: i64,
        merged: &[String],
    ) -> ApiResult<FeedPage> {
        let seq = i64::try_from(cursor.seq).unwrap_or(i64::MAX);
        // The change the phone last heard of must still be where it was: otherwise this log is
        // not the one the phone saw (restored from a backup) and the phone must push everything.
        let reset = seq > 0 && self.hash_at(seq)? != cursor.at;
        let cursor = if reset { 0 } else { seq };
        let me = self.authority.user_id;
        let mut query = sync_changes::table
            .inner_join(sync_documents::table.inner_join(grids::table))
            // Bounded on both sides: the two-sided range also keeps PostgreSQL's planner on the
            // log's primary key while its statistics lag behind a fast-growing log (a one-sided
            // `seq > $1` is then guessed to match a third of the table: a parallel full scan).
            .filter(sync_changes::seq.gt(cursor))
            .filter(sync_changes::seq.le(newest))
            // Only documents changed since: for an inspector, the index on (inspector_id,
            // last_seq) finds those few, however many patrols they recorded over the years.
            .filter(sync_documents::last_seq.gt(cursor))
            .filter(sync_documents::id.ne_all(merged))
            .filter(sync_changes::device_id.ne(self.authority.device_id))
            .select((
                sync_changes::seq,
                sync_changes::doc_id,
                sync_changes::bytes,
                sync_documents::kind,
                sync_documents::heads,
            ))
            .order(sync_changes::seq.asc())
            .limit(FEED_BATCH)
            .into_boxed();
        let mut visible: Box<dyn BoxableExpression<_, _, SqlType = diesel::sql_types::Bool>> =
            Box::new(sync_documents::inspector_id.eq(me));
        for root in &self.authority.review_paths {
            visible = Box::new(visible.or(grids::path.like(format!("{root}%"))));
        }
        query = query.filter(visible);
        let rows: Vec<(i64, String, Vec<u8>, String, String)> = query.load(self.conn)?;
        let mut full_batch = rows.len() as i64 == FEED_BATCH;
        let mut next = cursor;
        let mut by_doc: Vec<FeedItem> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        let mut sent = 0;
        for (seq, doc_id, bytes, kind, heads) in rows {
            if sent >= FEED_BYTES {
                full_batch = true;
                break;
            }
            sent += bytes.len();
            next = next.max(seq);
            let index = *slot.entry(doc_id.clone()).or_insert_with(|| {
                by_doc.push(FeedItem {
                    id: doc_id.clone(),
                    kind: DocKind::parse(&kind).unwrap_or(DocKind::Patrol),
                    changes: Vec::new(),
                    heads: parse_heads(&heads),
                });
                by_doc.len() - 1
            });
            // The phone takes each change as its own chunk (the entry was checked when stored).
            let chunks = sync_protocol::changes::split_chunks(&bytes)
                .map_err(|e| ApiError::internal(format!("log entry {seq} of {doc_id}: {e}")))?;
            by_doc[index]
                .changes
                .extend(chunks.into_iter().map(<[u8]>::to_vec));
        }
        if !full_batch {
            // Nothing more for this caller up to the newest change: jump the cursor there.
            next = next.max(newest);
        }
        Ok(FeedPage {
            items: by_doc,
            cursor: Cursor {
                seq: u64::try_from(next).unwrap_or(0),
                at: self.hash_at(next)?,
            },
            reset,
        })
    }
}

impl Store for DbStore<'_> {
    type Error = ApiError;

    fn lock(&mut self, id: &str) -> ApiResult<u64> {
        Ok(self.lock_all(&[id])?[0])
    }

    fn lock_all(&mut self, ids: &[&str]) -> ApiResult<Vec<u64>> {
        // A few statements for the whole request, in id order. First the stored documents' row
        // locks, held to the commit: two server processes merging the same document one after
        // the other each see the other's committed changes (PostgreSQL visits `id = ANY` through
        // the key, in key order, so two writers lock the documents they share in the same order).
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let mut created = self.lock_rows(&sorted)?;
        let new: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|id| !created.contains_key(*id))
            .collect();
        if !new.is_empty()
            && let DbConnection::Postgres(c) = &mut *self.conn
        {
            // A new document has no row to lock yet. Two processes creating it at once take
            // turns on a lock named by its id, also held to the commit; the second then finds
            // the first's row and changes (and merges again), so no change is stored twice and
            // the log needs no conflict handling. (SQLite's single writer does this already.)
            use diesel::sql_types::{Array, Text};
            // UNNEST yields the ids in the array's (sorted) order.
            diesel::sql_query(
                "SELECT pg_advisory_xact_lock(7417002, hashtext(id)) FROM UNNEST($1) AS id",
            )
            .bind::<Array<Text>, _>(&new)
            .execute(c)?;
            created.extend(self.lock_rows(&new)?);
        }
        let known: Vec<&str> = created.keys().map(String::as_str).collect();
        let counts: HashMap<String, i64> = if known.is_empty() {
            HashMap::new()
        } else {
            // Each document's version: its entries counted (index-only), so that it always
            // matches what `load` returns.
            sync_changes::table
                .filter(sync_changes::doc_id.eq_any(&known))
                .group_by(sync_changes::doc_id)
                .select((sync_changes::doc_id, diesel::dsl::count_star()))
                .load::<(String, i64)>(self.conn)?
                .into_iter()
                .collect()
        };
        let versions = ids
            .iter()
            .map(|id| u64::try_from(counts.get(*id).copied().unwrap_or(0)).unwrap_or(0))
            .collect();
        self.created.extend(created);
        Ok(versions)
    }

    fn load(&mut self, id: &str) -> ApiResult<(Vec<Vec<u8>>, usize)> {
        load_changes(self.conn, id)
    }

    fn save(&mut self, id: &str, merged: &Merged) -> ApiResult<()> {
        let at = now();
        let grid = self
            .authority
            .index
            .get_by_code(&merged.identity.grid)
            .ok_or_else(|| ApiError::internal(format!("grid {} vanished", merged.identity.grid)))?;
        let grid_id = grid.id;
        let count = merged.new_changes.len();
        if count > 0 {
            let mut hashes = Vec::with_capacity(32 * count);
            let mut bytes = Vec::with_capacity(merged.new_changes.iter().map(|c| c.1.len()).sum());
            for (hash, chunk) in &merged.new_changes {
                hashes.extend_from_slice(&hash.0);
                bytes.extend_from_slice(chunk);
            }
            self.pending.push(NewChange {
                doc_id: id.to_string(),
                hashes,
                bytes,
                change_count: i32::try_from(count).unwrap_or(i32::MAX),
                actor: self.authority.actor.to_hex_string(),
                device_id: self.authority.device_id,
                user_id: self.authority.user_id,
                received_at: at,
            });
        }
        let new_bytes = i64::try_from(merged.new_bytes).unwrap_or(i64::MAX);
        if merged.created {
            // `lock_all` serialised the document's creators, so the row cannot exist yet; if it
            // did, the key would refuse it and the request fail whole (the phone sends it again).
            self.new_documents.push(NewDocument {
                id: id.to_string(),
                kind: merged.identity.kind.as_str().to_string(),
                grid_id,
                inspector_id: merged.identity.inspector,
                heads: heads_text(&merged.heads),
                change_count: count as i32,
                bytes: new_bytes,
                version: 0,
                created_at: at,
                updated_at: at,
                // Set by the append, with the document's entry.
                last_seq: 0,
            });
        } else if count > 0 {
            diesel::update(sync_documents::table.find(id))
                .set((
                    sync_documents::heads.eq(heads_text(&merged.heads)),
                    sync_documents::change_count.eq(sync_documents::change_count + count as i32),
                    sync_documents::bytes.eq(sync_documents::bytes + new_bytes),
                    sync_documents::updated_at.eq(at),
                ))
                .execute(self.conn)?;
        }
        if count == 0 {
            return Ok(());
        }
        let first = self.created.get(id).copied().unwrap_or(at);
        self.projections
            .push(projection(&merged.view, grid_id, (first, at)));
        Ok(())
    }

    fn feed(&mut self, cursor: &Cursor) -> ApiResult<FeedPage> {
        let newest = self.newest()?;
        self.feed_after(cursor, newest, &[])
    }
}
