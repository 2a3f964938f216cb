//! The server's half, sans IO: check a request, then merge each pushed document into what is
//! stored and decide, change by change, whether its author was allowed to make it.
//!
//! The caller loads the stored changes, supplies the facts about the caller ([`Authority`]), and
//! stores what [`merge`] returns; nothing here touches a network or a database.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc};

use crate::changes::{ChangeError, Limits, decode_change, holds};
use crate::schema::{self, DocKind, IDENTITY_FIELDS, Identity};
use crate::wire::{Cursor, DocPush, SyncRequest, to_change_hashes};

/// What the server knows about whoever sent the request.
pub trait Authority {
    fn user_id(&self) -> i64;
    fn device_id(&self) -> i64;
    /// The Automerge actor bound to the device at enrollment.
    fn actor(&self) -> &ActorId;
    /// The user may record patrols and problems in this grid (an inspector there or above).
    fn may_author(&self, grid: &str) -> bool;
    /// The user may review this grid's documents (a supervisor or leader of an ancestor grid).
    fn may_review(&self, grid: &str) -> bool;
}

/// Why a document was not merged. `code` is stable and documented in the README.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("{code}: {message}")]
    Rejected { code: &'static str, message: String },
    /// The sides disagree about history: the server lacks a change the push builds on.
    #[error("resync: {0}")]
    Resync(String),
}

fn reject(code: &'static str, message: impl Into<String>) -> MergeError {
    MergeError::Rejected {
        code,
        message: message.into(),
    }
}

impl From<ChangeError> for MergeError {
    fn from(error: ChangeError) -> Self {
        reject(error.code(), error.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0} documents in one request; the limit is {1}")]
    TooManyDocuments(usize, usize),
    #[error("document {0} appears twice in the request")]
    DuplicateDocument(String),
    #[error("document id {0:?} is not a UUID")]
    InvalidId(String),
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::TooManyDocuments(..) => "too_many_documents",
            RequestError::DuplicateDocument(_) => "duplicate_document",
            RequestError::InvalidId(_) => "invalid_document_id",
        }
    }
}

/// Checks what can be checked before touching any document.
pub fn check_request(request: &SyncRequest, limits: &Limits) -> Result<(), RequestError> {
    if request.docs.len() > limits.docs_per_request {
        return Err(RequestError::TooManyDocuments(
            request.docs.len(),
            limits.docs_per_request,
        ));
    }
    let mut seen = HashSet::new();
    for doc in &request.docs {
        if uuid::Uuid::parse_str(&doc.id).is_err() || doc.id.len() != 36 {
            return Err(RequestError::InvalidId(doc.id.clone()));
        }
        if !seen.insert(doc.id.as_str()) {
            return Err(RequestError::DuplicateDocument(doc.id.clone()));
        }
    }
    Ok(())
}

/// The result of merging one push (the merged document itself is returned beside it).
pub struct Merged {
    /// Changes the server did not have, as plain change chunks, in causal order: store these.
    pub new_changes: Vec<(ChangeHash, Vec<u8>)>,
    /// Inflated bytes of `new_changes`.
    pub new_bytes: usize,
    /// The heads after the merge: the receipt.
    pub heads: Vec<ChangeHash>,
    pub identity: Identity,
    /// The push created the document.
    pub created: bool,
    /// Pushed changes not applied because they build on changes the server lacks.
    pub waiting: usize,
    /// Hashes of every pushed change, stored before or not.
    pub pushed: Vec<ChangeHash>,
    /// The merged document, read and checked.
    pub view: View,
}

/// A document read through its schema.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Patrol(schema::PatrolView),
    Problem(schema::ProblemView),
}

impl View {
    pub fn read(doc: &Automerge) -> Result<View, schema::SchemaError> {
        match schema::read_identity(doc)?.kind {
            DocKind::Patrol => schema::read_patrol(doc).map(View::Patrol),
            DocKind::Problem => schema::read_problem(doc).map(View::Problem),
        }
    }
}

/// Builds a document from its stored log entries: each is one or more plain change chunks back to
/// back (the changes one request brought), which were checked when they arrived.
pub fn load_stored(changes: impl IntoIterator<Item = Vec<u8>>) -> Result<Automerge, String> {
    apply_stored(Automerge::new(), changes)
}

/// Builds a document from a snapshot (an Automerge save of the stored document, made by the
/// server itself) and the log entries after it. The save holds the whole change graph, so the
/// result is the document [`load_stored`] builds from every change: same heads, same history
/// for [`handle`] to send from.
pub fn load_from_snapshot(
    snapshot: &[u8],
    changes: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Automerge, String> {
    let doc = Automerge::load(snapshot).map_err(|e| format!("snapshot: {e}"))?;
    apply_stored(doc, changes)
}

/// Decodes the changes of stored log entries and applies them to `doc`.
fn apply_stored(
    mut doc: Automerge,
    changes: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Automerge, String> {
    let mut decoded = Vec::new();
    for run in changes {
        for chunk in crate::changes::split_chunks(&run).map_err(|e| e.to_string())? {
            decoded.push(Change::try_from(chunk).map_err(|e| e.to_string())?);
        }
    }
    doc.apply_changes(decoded).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// Root keys a change writes: ops on the root map name the key; ops inside nested objects count
/// for the root key their object hangs from. `doc` must already contain the change.
fn root_keys(
    doc: &Automerge,
    change: &Change,
    known: &mut HashMap<automerge::legacy::OpId, String>,
) -> Result<BTreeSet<String>, MergeError> {
    use automerge::legacy::{Key, ObjectId};
    let mut keys = BTreeSet::new();
    for op in change.decode().operations {
        match op.obj {
            ObjectId::Root => match op.key {
                Key::Map(key) => {
                    keys.insert(key.to_string());
                }
                Key::Seq(_) => return Err(reject("invalid_document", "the root must be a map")),
            },
            ObjectId::Id(id) => {
                // Most operations of a change go to one object (a fix to `track`): look each
                // object's place up once.
                if let Some(key) = known.get(&id) {
                    keys.insert(key.clone());
                    continue;
                }
                let obj = doc
                    .import_obj(&id.to_string())
                    .map_err(|e| reject("malformed_change", format!("unknown object {id}: {e}")))?;
                let path = doc
                    .parents(&obj)
                    .map_err(|e| reject("malformed_change", e.to_string()))?
                    .path();
                match path.first() {
                    Some((_, automerge::Prop::Map(key))) => {
                        keys.insert(key.clone());
                        known.insert(id, key.clone());
                    }
                    _ => return Err(reject("invalid_document", "an object outside the root map")),
                }
            }
        }
    }
    Ok(keys)
}

/// Merges one pushed document into `stored` (built with [`load_stored`]; empty for a new
/// document) and checks every new change against the rules of `DESIGN.md`:
///
/// - each new change's actor is the device's bound actor;
/// - the identity fields are written once, by the document's first change, and name the pushing
///   inspector and device and a grid where the inspector may author;
/// - afterwards the author writes only the body fields, a reviewer only `review`;
/// - the document reads back as a valid patrol or problem.
pub fn merge(
    stored: &Automerge,
    stored_bytes: usize,
    push: &DocPush,
    authority: &dyn Authority,
    limits: &Limits,
) -> Result<(Merged, Automerge), MergeError> {
    if push.changes.len() > limits.changes_per_doc {
        return Err(reject(
            "too_many_changes",
            format!(
                "{} changes in one push; the limit is {}",
                push.changes.len(),
                limits.changes_per_doc
            ),
        ));
    }
    for have in to_change_hashes(&push.have) {
        if !holds(stored, &have) {
            return Err(MergeError::Resync(format!(
                "the server does not have change {have}"
            )));
        }
    }
    let created = stored.get_heads().is_empty();
    let mut new_changes = Vec::new();
    let mut plain_chunks = Vec::new();
    let mut new_bytes = 0usize;
    let mut seen = HashSet::new();
    let mut pushed = Vec::with_capacity(push.changes.len());
    for bytes in &push.changes {
        let (change, plain_len) = decode_change(bytes, limits)?;
        let hash = change.hash();
        pushed.push(hash);
        if holds(stored, &hash) || !seen.insert(hash) {
            continue; // a resend: already stored, nothing to check
        }
        if change.actor_id() != authority.actor() {
            return Err(reject(
                "actor_mismatch",
                format!(
                    "change {hash} was made by actor {}, not by this device's actor",
                    change.actor_id().to_hex_string()
                ),
            ));
        }
        new_bytes += plain_len;
        if stored_bytes + new_bytes > limits.doc_bytes {
            return Err(reject(
                "document_too_large",
                format!("the document would exceed {} bytes", limits.doc_bytes),
            ));
        }
        plain_chunks.push((hash, change.raw_bytes().to_vec()));
        new_changes.push(change);
    }

    if created && new_changes.is_empty() {
        return Err(MergeError::Resync(
            "the server does not have this document yet; its author's device will push it".into(),
        ));
    }
    let mut doc = stored.clone();
    if !new_changes.is_empty() {
        let applied = catch_unwind(AssertUnwindSafe(|| doc.apply_changes(new_changes.clone())));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(reject("malformed_change", e.to_string())),
            Err(_) => {
                return Err(reject(
                    "malformed_change",
                    "the changes could not be applied",
                ));
            }
        }
    }
    // Changes whose dependencies the server lacks wait (Automerge queues them); the rest are
    // checked and stored. Partly applied pushes answer `resync`, and the phone pushes again once
    // the missing changes arrived from their authors.
    let waiting = if doc.get_missing_deps(&[]).is_empty() {
        0 // nothing queued: everything applied (the common case, answered cheaply)
    } else {
        new_changes
            .iter()
            .filter(|c| doc.get_change_by_hash(&c.hash()).is_none())
            .count()
    };
    if waiting > 0 {
        new_changes.retain(|c| doc.get_change_by_hash(&c.hash()).is_some());
        plain_chunks.retain(|(hash, _)| doc.get_change_by_hash(hash).is_some());
        new_bytes = plain_chunks.iter().map(|(_, b)| b.len()).sum();
        if new_changes.is_empty() || doc.get_heads().is_empty() {
            return Err(MergeError::Resync(format!(
                "the push builds on change(s) the server does not have ({waiting} waiting)"
            )));
        }
        // Continue with a document holding only what applied.
        doc = stored.clone();
        let applied = catch_unwind(AssertUnwindSafe(|| doc.apply_changes(new_changes.clone())));
        if !matches!(applied, Ok(Ok(()))) {
            return Err(reject(
                "malformed_change",
                "the changes could not be applied",
            ));
        }
    }

    // Who wrote the document and where are settled by what is stored; only a new document takes
    // its identity from the push.
    let identity = schema::read_identity(if created { &doc } else { stored })
        .map_err(|e| reject("invalid_document", e.to_string()))?;
    if identity.id != push.id {
        return Err(reject(
            "id_mismatch",
            "the document's id field differs from the pushed id",
        ));
    }
    if identity.kind != push.kind {
        return Err(reject(
            "kind_mismatch",
            "the document's kind differs from the pushed kind",
        ));
    }
    let user = authority.user_id();
    let is_author = identity.inspector == user;
    if created {
        if !is_author || identity.device != authority.device_id() {
            return Err(reject(
                "identity_mismatch",
                "a new document must name the pushing inspector and device",
            ));
        }
        if !authority.may_author(&identity.grid) {
            return Err(reject(
                "not_inspector_of_grid",
                format!("you are not an inspector of grid {}", identity.grid),
            ));
        }
    } else if !is_author && !authority.may_review(&identity.grid) {
        return Err(reject(
            "not_author",
            "only the document's inspector or a supervisor above its grid may change it",
        ));
    }

    let mut objects = HashMap::new();
    for change in &new_changes {
        let keys = root_keys(&doc, change, &mut objects)?;
        for key in &keys {
            let key = key.as_str();
            let identity_key = IDENTITY_FIELDS.contains(&key);
            let body_key = identity.kind.body_fields().contains(&key);
            let review_key = identity.kind.review_fields().contains(&key);
            if identity_key {
                if !(created && change.deps().is_empty()) {
                    return Err(reject(
                        "immutable_field",
                        format!("{key} is written once, when the document is created"),
                    ));
                }
            } else if body_key {
                if !is_author {
                    return Err(reject(
                        "field_forbidden",
                        format!(
                            "only the inspector who recorded it writes {key}; supervisors write review"
                        ),
                    ));
                }
            } else if review_key {
                if is_author || !authority.may_review(&identity.grid) {
                    return Err(reject(
                        "review_forbidden",
                        "only a supervisor of a grid above this one may write review",
                    ));
                }
            } else {
                return Err(reject(
                    "unknown_field",
                    format!("{key:?} is not a field of a {}", identity.kind.as_str()),
                ));
            }
        }
    }

    if identity.kind == DocKind::Patrol && is_author {
        check_submitted_lock(stored, &doc, &new_changes, &mut objects)?;
    }

    let view = View::read(&doc).map_err(|e| reject("invalid_document", e.to_string()))?;

    Ok((
        Merged {
            heads: doc.get_heads(),
            new_changes: plain_chunks,
            new_bytes,
            identity,
            created,
            waiting,
            pushed,
            view,
        },
        doc,
    ))
}

/// Fields a submitted patrol no longer changes: its evidence (track, notes, photos) and its
/// times and method. `status` stays writable for the one way back ([`check_submitted_lock`]);
/// `problems` too (a problem found on the patrol may be filed after it).
const LOCKED_WHEN_SUBMITTED: &[&str] = &[
    schema::field::TRACK,
    schema::field::NOTES,
    schema::field::PHOTOS,
    schema::field::STARTED_AT,
    schema::field::ENDED_AT,
    schema::field::METHOD,
];

/// Once a patrol is submitted its evidence is closed: a change made after the one that set
/// `status` to submitted (a later operation counter, as Automerge orders one actor's changes)
/// may not touch [`LOCKED_WHEN_SUBMITTED`] (`patrol_submitted`), whether it arrives in a later
/// push or in the same one. The only way back is an explicit change of `status` to recording,
/// which the inspector may make only when the stored patrol was returned by a supervisor
/// (`patrol_not_returned` otherwise); the reopening shows in the verdict, as every status does.
fn check_submitted_lock(
    stored: &Automerge,
    doc: &Automerge,
    new_changes: &[Change],
    objects: &mut HashMap<automerge::legacy::OpId, String>,
) -> Result<(), MergeError> {
    let stored_status = schema::read_status(stored).ok();
    // Reopening: status leaves submitted only after a supervisor returned the patrol.
    let status_now = schema::read_status(doc).ok();
    if stored_status == Some(schema::PatrolStatus::Submitted)
        && status_now != Some(schema::PatrolStatus::Submitted)
    {
        let returned = schema::read_patrol(stored)
            .ok()
            .and_then(|p| p.review)
            .is_some_and(|r| r.state == schema::ReviewState::Returned);
        if !returned {
            return Err(reject(
                "patrol_not_returned",
                "a submitted patrol is reopened only after a supervisor returned it",
            ));
        }
        return Ok(());
    }
    if status_now != Some(schema::PatrolStatus::Submitted) {
        return Ok(());
    }
    // The operation that set the status now in force.
    let Some((_, automerge::ObjId::Id(submitted_at, _, _))) = doc
        .get(automerge::ROOT, schema::field::STATUS)
        .map_err(|e| reject("invalid_document", e.to_string()))?
    else {
        return Ok(());
    };
    for change in new_changes {
        if change.start_op().get() <= submitted_at {
            continue;
        }
        let keys = root_keys(doc, change, objects)?;
        if let Some(key) = keys
            .iter()
            .find(|k| LOCKED_WHEN_SUBMITTED.contains(&k.as_str()))
        {
            return Err(reject(
                "patrol_submitted",
                format!("the patrol was submitted: its {key} no longer changes"),
            ));
        }
    }
    Ok(())
}

/// Changes of `doc` that a peer holding `known` (hashes it has, not necessarily heads) lacks.
pub fn changes_missing_from(doc: &Automerge, known: &[ChangeHash]) -> Vec<Vec<u8>> {
    // A peer holding every head holds their whole history: nothing to send (the common case,
    // decided without asking Automerge to rebuild any change).
    let heads = doc.get_heads();
    if heads.iter().all(|h| known.contains(h)) {
        return Vec::new();
    }
    let known: Vec<ChangeHash> = known.iter().copied().filter(|h| holds(doc, h)).collect();
    doc.get_changes(&known)
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect()
}

/// Changes of one document from the changes feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub id: String,
    pub kind: DocKind,
    /// Plain change chunks stored after the cursor, in the order they were stored.
    pub changes: Vec<Vec<u8>>,
    pub heads: Vec<ChangeHash>,
}

/// One page of the changes feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    pub cursor: Cursor,
    pub reset: bool,
}

/// What the server stores, as the request handler needs it. The server implements it over one
/// database transaction; the simulation harness over maps. Implementations do the IO; the
/// algorithm stays here.
pub trait Store {
    type Error;
    /// Locks the document until the transaction ends (another request merging it waits) and
    /// returns how many log entries are stored for it (0 when unknown): the number [`Store::load`]
    /// returns entries. Entries are only ever appended, so an equal count means equal contents.
    fn lock(&mut self, id: &str) -> Result<u64, Self::Error>;
    /// [`Store::lock`] for each of `ids` (distinct), in their order; a store may lock them all in
    /// a few statements (and in an order of its own, e.g. to avoid deadlocks between writers).
    fn lock_all(&mut self, ids: &[&str]) -> Result<Vec<u64>, Self::Error> {
        ids.iter().map(|id| self.lock(id)).collect()
    }
    /// The stored log entries of a document in order (empty when unknown) and their total bytes.
    /// An entry is one or more plain change chunks back to back (see [`load_stored`]).
    fn load(&mut self, id: &str) -> Result<(Vec<Vec<u8>>, usize), Self::Error>;
    /// Appends a merged document's new changes (none of them stored yet: the document is locked
    /// and the merge skipped what was) and updates whatever the server derives from the document.
    fn save(&mut self, id: &str, merged: &Merged) -> Result<(), Self::Error>;
    /// Changes the caller should hear about that were stored after `cursor` by someone else, per
    /// document, with the document's current heads; and the new cursor. Read after the request's
    /// documents were saved (the server reads it after the commit, outside the write lock). When the store has no
    /// change with the cursor's hash at the cursor's position (it was restored from a backup), it
    /// starts from the beginning and says `reset`.
    fn feed(&mut self, cursor: &Cursor) -> Result<FeedPage, Self::Error>;
}

/// What one pushed document comes to: merged (to save, then answer) or refused.
enum Step {
    Merged {
        merged: Box<Merged>,
        result: crate::wire::DocResult,
        update: Option<crate::wire::DocUpdate>,
    },
    Refused(crate::wire::DocResult),
}

/// Loads, merges and checks one pushed document against what is stored, and works out the answer.
/// The merged Automerge document is dropped here: only what is saved and sent is kept.
fn step(
    stored_changes: Vec<Vec<u8>>,
    stored_bytes: usize,
    push: &DocPush,
    authority: &dyn Authority,
    limits: &Limits,
) -> Step {
    use crate::wire::{DocResult, DocUpdate, Outcome, Rejection, from_change_hashes};
    use serde_bytes::ByteBuf;

    let refused = |outcome, heads: &[ChangeHash], code: &str, message: String| {
        Step::Refused(DocResult {
            id: push.id.clone(),
            outcome,
            heads: from_change_hashes(heads),
            error: Some(Rejection {
                code: code.into(),
                message,
            }),
            sync_message: None,
        })
    };
    let stored = match load_stored(stored_changes) {
        Ok(doc) => doc,
        Err(e) => return refused(Outcome::Rejected, &[], "stored_document_unreadable", e),
    };
    match merge(&stored, stored_bytes, push, authority, limits) {
        Ok((merged, doc)) => {
            let mut known = to_change_hashes(&push.have);
            known.extend(merged.pushed.iter().copied());
            let missing = changes_missing_from(&doc, &known);
            let update = (!missing.is_empty()).then(|| DocUpdate {
                id: push.id.clone(),
                kind: push.kind,
                changes: missing.into_iter().map(ByteBuf::from).collect(),
                heads: from_change_hashes(&merged.heads),
            });
            let (outcome, error) = if merged.waiting > 0 {
                let message = format!(
                    "{} change(s) wait for changes the server lacks; push again after their authors synced",
                    merged.waiting
                );
                (
                    Outcome::Resync,
                    Some(Rejection {
                        code: "resync".into(),
                        message,
                    }),
                )
            } else {
                (Outcome::Accepted, None)
            };
            let result = DocResult {
                id: push.id.clone(),
                outcome,
                heads: from_change_hashes(&merged.heads),
                error,
                sync_message: None,
            };
            Step::Merged {
                merged: Box::new(merged),
                result,
                update,
            }
        }
        Err(MergeError::Rejected { code, message }) => {
            refused(Outcome::Rejected, &stored.get_heads(), code, message)
        }
        Err(MergeError::Resync(message)) => {
            refused(Outcome::Resync, &stored.get_heads(), "resync", message)
        }
    }
}

/// Documents of a request merged ahead of the write transaction ([`premerge`]), each with the
/// number of stored changes it was merged against.
#[derive(Default)]
pub struct Premerged {
    steps: HashMap<String, (u64, Step)>,
}

impl Premerged {
    /// How many documents were merged ahead.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Merges and checks a request's documents against a read of the store made outside any write
/// transaction, so that the costly part of a request runs in parallel with other requests'.
/// [`handle`] then uses each result whose document is still as it was read, and merges again
/// any document that changed meanwhile. `load` returns a document's stored changes and their
/// total bytes, as [`Store::load`]; documents are merged ahead only until their stored and pushed
/// bytes together pass `budget`, so that a request's memory stays bounded.
pub fn premerge<E>(
    request: &SyncRequest,
    authority: &dyn Authority,
    limits: &Limits,
    budget: usize,
    mut load: impl FnMut(&str) -> Result<(Vec<Vec<u8>>, usize), E>,
) -> Result<Premerged, E> {
    let mut premerged = Premerged::default();
    let mut spent = 0usize;
    for push in &request.docs {
        if spent >= budget {
            break;
        }
        let (changes, bytes) = load(&push.id)?;
        spent += bytes + push.changes.iter().map(|c| c.len()).sum::<usize>();
        let version = changes.len() as u64;
        let step = step(changes, bytes, push, authority, limits);
        premerged.steps.insert(push.id.clone(), (version, step));
    }
    Ok(premerged)
}

/// A request's documents merged and saved ([`handle`]); [`Handled::respond`] adds the feed.
pub struct Handled {
    results: Vec<crate::wire::DocResult>,
    updates: Vec<crate::wire::DocUpdate>,
    pushed: HashSet<String>,
    views: Vec<SavedView>,
}

/// A document the request saved, read as it now stands: whoever derives more from it (the
/// server's compliance judging) need not load and replay it again.
pub struct SavedView {
    pub id: String,
    /// The document's heads after the save: the view is of exactly this state.
    pub heads: Vec<ChangeHash>,
    pub view: View,
}

/// Merges and saves every pushed document of a request (a refused document does not stop the
/// others). Documents in `premerged` that are still as they were read are not merged again. The
/// caller commits the store's work, then reads the feed ([`Store::feed`], in the same or a later
/// transaction) and answers with [`Handled::respond`], so that a receipt always means "durably
/// stored".
pub fn handle<S: Store>(
    request: &SyncRequest,
    authority: &dyn Authority,
    store: &mut S,
    limits: &Limits,
    mut premerged: Premerged,
) -> Result<Handled, S::Error> {
    let mut results = Vec::with_capacity(request.docs.len());
    let mut updates = Vec::new();
    let mut views = Vec::new();
    let ids: Vec<&str> = request.docs.iter().map(|d| d.id.as_str()).collect();
    let counts = store.lock_all(&ids)?;
    for (push, stored_count) in request.docs.iter().zip(counts) {
        let step = match premerged.steps.remove(&push.id) {
            Some((version, step)) if version == stored_count => step,
            _ => {
                let (changes, bytes) = store.load(&push.id)?;
                step(changes, bytes, push, authority, limits)
            }
        };
        match step {
            Step::Merged {
                merged,
                result,
                update,
            } => {
                store.save(&push.id, &merged)?;
                results.push(result);
                updates.extend(update);
                if !merged.new_changes.is_empty() {
                    views.push(SavedView {
                        id: push.id.clone(),
                        heads: merged.heads,
                        view: merged.view,
                    });
                }
            }
            Step::Refused(result) => results.push(result),
        }
    }
    Ok(Handled {
        results,
        updates,
        pushed: request.docs.iter().map(|d| d.id.clone()).collect(),
        views,
    })
}

impl Handled {
    /// The documents this request changed, as saved (a resend that changed nothing is not here).
    pub fn take_views(&mut self) -> Vec<SavedView> {
        std::mem::take(&mut self.views)
    }

    /// The response: the documents' results, what the phone lacks of them, and the feed page
    /// (less the documents the request pushed, whose missing changes are already here).
    pub fn respond(self, page: FeedPage, server_time_ms: i64) -> crate::wire::SyncResponse {
        use crate::wire::DocUpdate;
        use serde_bytes::ByteBuf;

        let mut updates = self.updates;
        for item in page.items {
            if self.pushed.contains(&item.id) {
                continue;
            }
            updates.push(DocUpdate {
                id: item.id,
                kind: item.kind,
                changes: item.changes.into_iter().map(ByteBuf::from).collect(),
                heads: crate::wire::from_change_hashes(&item.heads),
            });
        }
        crate::wire::SyncResponse {
            v: crate::wire::PROTOCOL_VERSION,
            results: self.results,
            updates,
            cursor: page.cursor,
            reset: page.reset,
            server_time_ms,
        }
    }
}
