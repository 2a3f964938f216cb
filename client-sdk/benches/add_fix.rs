//! Recording on the phone: a GPS fix added durably (one Automerge change, stored in one SQLite
//! transaction), against a bare Automerge `put` + commit in memory, measured in the same run; and
//! the stored size of a 45-minute and a 4-hour patrol as the SDK writes them.
//!
//!     cargo bench -p gridpatrol-sdk --bench add_fix

use std::sync::Arc;
use std::time::Instant;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use gridpatrol_sdk::store::{Batch, MemoryStore, SqliteStore, Store, Write};
use gridpatrol_sdk::{Client, Datum, FixInput, Method};

const GRID: &str = "522632100001";

/// A store as enrollment leaves it (session and grids), without a server.
fn enrolled(store: Arc<dyn Store>) -> Client {
    store
        .write(&Batch(vec![
            Write::Meta {
                key: "session".into(),
                value: serde_json::to_vec(&serde_json::json!({
                    "user_id": 7, "device_id": 70, "actor": "",
                    "access_token": "", "refresh_token": ""
                }))
                .expect("json"),
            },
            Write::Meta {
                key: "grids".into(),
                value: serde_json::to_vec(&serde_json::json!([
                    {"code": GRID, "name": "村", "level": "village"}
                ]))
                .expect("json"),
            },
        ]))
        .expect("seed");
    Client::open(store, "http://127.0.0.1:9").expect("open")
}

fn fix(i: i64) -> FixInput {
    FixInput {
        at_ms: 1_795_000_000_000 + 10_000 * i,
        lon: 108.52 + 0.00003 * i as f64,
        lat: 25.93 + 0.00001 * (i % 50) as f64,
        datum: Datum::Gcj02,
        accuracy_m: Some(4.0 + (i % 7) as f32),
        mock: false,
    }
}

/// Median and 99th percentile of per-call times, in microseconds.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn time_calls(n: usize, mut call: impl FnMut(usize)) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        call(i);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    percentiles(samples)
}

fn stored_bytes(store: &dyn Store, id: &str) -> (usize, usize) {
    let snapshot = store.snapshot().expect("snapshot");
    let doc = &snapshot.docs[id];
    (doc.chunks.iter().map(Vec::len).sum(), doc.chunks.len())
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 200 } else { 2_000 };

    let mut doc = AutoCommit::new();
    let bare = time_calls(n, |i| {
        doc.put(ROOT, "fix", i as i64).expect("put");
        doc.commit();
    });

    let memory = enrolled(Arc::new(MemoryStore::new()));
    let patrol = memory.start_patrol(GRID, Method::Routine).expect("start");
    let in_memory = time_calls(n, |i| memory.add_fix(&patrol, fix(i as i64)).expect("fix"));

    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("phone.sqlite3")).expect("store"));
    let phone = enrolled(Arc::clone(&store));
    let patrol = phone.start_patrol(GRID, Method::Routine).expect("start");
    let durable = time_calls(n, |i| phone.add_fix(&patrol, fix(i as i64)).expect("fix"));

    println!("{n} calls each, per call:");
    println!();
    println!("| call | median (µs) | p99 (µs) | median vs bare put |");
    println!("|---|---|---|---|");
    for (name, (median, p99)) in [
        ("Automerge put + commit, in memory (baseline)", bare),
        ("SDK add_fix, memory store", in_memory),
        ("SDK add_fix, SQLite store (durable)", durable),
    ] {
        println!(
            "| {name} | {median:.1} | {p99:.1} | {:.1}× |",
            median / bare.0
        );
    }

    // Stored sizes: a fix every 10 s, each its own change (as the SDK records them), 3 notes.
    println!();
    println!(
        "| patrol | fixes | stored as recorded (bytes, chunks) | saved whole after sync (bytes) |"
    );
    println!("|---|---|---|---|");
    for (name, fixes) in [("45 minutes", 270), ("4 hours", 1_440)] {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let phone = enrolled(Arc::clone(&store));
        let patrol = phone.start_patrol(GRID, Method::Routine).expect("start");
        for i in 0..fixes {
            phone.add_fix(&patrol, fix(i)).expect("fix");
            if i % 90 == 45 {
                phone
                    .add_note(&patrol, "巡查河道两岸，未发现异常")
                    .expect("note");
            }
        }
        phone.submit(&patrol).expect("submit");
        let (bytes, chunks) = stored_bytes(store.as_ref(), &patrol);
        let whole = {
            let snapshot = store.snapshot().expect("snapshot");
            let mut doc = automerge::Automerge::new();
            for chunk in &snapshot.docs[&patrol].chunks {
                doc.load_incremental(chunk).expect("load");
            }
            doc.save().len()
        };
        println!("| {name} | {fixes} | {bytes}, {chunks} | {whole} |");
    }
}
