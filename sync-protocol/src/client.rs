//! The phone's half, sans IO: what to send, what a response means, what is now durable.
//!
//! The SDK owns the documents and persists [`ClientState`] next to them; it calls
//! [`ClientState::request`] to build a push, sends it however it likes, and feeds the response to
//! [`ClientState::apply`]. A document is durable on the server once the server's receipt (its
//! `acked` heads) covers every local change; until then the SDK keeps everything and resends.

use std::collections::BTreeMap;

use automerge::{ActorId, Automerge, ChangeHash};
use serde_bytes::ByteBuf;

use crate::changes::{Limits, decode_change};
use crate::schema::DocKind;
use crate::wire::{
    Cursor, DocPush, Outcome, PROTOCOL_VERSION, Rejection, SyncRequest, SyncResponse,
    from_change_hashes, to_change_hashes,
};

/// Every this many syncs, the push names every document the phone holds with the heads of its
/// last receipt, so that a server restored from a backup (which may have lost acknowledged
/// changes, and which the cursor check does not always notice) asks for them again.
pub const VERIFY_EVERY: u32 = 50;

/// What the phone remembers about one document between syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocState {
    pub kind: DocKind,
    /// The heads of the server's last receipt: everything before them is durable on the server.
    pub acked: Vec<ChangeHash>,
    /// Set when the server refused the document; cleared when the document changes again.
    pub rejected: Option<(Rejection, Vec<ChangeHash>)>,
    /// The server lacks history the phone builds on (e.g. it was restored from a backup): the
    /// next push sends the whole document.
    pub resync: bool,
}

/// What the phone remembers between syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientState {
    /// This phone's Automerge actor: a resync pushes only its own changes (the server accepts no
    /// others from this device; other authors push theirs).
    pub actor: Option<ActorId>,
    /// Where the phone is in the server's change log.
    pub cursor: Cursor,
    /// Syncs since the last verification push (see [`VERIFY_EVERY`]).
    pub syncs_since_verify: u32,
    pub docs: BTreeMap<String, DocState>,
}

/// What a response did to the phone's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Everything recorded in the document so far is stored on the server.
    Durable { id: String },
    /// Stored up to the receipt, but the phone has changes newer than what it pushed.
    PartlyDurable { id: String },
    /// The server refused the document; it stays on the phone with the reason.
    Rejected { id: String, rejection: Rejection },
    /// Changes from elsewhere (a supervisor's review …) arrived in the document.
    Updated { id: String },
    /// A document this phone did not have arrived.
    Received { id: String },
    /// The server and phone disagree about the document's history.
    ResyncNeeded { id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the response does not answer the request: {0}")]
    Mismatch(String),
    #[error("the server sent a change that does not decode: {0}")]
    BadChange(String),
}

impl ClientState {
    /// Changes of `doc` the server has not acknowledged that this phone must push: its own. A
    /// change by another actor came from the server and goes back there only from its author.
    fn unacked(&self, doc: &Automerge, acked: &[ChangeHash]) -> Vec<automerge::Change> {
        doc.get_changes(acked)
            .into_iter()
            .filter(|c| self.actor.as_ref().is_none_or(|a| c.actor_id() == a))
            .collect()
    }

    /// Starts tracking a document the phone created.
    pub fn track(&mut self, id: &str, kind: DocKind) {
        self.docs.entry(id.to_string()).or_insert(DocState {
            kind,
            acked: Vec::new(),
            rejected: None,
            resync: false,
        });
    }

    /// Documents with changes the server has not acknowledged, and not refused as they are now.
    pub fn pending<'a>(
        &'a self,
        docs: &'a BTreeMap<String, Automerge>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.docs.iter().filter_map(move |(id, state)| {
            let doc = docs.get(id)?;
            let heads = doc.get_heads();
            if let Some((_, at)) = &state.rejected
                && *at == heads
            {
                return None;
            }
            (state.resync || !self.unacked(doc, &state.acked).is_empty()).then_some(id.as_str())
        })
    }

    /// The push of every pending document: one request, one round trip. When a verification is
    /// due it names every document instead.
    pub fn request(&self, docs: &BTreeMap<String, Automerge>, now_ms: i64) -> SyncRequest {
        let ids: Vec<&str> = if self.syncs_since_verify >= VERIFY_EVERY {
            self.docs
                .keys()
                .map(String::as_str)
                .filter(|id| docs.contains_key(*id))
                .collect()
        } else {
            self.pending(docs).collect()
        };
        let pushes = ids
            .into_iter()
            .filter_map(|id| {
                let state = self.docs.get(id)?;
                let doc = docs.get(id)?;
                // After a resync answer, send everything: the server keeps what it lacks.
                let have = if state.resync {
                    Vec::new()
                } else {
                    state.acked.clone()
                };
                let changes = self
                    .unacked(doc, &have)
                    .into_iter()
                    .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
                    .collect();
                Some(DocPush {
                    id: id.to_string(),
                    kind: state.kind,
                    have: from_change_hashes(&have),
                    changes,
                    sync_message: None,
                })
            })
            .collect();
        SyncRequest {
            v: PROTOCOL_VERSION,
            cursor: self.cursor,
            sent_at_ms: now_ms,
            docs: pushes,
        }
    }

    /// Makes the next request a verification push.
    pub fn verify_next(&mut self) {
        self.syncs_since_verify = VERIFY_EVERY;
    }

    /// Applies a response: first the server's changes, then the receipts.
    pub fn apply(
        &mut self,
        request: &SyncRequest,
        response: &SyncResponse,
        docs: &mut BTreeMap<String, Automerge>,
    ) -> Result<Vec<Event>, ClientError> {
        if response.results.len() != request.docs.len()
            || response
                .results
                .iter()
                .zip(&request.docs)
                .any(|(r, d)| r.id != d.id)
        {
            return Err(ClientError::Mismatch(
                "results do not follow the pushed documents".into(),
            ));
        }
        let limits = Limits::default();
        let mut events = Vec::new();
        for update in &response.updates {
            let mut changes = Vec::with_capacity(update.changes.len());
            for bytes in &update.changes {
                let (change, _) = decode_change(bytes, &limits)
                    .map_err(|e| ClientError::BadChange(e.to_string()))?;
                changes.push(change);
            }
            let known = docs.contains_key(&update.id);
            let doc = docs.entry(update.id.clone()).or_default();
            let before = doc.get_heads();
            doc.apply_changes(changes)
                .map_err(|e| ClientError::BadChange(e.to_string()))?;
            let state = self.docs.entry(update.id.clone()).or_insert(DocState {
                kind: update.kind,
                acked: Vec::new(),
                rejected: None,
                resync: false,
            });
            let server_heads = to_change_hashes(&update.heads);
            if server_heads.iter().all(|h| crate::changes::holds(doc, h)) {
                state.acked = server_heads;
            }
            if !known {
                events.push(Event::Received {
                    id: update.id.clone(),
                });
            } else if doc.get_heads() != before {
                events.push(Event::Updated {
                    id: update.id.clone(),
                });
            }
        }
        for result in &response.results {
            let Some(state) = self.docs.get_mut(&result.id) else {
                continue;
            };
            let doc = docs.get(&result.id);
            match result.outcome {
                Outcome::Accepted => {
                    let heads = to_change_hashes(&result.heads);
                    // The receipt counts only if we hold every change it names.
                    if let Some(doc) = doc
                        && heads.iter().all(|h| crate::changes::holds(doc, h))
                    {
                        state.acked = heads;
                        state.rejected = None;
                        state.resync = false;
                        let acked = state.acked.clone();
                        if self.unacked(doc, &acked).is_empty() {
                            events.push(Event::Durable {
                                id: result.id.clone(),
                            });
                        } else {
                            events.push(Event::PartlyDurable {
                                id: result.id.clone(),
                            });
                        }
                    }
                }
                Outcome::Rejected => {
                    let rejection = result.error.clone().unwrap_or(Rejection {
                        code: "rejected".into(),
                        message: "the server refused the document".into(),
                    });
                    state.rejected = Some((
                        rejection.clone(),
                        doc.map(|d| d.get_heads()).unwrap_or_default(),
                    ));
                    events.push(Event::Rejected {
                        id: result.id.clone(),
                        rejection,
                    });
                }
                Outcome::Resync => {
                    state.resync = true;
                    events.push(Event::ResyncNeeded {
                        id: result.id.clone(),
                    });
                }
            }
        }
        if response.reset {
            // The server was restored from a backup and may lack changes it once acknowledged.
            // Push every document whole once; it keeps what it lacks.
            for state in self.docs.values_mut() {
                state.resync = true;
            }
        }
        self.cursor = response.cursor;
        let verified = self
            .docs
            .keys()
            .all(|id| !docs.contains_key(id) || request.docs.iter().any(|d| &d.id == id));
        self.syncs_since_verify = if verified {
            0
        } else {
            self.syncs_since_verify + 1
        };
        Ok(events)
    }

    /// True when every change this phone made in the document is covered by the server's receipt.
    pub fn is_durable(&self, id: &str, doc: &Automerge) -> bool {
        self.docs
            .get(id)
            .is_some_and(|state| !state.resync && self.unacked(doc, &state.acked).is_empty())
    }
}
