//! A day's work after a day offline: an inspector's phone records 5 typical patrols (45 minutes,
//! a fix every 10 s, each fix its own change, as the SDK records them) with no network, then
//! syncs once. Time, round trips and bytes on the wire (DEFLATE both ways), against the bytes
//! of the Automerge changes themselves, over real HTTP to a real server (SQLite), 2 cores.
//!
//!     cargo bench -p gridpatrol-tests --bench sdk_sync

use std::sync::Arc;
use std::time::Instant;

use gridpatrol_sdk::store::{MemoryStore, Store};
use gridpatrol_sdk::{Client, Datum, FixInput, Method};
use gridpatrol_tests::{Backend, TestApp};

/// Each run is another inspector (of the demo's three per village), so that no run receives
/// another's patrols.
const RUNS: [(&str, &str); 5] = [
    ("522632100001", "inspector-522632100001-1"),
    ("522632100001", "inspector-522632100001-2"),
    ("522632100001", "inspector-522632100001-3"),
    ("522632100002", "inspector-522632100002-1"),
    ("522632100002", "inspector-522632100002-2"),
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { 5 };
    let app = TestApp::with_demo(Backend::Sqlite).await;
    let leader = app.token("leader-522632100").await;
    let mut rows = Vec::new();
    for &(village, inspector) in &RUNS[..runs] {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let phone = Client::open(Arc::clone(&store), &app.base).expect("open");
        phone
            .enroll(
                &app.enrollment_code(&leader, app.user_id(inspector).await)
                    .await,
                "红米",
            )
            .await
            .expect("enroll");
        let t0 = 1_795_000_000_000;
        for p in 0..5 {
            let id = phone.start_patrol(village, Method::Routine).expect("start");
            for i in 0..270 {
                let at = t0 + p * 3_600_000 + i * 10_000;
                phone
                    .add_fix(
                        &id,
                        FixInput {
                            at_ms: at,
                            lon: 108.52 + 0.00003 * i as f64,
                            lat: 25.93 + 0.0001 * ((i as f64) / 9.0).sin(),
                            datum: Datum::Gcj02,
                            accuracy_m: Some(3.0 + (i % 11) as f32),
                            mock: false,
                        },
                    )
                    .expect("fix");
            }
            for _ in 0..3 {
                phone
                    .add_note(&id, "巡查河道两岸，未发现异常")
                    .expect("note");
            }
            phone.submit(&id).expect("submit");
        }
        let changes: usize = store
            .snapshot()
            .expect("snapshot")
            .docs
            .values()
            .flat_map(|d| d.chunks.iter())
            .map(Vec::len)
            .sum();
        let started = Instant::now();
        let report = phone.sync().await.expect("sync");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(report.durable, 5);
        rows.push((ms, report, changes));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ms, report, changes) = &rows[rows.len() / 2];
    println!("5 patrols (1,350 fixes, 15 notes), one sync; median of {runs} runs:");
    println!();
    println!(
        "| round trips | time (ms) | bytes sent | bytes received | Automerge change bytes | sent / changes |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {ms:.0} | {} | {} | {changes} | {:.2}× |",
        report.round_trips,
        report.bytes_sent,
        report.bytes_received,
        report.bytes_sent as f64 / *changes as f64
    );
}
