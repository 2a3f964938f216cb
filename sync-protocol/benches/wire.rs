//! Round trips and bytes on the wire: our one-round-trip push against Automerge's own sync protocol,
//! measured in the same run on the same documents, with the bytes of the Automerge changes
//! themselves as the floor.
//!
//!     cargo bench -p sync-protocol --bench wire
//!
//! The server side is the crate's real `handle` over an in-memory store; the network is counted,
//! not simulated. Automerge's protocol runs per document; its messages for all documents of a round
//! are counted as one round trip (the most generous batching a transport could do).

use std::collections::BTreeMap;
use std::convert::Infallible;

use automerge::sync::{State, SyncDoc};
use automerge::{ActorId, AutoCommit, Automerge};
use sync_protocol::Limits;
use sync_protocol::client::ClientState;
use sync_protocol::schema::{self, DocKind, Fix, FixSource, Method, NewPatrol};
use sync_protocol::server::{Authority, FeedPage, Merged, Store, handle, load_stored};
use sync_protocol::wire::{self, Cursor, SyncRequest, SyncResponse};

struct Me(ActorId);

impl Authority for Me {
    fn user_id(&self) -> i64 {
        7
    }
    fn device_id(&self) -> i64 {
        70
    }
    fn actor(&self) -> &ActorId {
        &self.0
    }
    fn may_author(&self, _: &str) -> bool {
        true
    }
    fn may_review(&self, _: &str) -> bool {
        false
    }
}

#[derive(Default)]
struct Mem(BTreeMap<String, Vec<Vec<u8>>>);

impl Store for Mem {
    type Error = Infallible;
    fn lock(&mut self, id: &str) -> Result<u64, Infallible> {
        Ok(self.0.get(id).map_or(0, |c| c.len() as u64))
    }
    fn load(&mut self, id: &str) -> Result<(Vec<Vec<u8>>, usize), Infallible> {
        let changes = self.0.get(id).cloned().unwrap_or_default();
        let len = changes.iter().map(Vec::len).sum();
        Ok((changes, len))
    }
    fn save(&mut self, id: &str, merged: &Merged) -> Result<(), Infallible> {
        self.0
            .entry(id.to_string())
            .or_default()
            .extend(merged.new_changes.iter().map(|(_, b)| b.clone()));
        Ok(())
    }
    fn feed(&mut self, cursor: &Cursor) -> Result<FeedPage, Infallible> {
        Ok(FeedPage {
            items: vec![],
            cursor: *cursor,
            reset: false,
        })
    }
}

/// A 45-minute patrol: a fix every 10 s, each fix its own change (as a phone records them), or
/// `fixes_per_change` fixes to a change.
fn patrol(actor: &ActorId, fixes: usize, fixes_per_change: usize, t0: i64) -> (String, AutoCommit) {
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    let id = schema::new_id();
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: id.clone(),
            grid: "522632100001".into(),
            inspector: 7,
            device: 70,
            method: Method::Routine,
            started_at_ms: t0,
        },
    )
    .expect("create");
    let all: Vec<Fix> = (0..fixes)
        .map(|i| Fix {
            at_ms: t0 + 10_000 * i as i64,
            lon: 108.52 + 0.00015 * (i as f64 / 9.0).sin() + 0.00003 * i as f64,
            lat: 25.93 + 0.0001 * (i as f64 / 7.0).cos(),
            datum: schema::Datum::Gcj02,
            accuracy_m: Some(3.0 + (i % 11) as f32),
            source: FixSource::Fused,
            mock: false,
        })
        .collect();
    for chunk in all.chunks(fixes_per_change) {
        schema::add_fixes(&mut doc, chunk).expect("fixes");
    }
    (id, doc)
}

struct Measured {
    round_trips: usize,
    bytes_up: usize,
    bytes_down: usize,
    /// The same request bodies sent with `Content-Encoding: deflate`.
    deflated_up: usize,
}

/// Our protocol: the phone pushes everything pending; count until nothing is pending.
fn ours(
    phone_docs: &BTreeMap<String, Automerge>,
    state: &mut ClientState,
    server: &mut Mem,
    actor: &ActorId,
) -> Measured {
    let mut docs = phone_docs.clone();
    let mut m = Measured {
        round_trips: 0,
        bytes_up: 0,
        bytes_down: 0,
        deflated_up: 0,
    };
    loop {
        let request: SyncRequest = state.request(&docs, 0);
        if request.docs.is_empty() {
            return m;
        }
        let up = wire::encode(&request);
        let handled = handle(
            &request,
            &Me(actor.clone()),
            server,
            &Limits::default(),
            Default::default(),
        )
        .expect("infallible");
        let page = server.feed(&request.cursor).expect("infallible");
        let response = handled.respond(page, 0);
        let down = wire::encode(&response);
        let response: SyncResponse = wire::decode(&down).expect("decode");
        state.apply(&request, &response, &mut docs).expect("apply");
        m.round_trips += 1;
        m.bytes_up += up.len();
        m.deflated_up += wire::deflate(&up).len();
        m.bytes_down += down.len();
        assert!(m.round_trips < 10, "no convergence");
    }
}

/// Automerge's sync protocol, one `State` pair per document, rounds batched across documents.
fn automerge_sync(
    phone: &BTreeMap<String, Automerge>,
    server: &mut BTreeMap<String, Automerge>,
    states: &mut BTreeMap<String, (State, State)>,
) -> Measured {
    let mut phone = phone.clone();
    let mut m = Measured {
        round_trips: 0,
        bytes_up: 0,
        bytes_down: 0,
        deflated_up: 0,
    };
    loop {
        let mut sent = false;
        for (id, doc) in phone.iter_mut() {
            let (phone_state, server_state) = states
                .entry(id.clone())
                .or_insert_with(|| (State::new(), State::new()));
            let server_doc = server.entry(id.clone()).or_default();
            if let Some(msg) = doc.generate_sync_message(phone_state) {
                let bytes = msg.encode();
                m.bytes_up += bytes.len();
                sent = true;
                server_doc
                    .receive_sync_message(
                        server_state,
                        automerge::sync::Message::decode(&bytes).expect("decode"),
                    )
                    .expect("receive");
            }
            if let Some(msg) = server_doc.generate_sync_message(server_state) {
                let bytes = msg.encode();
                m.bytes_down += bytes.len();
                sent = true;
                doc.receive_sync_message(
                    phone_state,
                    automerge::sync::Message::decode(&bytes).expect("decode"),
                )
                .expect("receive");
            }
        }
        if !sent {
            return m;
        }
        m.round_trips += 1;
        assert!(m.round_trips < 20, "no convergence");
    }
}

fn change_bytes(
    docs: &BTreeMap<String, Automerge>,
    since: &BTreeMap<String, Vec<automerge::ChangeHash>>,
) -> usize {
    docs.iter()
        .map(|(id, d)| {
            let have = since.get(id).cloned().unwrap_or_default();
            d.get_changes(&have)
                .into_iter()
                .map(|mut c| c.bytes().len())
                .sum::<usize>()
        })
        .sum()
}

fn scenario(name: &str, patrols: usize, fixes_per_change: usize, quick: bool) {
    let fixes = if quick { 30 } else { 270 };
    let actor = ActorId::random();
    let t0 = 1_795_000_000_000;
    let mut phone: BTreeMap<String, Automerge> = BTreeMap::new();
    let mut state = ClientState {
        actor: Some(actor.clone()),
        ..ClientState::default()
    };
    for n in 0..patrols {
        let (id, mut doc) = patrol(&actor, fixes, fixes_per_change, t0 + n as i64);
        phone.insert(id.clone(), Automerge::load(&doc.save()).expect("load"));
        state.track(&id, DocKind::Patrol);
    }
    let floor = change_bytes(&phone, &BTreeMap::new());
    let mut server = Mem::default();
    let ours_new = ours(&phone, &mut state, &mut server, &actor);
    let mut am_server = BTreeMap::new();
    let mut states = BTreeMap::new();
    let am_new = automerge_sync(&phone, &mut am_server, &mut states);
    println!(
        "| {name}: push {patrols} new patrol(s) | {} | {} ({:.2}×) | {} ({:.2}×) | {} | {} | {} ({:.2}×) | {} |",
        floor,
        ours_new.bytes_up,
        ours_new.bytes_up as f64 / floor as f64,
        ours_new.deflated_up,
        ours_new.deflated_up as f64 / floor as f64,
        ours_new.bytes_down,
        am_new.round_trips,
        am_new.bytes_up,
        am_new.bytes_up as f64 / floor as f64,
        am_new.bytes_down,
    );
    assert_eq!(ours_new.round_trips, 1, "one round trip for any batch");

    if patrols == 100 {
        // One new fix in each of the 100 patrols, after both sides are in sync.
        let heads: BTreeMap<String, Vec<automerge::ChangeHash>> = phone
            .iter()
            .map(|(id, d)| (id.clone(), d.get_heads()))
            .collect();
        let mut docs = BTreeMap::new();
        for (id, doc) in &phone {
            let mut auto = AutoCommit::load(&doc.save())
                .expect("load")
                .with_actor(actor.clone());
            let fix = Fix {
                at_ms: t0 + 3_000_000,
                lon: 108.53,
                lat: 25.94,
                datum: schema::Datum::Gcj02,
                accuracy_m: Some(5.0),
                source: FixSource::Gnss,
                mock: false,
            };
            schema::add_fixes(&mut auto, &[fix]).expect("fix");
            docs.insert(id.clone(), Automerge::load(&auto.save()).expect("load"));
        }
        let floor = change_bytes(&docs, &heads);
        // Our phone state already holds receipts from the first push.
        let ours_one = ours(&docs, &mut state, &mut server, &actor);
        let am_one = automerge_sync(&docs, &mut am_server, &mut states);
        println!(
            "| {name}: one new fix in each of 100 patrols | {} | {} ({:.2}×) | {} ({:.2}×) | {} | {} | {} ({:.2}×) | {} |",
            floor,
            ours_one.bytes_up,
            ours_one.bytes_up as f64 / floor as f64,
            ours_one.deflated_up,
            ours_one.deflated_up as f64 / floor as f64,
            ours_one.bytes_down,
            am_one.round_trips,
            am_one.bytes_up,
            am_one.bytes_up as f64 / floor as f64,
            am_one.bytes_down,
        );
        assert_eq!(ours_one.round_trips, 1);
        let _ = load_stored(Vec::new());
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "| case | Automerge change bytes | ours: bytes up, 1 round trip (× change bytes) | ours, body deflated | ours: bytes down | Automerge sync: round trips | Automerge sync: bytes up | Automerge sync: bytes down |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, per_change) in [
        ("a change per fix", 1),
        ("a change per minute (6 fixes)", 6),
    ] {
        for patrols in [1, 10, 100] {
            scenario(label, patrols, per_change, quick);
        }
    }
}
