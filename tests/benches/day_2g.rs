//! A day's work over a village 2G link: an inspector's phone (the real SDK, its store in SQLite)
//! walks 5 typical patrols (45 minutes, a fix every 10 s, three notes) and takes one photo on each
//! with a 12-megapixel camera (4000 × 3000, about 3 MB), and syncs after each patrol, retrying as
//! the SDK does (`sync_with_retry`), through the user-space 2G link of `tests/src/link2g.rs`:
//! 40 kbit/s each way, 300 ms latency, 7 % of pieces stalled a second, and outages of 10–60 s
//! every 1–4 minutes that cut every connection. The photos go at the jurisdiction's size (the
//! default policy: long edge 2048 px, JPEG quality 85, EXIF kept).
//!
//! Measured: bytes on the wire (both ways, HTTP included), and the wall time from the first
//! sync to the last photo stored, against what those bytes need at the link's rate
//! (bytes ÷ 5,000 B/s). Goal (issue 21): ≤ 2.5 MB and ≤ 1.3× that time. The same day without
//! outages is run beside it, as the baseline of what the link alone costs.
//!
//!     cargo bench -p gridpatrol-tests --bench day_2g              # seeds 1, 2, 3
//!     cargo bench -p gridpatrol-tests --bench day_2g -- 7         # one seed
//!
//! The server is the `gridpatrol` binary in a process of its own (`cargo build --release -p
//! gridpatrol-server` first, or name one with `GRIDPATROL_BIN`).
//!
//! `scripts/test` runs it once in quick mode (one patrol, a small photo, a fast link, no
//! outages) as a smoke test.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridpatrol_sdk::store::SqliteStore;
use gridpatrol_sdk::{Backoff, Client, Datum, FixInput, Method, Options, PhotoOptions, SyncState};
use gridpatrol_tests::link2g::{Link2g, Profile};
use gridpatrol_tests::process::{ServerProcess, server_binary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VILLAGE: &str = "522632100001";
const INSPECTOR: &str = "inspector-522632100001-1";

struct Day {
    bytes_up: u64,
    bytes_down: u64,
    wall_s: f64,
    camera_bytes: u64,
    photo_bytes: u64,
    outages: u32,
    /// Seconds the link was down while the day went on.
    down_s: f64,
    syncs: u32,
}

impl Day {
    fn bytes(&self) -> u64 {
        self.bytes_up + self.bytes_down
    }
}

async fn day(
    profile: Profile,
    outages: bool,
    patrols: usize,
    camera: (u32, u32),
    seed: u64,
) -> Day {
    // The server in a process of its own (the release binary under `cargo bench`), so that its
    // work (photo checks, thumbnails) does not hold up the link's timers in this process.
    let bin = server_binary()
        .expect("no gridpatrol binary: `cargo build --release -p gridpatrol-server` first");
    let server = ServerProcess::spawn(&bin).await;
    let link = Arc::new(Link2g::start(std::slice::from_ref(&server.base), profile, seed).await);
    let dir = tempfile::tempdir().expect("tmp");
    let open = |base: &str| {
        let store = SqliteStore::open(&dir.path().join("phone.sqlite3")).expect("store");
        Client::open_with(
            Arc::new(store),
            base,
            Options {
                photos: PhotoOptions {
                    dir: Some(dir.path().join("photos")),
                    ..PhotoOptions::default()
                },
                ..Options::default()
            },
        )
        .expect("open")
    };
    // Enrolled over the same link (the grids and key points of its jurisdiction come down),
    // before the day and its outages begin; timed apart from the day.
    let code = enrollment_code(&server.base).await;
    let phone = open(&link.base);
    let enrolling = Instant::now();
    phone.enroll(&code, "红米 Note 12").await.expect("enroll");
    let enroll_s = enrolling.elapsed().as_secs_f64();
    let enroll_bytes =
        link.upstream_bytes.load(Ordering::Relaxed) + link.downstream_bytes.load(Ordering::Relaxed);
    eprintln!(
        "enrolled over the link in {enroll_s:.0} s, {:.0} KiB",
        enroll_bytes as f64 / 1024.0
    );
    // The camera's files, made before the day starts (the bench measures the link, not the
    // JPEG encoder of the test).
    let shots: Vec<std::path::PathBuf> = (0..patrols)
        .map(|p| {
            let path = dir.path().join(format!("IMG_{p}.jpg"));
            let jpeg = gridpatrol_tests::camera_jpeg(seed * 100 + p as u64, camera.0, camera.1);
            std::fs::write(&path, jpeg).expect("camera");
            path
        })
        .collect();
    let camera_bytes = shots
        .iter()
        .map(|p| std::fs::metadata(p).expect("shot").len())
        .sum();
    let up0 = link.upstream_bytes.load(Ordering::Relaxed);
    let down0 = link.downstream_bytes.load(Ordering::Relaxed);
    // Outages: up for 1–4 minutes, down for 10–60 s, from the start of the day.
    let down_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let weather = outages.then(|| {
        let (link, down_ms) = (link.clone(), down_ms.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                tokio::time::sleep(Duration::from_secs(rng.random_range(60..=240))).await;
                link.outage();
                let began = Instant::now();
                let length = Duration::from_secs(rng.random_range(10..=60));
                // Counted as it goes, so that an outage cut short by the day's end counts
                // what it lasted.
                while began.elapsed() < length {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    down_ms.fetch_add(100, Ordering::Relaxed);
                }
                link.restore();
            }
        })
    });
    let started = Instant::now();
    let t0 = chrono::Utc::now().timestamp_millis() - 6 * 3_600_000;
    let mut syncs = 0;
    for (p, shot) in shots.iter().enumerate() {
        let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
        for i in 0..270 {
            phone
                .add_fix(
                    &id,
                    FixInput {
                        at_ms: t0 + p as i64 * 3_600_000 + i * 10_000,
                        lon: 108.52 + 0.00003 * i as f64,
                        lat: 25.93 + 0.0001 * ((i as f64) / 9.0).sin(),
                        datum: Datum::Gcj02,
                        accuracy_m: Some(3.0 + (i % 11) as f32),
                        mock: false,
                    },
                )
                .expect("fix");
            if i == 135 {
                phone.attach_photo(&id, shot, "河道排口").expect("photo");
            }
            if i % 90 == 0 {
                phone
                    .add_note(&id, "巡查河道两岸，未发现异常")
                    .expect("note");
            }
        }
        phone.submit(&id).expect("submit");
        // The phone syncs until its patrol and photo are stored, as an app retries on a bad
        // network.
        loop {
            syncs += 1;
            let backoff = Backoff {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(30),
            };
            if phone.sync_with_retry(100, backoff).await.is_ok()
                && phone
                    .photos()
                    .expect("photos")
                    .iter()
                    .all(|p| p.state == "uploaded")
            {
                break;
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let outages = if let Some(weather) = weather {
        weather.abort();
        link.cuts.load(Ordering::Relaxed) as u32
    } else {
        0
    };
    let photo_bytes = phone.photos().expect("photos").iter().map(|p| p.size).sum();
    assert!(
        phone
            .patrols()
            .iter()
            .all(|p| matches!(p.sync, SyncState::Durable)),
        "every patrol stored"
    );
    Day {
        bytes_up: link.upstream_bytes.load(Ordering::Relaxed) - up0,
        bytes_down: link.downstream_bytes.load(Ordering::Relaxed) - down0,
        wall_s,
        down_s: down_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        camera_bytes,
        photo_bytes,
        outages,
        syncs,
    }
}

/// A one-time code for the inspector's phone, from the county admin over HTTP.
async fn enrollment_code(base: &str) -> String {
    use gridpatrol_tests::process::{demo_admin_token, enrollment_code, inspectors};
    let client = gridpatrol_tests::http_client();
    let admin = demo_admin_token(base).await;
    let (_, id) = inspectors(&client, base, &admin)
        .await
        .into_iter()
        .find(|(name, _)| name == INSPECTOR)
        .expect("the inspector");
    enrollment_code(&client, base, &admin, id).await
}

fn row(what: &str, seed: u64, day: &Day, rate: u64) {
    let need = day.bytes() as f64 / rate as f64;
    println!(
        "| {what} | {seed} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {} | {} |",
        day.camera_bytes as f64 / 1024.0,
        day.photo_bytes as f64 / 1024.0,
        day.bytes_up as f64 / 1024.0,
        day.bytes_down as f64 / 1024.0,
        day.bytes() as f64 / 1_000_000.0,
        need,
        day.wall_s,
        day.down_s,
        day.wall_s / need,
        (day.wall_s - day.down_s) / need,
        day.outages,
        day.syncs,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let asked: Vec<u64> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    println!(
        "| link | seed | camera files (KiB) | photos as sent (KiB) | up (KiB) | down (KiB) | on the wire (MB) | needed at 40 kbit/s (s) | wall (s) | link down (s) | wall / needed | (wall − down) / needed | connections cut | syncs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    if quick {
        let fast = Profile {
            bytes_per_second: 2_000_000,
            latency: Duration::from_millis(20),
            loss: 0.07,
            stall: Duration::from_millis(50),
        };
        let day = day(fast, false, 1, (4000, 3000), 1).await;
        row("2 MB/s (quick mode)", 1, &day, fast.bytes_per_second);
        return;
    }
    let seeds = if asked.is_empty() {
        vec![1, 2, 3]
    } else {
        asked
    };
    let profile = Profile::village_2g();
    for seed in seeds {
        let (calm, stormy) = tokio::join!(
            day(profile, false, 5, (4000, 3000), seed),
            day(profile, true, 5, (4000, 3000), seed),
        );
        row(
            "40 kbit/s, 7 % loss, no outages",
            seed,
            &calm,
            profile.bytes_per_second,
        );
        row(
            "40 kbit/s, 7 % loss, outages 10–60 s every 1–4 min",
            seed,
            &stormy,
            profile.bytes_per_second,
        );
    }
}
