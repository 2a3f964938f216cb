//! Where the SDK keeps everything on the phone: the documents (as Automerge change chunks), each
//! document's sync state, and a few settings (tokens, the feed cursor, the clock skew).
//!
//! A store takes writes as [`Batch`]es, each applied all or nothing: the app's process can be
//! killed at any moment and reopen to a state some whole batch left. Two stores: [`SqliteStore`],
//! a file on the phone, and [`MemoryStore`] for tests; the same conformance suite runs on both.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::SdkError;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Appends an Automerge chunk (a change, or several saved together) to a document, creating
    /// the document if it is new.
    Append {
        id: String,
        kind: String,
        chunk: Vec<u8>,
    },
    /// Replaces every chunk of a document with one (its full save): compaction.
    Replace { id: String, chunk: Vec<u8> },
    /// The document's sync state (opaque to the store).
    DocState { id: String, state: Vec<u8> },
    /// A setting.
    Meta { key: String, value: Vec<u8> },
}

/// Writes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch(pub Vec<Write>);

impl Batch {
    pub fn push(&mut self, write: Write) -> &mut Self {
        self.0.push(write);
        self
    }
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredDoc {
    pub kind: String,
    /// In the order they were appended; loading them in that order gives the document.
    pub chunks: Vec<Vec<u8>>,
    pub state: Option<Vec<u8>>,
}

/// Everything a store holds, read at once when the SDK opens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub docs: BTreeMap<String, StoredDoc>,
    pub meta: BTreeMap<String, Vec<u8>>,
}

/// The phone's storage. Implementations apply each batch atomically and durably against the
/// process being killed.
pub trait Store: Send + Sync {
    fn write(&self, batch: &Batch) -> Result<(), SdkError>;
    fn snapshot(&self) -> Result<Snapshot, SdkError>;
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn write(&self, batch: &Batch) -> Result<(), SdkError> {
        (**self).write(batch)
    }
    fn snapshot(&self) -> Result<Snapshot, SdkError> {
        (**self).snapshot()
    }
}

/// A store in memory, for tests and for apps that keep nothing between runs.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Snapshot>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn apply(snapshot: &mut Snapshot, write: &Write) -> Result<(), SdkError> {
    match write {
        Write::Append { id, kind, chunk } => {
            let doc = snapshot
                .docs
                .entry(id.clone())
                .or_insert_with(|| StoredDoc {
                    kind: kind.clone(),
                    ..StoredDoc::default()
                });
            if doc.kind != *kind {
                return Err(SdkError::Storage {
                    message: format!("document {id} is a {}, not a {kind}", doc.kind),
                });
            }
            doc.chunks.push(chunk.clone());
        }
        Write::Replace { id, chunk } => {
            let doc = snapshot.docs.get_mut(id).ok_or_else(|| SdkError::Storage {
                message: format!("no document {id} to compact"),
            })?;
            doc.chunks = vec![chunk.clone()];
        }
        Write::DocState { id, state } => {
            let doc = snapshot.docs.get_mut(id).ok_or_else(|| SdkError::Storage {
                message: format!("no document {id} for its state"),
            })?;
            doc.state = Some(state.clone());
        }
        Write::Meta { key, value } => {
            snapshot.meta.insert(key.clone(), value.clone());
        }
    }
    Ok(())
}

impl Store for MemoryStore {
    fn write(&self, batch: &Batch) -> Result<(), SdkError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // All or nothing: apply to a copy, keep it only if every write went in.
        let mut next = inner.clone();
        for write in &batch.0 {
            apply(&mut next, write)?;
        }
        *inner = next;
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot, SdkError> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A SQLite file on the phone: WAL journal, one transaction per batch. `synchronous = NORMAL`:
/// a committed batch survives the app being killed (the case on phones, where the OS kills
/// background apps); a power cut may lose the last batches, never half of one.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    state BLOB
);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES docs (id),
    bytes BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id, seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
";

fn storage(error: rusqlite::Error) -> SdkError {
    SdkError::Storage {
        message: error.to_string(),
    }
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, SdkError> {
        let conn = Connection::open(path).map_err(storage)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }
}

impl Store for SqliteStore {
    fn write(&self, batch: &Batch) -> Result<(), SdkError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(storage)?;
        for write in &batch.0 {
            match write {
                Write::Append { id, kind, chunk } => {
                    let stored: Option<String> = tx
                        .prepare_cached("SELECT kind FROM docs WHERE id = ?1")
                        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                        .map_err(storage)?;
                    match stored {
                        None => {
                            tx.prepare_cached("INSERT INTO docs (id, kind) VALUES (?1, ?2)")
                                .and_then(|mut s| s.execute(params![id, kind]))
                                .map_err(storage)?;
                        }
                        Some(stored) if stored != *kind => {
                            return Err(SdkError::Storage {
                                message: format!("document {id} is a {stored}, not a {kind}"),
                            });
                        }
                        Some(_) => {}
                    }
                    tx.prepare_cached("INSERT INTO chunks (doc_id, bytes) VALUES (?1, ?2)")
                        .and_then(|mut s| s.execute(params![id, chunk]))
                        .map_err(storage)?;
                }
                Write::Replace { id, chunk } => {
                    let deleted = tx
                        .prepare_cached("DELETE FROM chunks WHERE doc_id = ?1")
                        .and_then(|mut s| s.execute([id]))
                        .map_err(storage)?;
                    if deleted == 0 {
                        return Err(SdkError::Storage {
                            message: format!("no document {id} to compact"),
                        });
                    }
                    tx.prepare_cached("INSERT INTO chunks (doc_id, bytes) VALUES (?1, ?2)")
                        .and_then(|mut s| s.execute(params![id, chunk]))
                        .map_err(storage)?;
                }
                Write::DocState { id, state } => {
                    let updated = tx
                        .prepare_cached("UPDATE docs SET state = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![id, state]))
                        .map_err(storage)?;
                    if updated == 0 {
                        return Err(SdkError::Storage {
                            message: format!("no document {id} for its state"),
                        });
                    }
                }
                Write::Meta { key, value } => {
                    tx.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .and_then(|mut s| s.execute(params![key, value]))
                    .map_err(storage)?;
                }
            }
        }
        // Dropping `tx` on an error above rolls the whole batch back.
        tx.commit().map_err(storage)
    }

    fn snapshot(&self) -> Result<Snapshot, SdkError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut snapshot = Snapshot::default();
        let mut docs = conn
            .prepare("SELECT id, kind, state FROM docs")
            .map_err(storage)?;
        let rows = docs
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .map_err(storage)?;
        for row in rows {
            let (id, kind, state) = row.map_err(storage)?;
            snapshot.docs.insert(
                id,
                StoredDoc {
                    kind,
                    chunks: Vec::new(),
                    state,
                },
            );
        }
        let mut chunks = conn
            .prepare("SELECT doc_id, bytes FROM chunks ORDER BY doc_id, seq")
            .map_err(storage)?;
        let rows = chunks
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(storage)?;
        for row in rows {
            let (id, bytes) = row.map_err(storage)?;
            if let Some(doc) = snapshot.docs.get_mut(&id) {
                doc.chunks.push(bytes);
            }
        }
        let mut meta = conn
            .prepare("SELECT key, value FROM meta")
            .map_err(storage)?;
        let rows = meta
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(storage)?;
        for row in rows {
            let (key, value) = row.map_err(storage)?;
            snapshot.meta.insert(key, value);
        }
        Ok(snapshot)
    }
}

/// A JSON-encoded setting, for the few structured values the SDK keeps in `meta`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, SdkError> {
    serde_json::from_slice(bytes).map_err(|e| SdkError::Storage {
        message: format!("a stored value does not read back: {e}"),
    })
}

/// The conformance suite: every store must pass it. Public so that an app's own store (e.g. one
/// on a platform database) can run it too.
pub mod conformance {
    use super::*;

    fn append(id: &str, kind: &str, chunk: &[u8]) -> Write {
        Write::Append {
            id: id.into(),
            kind: kind.into(),
            chunk: chunk.to_vec(),
        }
    }

    /// Runs every check against stores made by `open`; `open` called again must reopen the same
    /// storage (for a memory store: return the same store).
    pub fn run<S: Store>(open: &mut dyn FnMut() -> S) {
        appended_chunks_come_back_in_order(open);
        a_failed_batch_changes_nothing(open);
        compaction_replaces_every_chunk(open);
        settings_are_overwritten(open);
        kinds_do_not_change(open);
    }

    fn appended_chunks_come_back_in_order<S: Store>(open: &mut dyn FnMut() -> S) {
        let store = open();
        let mut batch = Batch::default();
        batch.push(append("a", "patrol", b"one"));
        batch.push(append("b", "problem", b"uno"));
        store.write(&batch).expect("write");
        store
            .write(&Batch(vec![append("a", "patrol", b"two")]))
            .expect("write");
        drop(store);
        let snapshot = open().snapshot().expect("snapshot");
        assert_eq!(
            snapshot.docs["a"].chunks,
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        assert_eq!(snapshot.docs["a"].kind, "patrol");
        assert_eq!(snapshot.docs["b"].chunks, vec![b"uno".to_vec()]);
        assert_eq!(snapshot.docs["b"].state, None);
    }

    fn a_failed_batch_changes_nothing<S: Store>(open: &mut dyn FnMut() -> S) {
        let store = open();
        let before = store.snapshot().expect("snapshot");
        // The last write fails (no such document): the first two must not stay.
        let batch = Batch(vec![
            append("c", "patrol", b"first"),
            Write::Meta {
                key: "cursor".into(),
                value: b"9".to_vec(),
            },
            Write::DocState {
                id: "nobody".into(),
                state: b"{}".to_vec(),
            },
        ]);
        assert!(store.write(&batch).is_err());
        drop(store);
        assert_eq!(open().snapshot().expect("snapshot"), before);
    }

    fn compaction_replaces_every_chunk<S: Store>(open: &mut dyn FnMut() -> S) {
        let store = open();
        store
            .write(&Batch(vec![
                append("d", "patrol", b"x"),
                append("d", "patrol", b"y"),
                Write::DocState {
                    id: "d".into(),
                    state: b"acked".to_vec(),
                },
            ]))
            .expect("write");
        store
            .write(&Batch(vec![Write::Replace {
                id: "d".into(),
                chunk: b"xy".to_vec(),
            }]))
            .expect("compact");
        drop(store);
        let snapshot = open().snapshot().expect("snapshot");
        assert_eq!(snapshot.docs["d"].chunks, vec![b"xy".to_vec()]);
        assert_eq!(snapshot.docs["d"].state.as_deref(), Some(&b"acked"[..]));
    }

    fn settings_are_overwritten<S: Store>(open: &mut dyn FnMut() -> S) {
        let store = open();
        for value in [b"1", b"2"] {
            store
                .write(&Batch(vec![Write::Meta {
                    key: "token".into(),
                    value: value.to_vec(),
                }]))
                .expect("write");
        }
        drop(store);
        assert_eq!(
            open().snapshot().expect("snapshot").meta["token"],
            b"2".to_vec()
        );
    }

    fn kinds_do_not_change<S: Store>(open: &mut dyn FnMut() -> S) {
        let store = open();
        store
            .write(&Batch(vec![append("e", "patrol", b"p")]))
            .expect("write");
        assert!(
            store
                .write(&Batch(vec![append("e", "problem", b"q")]))
                .is_err()
        );
        assert_eq!(
            store.snapshot().expect("snapshot").docs["e"].chunks.len(),
            1
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_memory_store_conforms() {
        let store = Arc::new(MemoryStore::new());
        conformance::run(&mut || Arc::clone(&store));
    }

    #[test]
    fn the_sqlite_store_conforms() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("phone.sqlite3");
        conformance::run(&mut || SqliteStore::open(&path).expect("open"));
    }
}
