//! The phone's half, sans IO: what to send, what a response means, what is now durable.
//!
//! The SDK owns the documents and persists [`ClientState`] next to them; it calls
//! [`ClientState::request`] to build a push, sends it however it likes, and feeds the response to
//! [`ClientState::apply`]. A document is durable on the server once the server's receipt (its
//! `acked` heads) covers every local change; until then the SDK keeps everything and resends.

use std::collections::BTreeMap;

use automerge::{Automerge, ChangeHash, ReadDoc};
use serde_bytes::ByteBuf;

use crate::changes::{Limits, decode_change};
use crate::schema::DocKind;
use crate::wire::{
    DocPush, Outcome, PROTOCOL_VERSION, Rejection, SyncRequest, SyncResponse, from_change_hashes,
    to_change_hashes,
};

/// What the phone remembers about one document between syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocState {
    pub kind: DocKind,
    /// The heads of the server's last receipt: everything before them is durable on the server.
    pub acked: Vec<ChangeHash>,
    /// Set when the server refused the document; cleared when the document changes again.
    pub rejected: Option<(Rejection, Vec<ChangeHash>)>,
}

/// What the phone remembers between syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientState {
    /// The server's changes-feed cursor.
    pub cursor: u64,
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
    /// Starts tracking a document the phone created.
    pub fn track(&mut self, id: &str, kind: DocKind) {
        self.docs.entry(id.to_string()).or_insert(DocState {
            kind,
            acked: Vec::new(),
            rejected: None,
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
            (!doc.get_changes(&state.acked).is_empty()).then_some(id.as_str())
        })
    }

    /// The push of every pending document: one request, one round trip.
    pub fn request(&self, docs: &BTreeMap<String, Automerge>, now_ms: i64) -> SyncRequest {
        let pending: Vec<&str> = self.pending(docs).collect();
        let pushes = pending
            .into_iter()
            .filter_map(|id| {
                let state = self.docs.get(id)?;
                let doc = docs.get(id)?;
                let changes = doc
                    .get_changes(&state.acked)
                    .into_iter()
                    .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
                    .collect();
                Some(DocPush {
                    id: id.to_string(),
                    kind: state.kind,
                    have: from_change_hashes(&state.acked),
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
            });
            let server_heads = to_change_hashes(&update.heads);
            if server_heads
                .iter()
                .all(|h| doc.get_change_by_hash(h).is_some())
            {
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
                        && heads.iter().all(|h| doc.get_change_by_hash(h).is_some())
                    {
                        state.acked = heads;
                        state.rejected = None;
                        if doc.get_changes(&state.acked).is_empty() {
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
                Outcome::Resync => events.push(Event::ResyncNeeded {
                    id: result.id.clone(),
                }),
            }
        }
        self.cursor = self.cursor.max(response.cursor);
        Ok(events)
    }

    /// True when every local change of the document is covered by the server's receipt.
    pub fn is_durable(&self, id: &str, doc: &Automerge) -> bool {
        self.docs
            .get(id)
            .is_some_and(|state| doc.get_changes(&state.acked).is_empty())
    }
}
