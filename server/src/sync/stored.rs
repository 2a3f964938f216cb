//! Documents as the server reads them back: the newest snapshot, if there is one, and the changes
//! logged after it.
//!
//! The change log (`sync_changes`) is the record and only ever grows. Replaying a patrol's ~50
//! changes costs ~220 µs (each change chunk is decoded and applied on its own); Automerge's save of
//! the same document is one columnar, compressed block that loads in well under half of that. So
//! a snapshot is written when enough changes were logged since the last one: by whoever loads the
//! document from that long a tail anyway (the compliance worker, a recompute), and for patrols the
//! worker judged from the view their sync left instead of loading them, by the worker once syncs
//! pause (`compliance::judging::compact_owed`). Later readers load the snapshot and only the
//! tail. A snapshot is derived data: deleting every row changes no result, only the time.
//!
//! A snapshot names the log entry it reaches (`through_seq`) and holds every change of the
//! document up to it: the log is appended in commit order (SQLite's single writer, PostgreSQL's
//! append lock), so when a reader saw entry `n` of a document it saw every earlier one too.

use std::collections::HashMap;

use automerge::Automerge;
use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::{DbConnection, Replanned, now};
use crate::error::ApiResult;
use crate::schema::{sync_changes, sync_snapshots};

/// A snapshot is (re)written once this many changes were logged after the last one (changes, not
/// log entries: replaying costs per change). A phone on a poor link syncs a patrol a few changes
/// at a time; a short tail loads quickly on top of the snapshot, and the save is not repeated for
/// every small sync.
pub const SNAPSHOT_AFTER: usize = 8;

/// One document's stored form.
#[derive(Default)]
pub struct StoredDoc {
    snapshot: Option<Vec<u8>>,
    snapshot_changes: usize,
    /// Log entries after the snapshot (all of them without one), in log order: each the plain
    /// change chunks one request brought, back to back.
    tail: Vec<Vec<u8>>,
    /// How many changes `tail` holds.
    tail_changes: usize,
    /// The newest log entry this holds (the snapshot's or the tail's).
    through_seq: i64,
}

/// A snapshot to write: the document as of log entry `through_seq`.
pub struct Snapshot {
    pub doc_id: String,
    pub through_seq: i64,
    pub change_count: usize,
    pub bytes: Vec<u8>,
}

impl StoredDoc {
    /// Nothing stored: the document is unknown.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.tail.is_empty()
    }

    /// Stored changes after the snapshot.
    pub fn tail_changes(&self) -> usize {
        self.tail_changes
    }

    /// Builds the document.
    pub fn load(self) -> Result<Automerge, String> {
        match &self.snapshot {
            Some(snapshot) => sync_protocol::server::load_from_snapshot(snapshot, self.tail),
            None => sync_protocol::server::load_stored(self.tail),
        }
    }

    /// The stored bytes as one Automerge file: the snapshot, then the tail's change chunks
    /// (`AutoCommit::load` reads such a run of chunks as one document).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.snapshot.clone().unwrap_or_default();
        for change in &self.tail {
            bytes.extend_from_slice(change);
        }
        bytes
    }

    /// Builds the document, and the snapshot to write when [`SNAPSHOT_AFTER`] changes or more
    /// were loaded on top of the stored one (or without one).
    pub fn open(self, id: &str) -> Result<(Automerge, Option<Snapshot>), String> {
        let due = self.tail_changes >= SNAPSHOT_AFTER;
        let change_count = self.snapshot_changes + self.tail_changes;
        let through_seq = self.through_seq;
        let doc = self.load()?;
        let snapshot = due.then(|| Snapshot {
            doc_id: id.to_string(),
            through_seq,
            change_count,
            bytes: doc.save(),
        });
        Ok((doc, snapshot))
    }
}

/// The stored form of each of `ids` that the log has (two queries, whatever their number).
pub fn load_many(conn: &mut DbConnection, ids: &[&str]) -> ApiResult<HashMap<String, StoredDoc>> {
    let mut stored: HashMap<String, StoredDoc> = HashMap::with_capacity(ids.len());
    // Both planned with the ids at hand (see `Replanned`): from a new database's first minutes a
    // cached plan would scan the whole table.
    for (id, through_seq, change_count, bytes) in Replanned(
        sync_snapshots::table
            .filter(sync_snapshots::doc_id.eq_any(ids))
            .select((
                sync_snapshots::doc_id,
                sync_snapshots::through_seq,
                sync_snapshots::change_count,
                sync_snapshots::bytes,
            )),
    )
    .load::<(String, i64, i32, Vec<u8>)>(conn)?
    {
        stored.insert(
            id,
            StoredDoc {
                snapshot: Some(bytes),
                snapshot_changes: usize::try_from(change_count).unwrap_or(0),
                tail: Vec::new(),
                tail_changes: 0,
                through_seq,
            },
        );
    }
    // Each document's changes after its own snapshot's entry: one pass over the log's
    // (doc_id, seq) index.
    for (id, seq, bytes, changes) in Replanned(
        sync_changes::table
            .left_join(sync_snapshots::table)
            .filter(sync_changes::doc_id.eq_any(ids))
            .filter(
                sync_snapshots::through_seq
                    .nullable()
                    .is_null()
                    .or(sync_changes::seq
                        .nullable()
                        .gt(sync_snapshots::through_seq.nullable())),
            )
            .order((sync_changes::doc_id.asc(), sync_changes::seq.asc()))
            .select((
                sync_changes::doc_id,
                sync_changes::seq,
                sync_changes::bytes,
                sync_changes::change_count,
            )),
    )
    .load::<(String, i64, Vec<u8>, i32)>(conn)?
    {
        let doc = stored.entry(id).or_default();
        doc.tail.push(bytes);
        doc.tail_changes += usize::try_from(changes).unwrap_or(0);
        doc.through_seq = doc.through_seq.max(seq);
    }
    Ok(stored)
}

/// The stored form of one document (empty when the log does not have it).
pub fn load_one(conn: &mut DbConnection, id: &str) -> ApiResult<StoredDoc> {
    Ok(load_many(conn, &[id])?.remove(id).unwrap_or_default())
}

/// Writes snapshots, each replacing the document's older one. Two writers racing on one document
/// (the worker and `recompute-compliance` in another process) leave either snapshot: both are
/// whole documents as of their entry, so either is correct.
pub fn write(conn: &mut DbConnection, snapshots: &[Snapshot]) -> ApiResult<()> {
    let at = now();
    // A few statements for a whole batch (the worker writes up to 256 at once, inside the write
    // transaction a busy server's syncs queue behind).
    for chunk in snapshots.chunks(100) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|snapshot| {
                (
                    sync_snapshots::doc_id.eq(&snapshot.doc_id),
                    sync_snapshots::through_seq.eq(snapshot.through_seq),
                    sync_snapshots::change_count
                        .eq(i32::try_from(snapshot.change_count).unwrap_or(i32::MAX)),
                    sync_snapshots::bytes.eq(&snapshot.bytes),
                    sync_snapshots::created_at.eq(at),
                )
            })
            .collect();
        match conn {
            // SQLite: diesel batches `INSERT OR REPLACE`, not `ON CONFLICT`; replacing the whole
            // row is what is meant here.
            DbConnection::Sqlite(c) => {
                diesel::replace_into(sync_snapshots::table)
                    .values(&rows)
                    .execute(c)?;
            }
            DbConnection::Postgres(c) => {
                diesel::insert_into(sync_snapshots::table)
                    .values(&rows)
                    .on_conflict(sync_snapshots::doc_id)
                    .do_update()
                    .set((
                        sync_snapshots::through_seq.eq(excluded(sync_snapshots::through_seq)),
                        sync_snapshots::change_count.eq(excluded(sync_snapshots::change_count)),
                        sync_snapshots::bytes.eq(excluded(sync_snapshots::bytes)),
                        sync_snapshots::created_at.eq(excluded(sync_snapshots::created_at)),
                    ))
                    .execute(c)?;
            }
        }
    }
    Ok(())
}
