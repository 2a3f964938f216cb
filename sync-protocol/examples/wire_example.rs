//! Prints the worked examples of the README: real messages, hex-encoded.
//!
//!     cargo run -p sync-protocol --example wire_example

use serde_bytes::ByteBuf;
use sync_protocol::schema::DocKind;
use sync_protocol::wire::{
    self, Cursor, DocPush, DocResult, Hash, Outcome, Rejection, SyncRequest, SyncResponse,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let first = SyncRequest {
        v: 1,
        cursor: Cursor::default(),
        sent_at_ms: 1_795_000_000_000,
        docs: vec![],
    };
    println!(
        "empty first request ({} bytes):\n{}\n",
        wire::encode(&first).len(),
        hex(&wire::encode(&first))
    );
    let push = SyncRequest {
        v: 1,
        cursor: Cursor {
            seq: 7,
            at: Some(Hash([0xab; 32])),
        },
        sent_at_ms: 1_795_000_000_000,
        docs: vec![DocPush {
            id: "019a4b2c-0000-7000-8000-000000000001".into(),
            kind: DocKind::Patrol,
            have: vec![],
            changes: vec![ByteBuf::from(vec![0x85, 0x6f, 0x4a, 0x83])],
            sync_message: None,
        }],
    };
    println!(
        "push of one new patrol with one (truncated) change ({} bytes):\n{}\n",
        wire::encode(&push).len(),
        hex(&wire::encode(&push))
    );
    let response = SyncResponse {
        v: 1,
        results: vec![DocResult {
            id: "019a4b2c-0000-7000-8000-000000000001".into(),
            outcome: Outcome::Rejected,
            heads: vec![],
            error: Some(Rejection {
                code: "not_inspector_of_grid".into(),
                message: "…".into(),
            }),
            sync_message: None,
        }],
        updates: vec![],
        cursor: Cursor {
            seq: 7,
            at: Some(Hash([0xab; 32])),
        },
        reset: false,
        server_time_ms: 1_795_000_000_123,
    };
    println!(
        "response rejecting it ({} bytes):\n{}",
        wire::encode(&response).len(),
        hex(&wire::encode(&response))
    );
}
