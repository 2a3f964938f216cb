//! The messages of `POST /v1/sync`, encoded as CBOR (RFC 8949). See the README for the layout.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::schema::DocKind;

/// The protocol version this crate speaks; every message carries it as `v`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Media type of requests and responses.
pub const CONTENT_TYPE: &str = "application/vnd.gridpatrol.sync+cbor";

/// An Automerge change hash (SHA-256), as a 32-byte CBOR byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl From<automerge::ChangeHash> for Hash {
    fn from(hash: automerge::ChangeHash) -> Self {
        Hash(hash.0)
    }
}

impl From<Hash> for automerge::ChangeHash {
    fn from(hash: Hash) -> Self {
        automerge::ChangeHash(hash.0)
    }
}

pub fn to_change_hashes(hashes: &[Hash]) -> Vec<automerge::ChangeHash> {
    hashes.iter().map(|h| automerge::ChangeHash(h.0)).collect()
}

pub fn from_change_hashes(hashes: &[automerge::ChangeHash]) -> Vec<Hash> {
    hashes.iter().map(|h| Hash(h.0)).collect()
}

/// A position in the server's change log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Sequence number of the last change the phone heard about (0: the beginning).
    pub seq: u64,
    /// Hash of the change the server stored at `seq`: if the server's log no longer has it there
    /// (the server was restored from a backup), the server says `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Hash>,
}

/// Phone → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub v: u16,
    /// The cursor from the last response (the default the first time).
    pub cursor: Cursor,
    /// The device clock when the request was built, ms since the Unix epoch.
    pub sent_at_ms: i64,
    pub docs: Vec<DocPush>,
}

/// One document's new local changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocPush {
    /// The document id (a UUID).
    pub id: String,
    pub kind: DocKind,
    /// The heads of the server's last receipt for this document; empty for a new document.
    pub have: Vec<Hash>,
    /// Automerge change chunks the server may lack (everything since `have`), causal order.
    pub changes: Vec<ByteBuf>,
    /// Only in fallback mode: one Automerge sync-protocol message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_message: Option<ByteBuf>,
}

/// Server → phone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResponse {
    pub v: u16,
    /// One per pushed document, in request order.
    pub results: Vec<DocResult>,
    /// Changes the phone lacks: for pushed documents and for any other document of this inspector
    /// that changed since the request's cursor (a supervisor's review, say).
    pub updates: Vec<DocUpdate>,
    /// Send this back as the next request's `cursor`.
    pub cursor: Cursor,
    /// The server's log is not the one the request's cursor points into (it was restored from a
    /// backup): the phone pushes every document whole once, so the server gets back what it lost.
    #[serde(default)]
    pub reset: bool,
    /// The server's clock, ms since the Unix epoch (the phone estimates its clock skew from it).
    pub server_time_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored durably; `heads` is the receipt.
    Accepted,
    /// Refused whole; nothing of this document was stored. Do not retry unchanged.
    Rejected,
    /// The two sides disagree about history: continue with Automerge sync messages.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocResult {
    pub id: String,
    pub outcome: Outcome,
    /// After `accepted`: the server's durable heads, which cover every pushed change.
    pub heads: Vec<Hash>,
    /// After `rejected`: a stable code (see the README) and a message for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Rejection>,
    /// After `resync`: the server's Automerge sync message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_message: Option<ByteBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocUpdate {
    pub id: String,
    pub kind: DocKind,
    pub changes: Vec<ByteBuf>,
    /// The server's heads for the document; the phone has them all once it applied `changes`.
    pub heads: Vec<Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid message: {0}")]
    Malformed(String),
    #[error("protocol version {found} is not supported (this side speaks {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
}

impl DecodeError {
    /// The stable code the server answers with.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed_message",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
        }
    }
}

/// DEFLATE (RFC 1951) for a request or response body sent with `Content-Encoding: deflate`: the
/// change chunks of a push are small and alike, and compress well together.
pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Inflates a DEFLATE body, refusing to produce more than `limit` bytes (`None` then, or when the
/// bytes are not DEFLATE).
pub fn inflate(bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= limit).then_some(out)
}

#[derive(Deserialize)]
struct Versioned {
    v: u16,
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and our types always serialize.
    if let Err(e) = ciborium::into_writer(message, &mut out) {
        unreachable!("CBOR encoding of a sync message failed: {e}");
    }
    out
}

/// Decodes a message, checking its version first.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let versioned: Versioned =
        ciborium::from_reader(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if versioned.v != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: versioned.v,
            supported: PROTOCOL_VERSION,
        });
    }
    ciborium::from_reader(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_carry_bytes_as_byte_strings() {
        let request = SyncRequest {
            v: PROTOCOL_VERSION,
            cursor: Cursor {
                seq: 42,
                at: Some(Hash([1; 32])),
            },
            sent_at_ms: 1_795_000_000_000,
            docs: vec![DocPush {
                id: "0190d5f0-0000-7000-8000-000000000001".into(),
                kind: DocKind::Patrol,
                have: vec![Hash([7; 32])],
                changes: vec![ByteBuf::from(vec![1, 2, 3])],
                sync_message: None,
            }],
        };
        let bytes = encode(&request);
        assert_eq!(decode::<SyncRequest>(&bytes).expect("decode"), request);
        // A 32-byte hash is a CBOR byte string (0x58 0x20 …), not an array of 32 integers.
        let hash_at = bytes
            .windows(34)
            .position(|w| w[0] == 0x58 && w[1] == 0x20 && w[2..] == [7; 32]);
        assert!(hash_at.is_some(), "hash encoded as bstr");
    }

    #[test]
    fn bad_bytes_and_other_versions_are_clear_errors() {
        assert!(matches!(
            decode::<SyncRequest>(&[]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<SyncRequest>(&[0xff, 0x00, 0x13]),
            Err(DecodeError::Malformed(_))
        ));
        let future = encode(&SyncRequest {
            v: 9,
            cursor: Cursor::default(),
            sent_at_ms: 0,
            docs: vec![],
        });
        assert_eq!(
            decode::<SyncRequest>(&future),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        );
        let bytes = encode(&SyncRequest {
            v: 1,
            cursor: Cursor::default(),
            sent_at_ms: 0,
            docs: vec![],
        });
        assert!(
            decode::<SyncRequest>(&bytes[..bytes.len() - 1]).is_err(),
            "truncated"
        );
    }
}
