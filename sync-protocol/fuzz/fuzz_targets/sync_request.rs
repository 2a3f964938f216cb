//! Untrusted bytes as a sync request, merged into an empty server by a caller allowed everything:
//! decoding, the bounded change decoder, Automerge and the checks must never panic.
#![no_main]

use automerge::{ActorId, Automerge};
use libfuzzer_sys::fuzz_target;
use sync_protocol::server::{Authority, check_request, merge};
use sync_protocol::wire::{SyncRequest, decode};
use sync_protocol::Limits;

struct Anyone(ActorId);

impl Authority for Anyone {
    fn user_id(&self) -> i64 {
        1
    }
    fn device_id(&self) -> i64 {
        1
    }
    fn actor(&self) -> &ActorId {
        &self.0
    }
    fn may_author(&self, _: &str) -> bool {
        true
    }
    fn may_review(&self, _: &str) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode::<SyncRequest>(data) else {
        return;
    };
    let limits = Limits::default();
    if check_request(&request, &limits).is_err() {
        return;
    }
    let empty = Automerge::new();
    for push in &request.docs {
        // Any actor: the fuzzer cannot guess ours, and the interesting code lies behind that check.
        let actor = push
            .changes
            .first()
            .and_then(|c| automerge::Change::try_from(&c[..]).ok())
            .map(|c| c.actor_id().clone())
            .unwrap_or_else(|| ActorId::from([0u8; 16]));
        let _ = merge(&empty, 0, push, &Anyone(actor), &limits);
    }
});
