//! The soak (issue 21): simulated inspectors (patrol-sim, through the real SDK, phones kept in
//! SQLite stores) record and sync a week of patrols, photos and problems over a 2G-like link
//! (`gridpatrol_tests::link2g`: rate, latency, lost packets, outages) while the real server is
//! killed with SIGKILL and restarted again and again, on SQLite and on PostgreSQL with two server
//! processes behind the link. Afterwards every patrol, photo (bytes hash-checked) and problem the
//! phones hold as durable or uploaded is on the server exactly once, with the same fixes, and
//! every verdict is computed.
//!
//! The bounded profile (the test command) runs 20 inspectors for 7 days with at least 10 kills
//! on a faster link (2 MB/s, 30 ms, 7 % of pieces stalled 100 ms, 1–2 s outages every 8–15 s, a kill
//! every 4–8 s).
//! By hand, the village profile (5 KB/s, 300 ms, 7 %, 10–60 s outages) and more kills:
//! `GRIDPATROL_SOAK=long cargo test -p patrol-sim --test soak -- --nocapture` (docs/RELIABILITY.md).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel::prelude::*;
use gridpatrol_sdk::store::SqliteStore;
use gridpatrol_sdk::{Client, SyncState};
use gridpatrol_tests::link2g::{Link2g, Profile};
use gridpatrol_tests::process::{ServerProcess, free_port, test_server_binary};
use rand::{Rng, SeedableRng};

struct Soak {
    inspectors: u32,
    days: u32,
    kills: u32,
    link: Profile,
    /// Seconds between kills, and outage length, as ranges.
    kill_every: (u64, u64),
    outage: (u64, u64),
    outage_every: (u64, u64),
}

fn profile() -> Soak {
    if std::env::var("GRIDPATROL_SOAK").as_deref() == Ok("long") {
        Soak {
            inspectors: 20,
            days: 7,
            kills: 20,
            link: Profile::village_2g(),
            kill_every: (20, 60),
            outage: (10, 60),
            outage_every: (60, 240),
        }
    } else {
        Soak {
            inspectors: 20,
            days: 7,
            kills: 10,
            link: Profile {
                bytes_per_second: 2_000_000,
                latency: Duration::from_millis(30),
                loss: 0.07,
                stall: Duration::from_millis(100),
            },
            kill_every: (4, 8),
            outage: (1, 2),
            outage_every: (8, 15),
        }
    }
}

/// One server behind the link: its process, data directory, port and environment.
type Entry = (
    ServerProcess,
    std::path::PathBuf,
    u16,
    Vec<(String, String)>,
);

/// The servers behind the link, restarted where killed, and where they keep their data.
struct Servers {
    bin: std::path::PathBuf,
    processes: Vec<Entry>,
    database_url: String,
    photos: std::path::PathBuf,
}

impl Servers {
    async fn restart(&mut self, k: usize) {
        let (process, dir, port, env) = &mut self.processes[k];
        let _ = process.child.kill();
        let _ = process.child.wait();
        let env: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        *process = ServerProcess::start(&self.bin, dir, *port, &env).await;
    }
}

fn simulator(server: &str, dir: &std::path::Path, soak: &Soak, days: u32, seed: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_patrol-sim"));
    command
        .args(["--server", server])
        .args(["--inspectors", &soak.inspectors.to_string()])
        .args(["--days", &days.to_string(), "--seed", &seed.to_string()])
        .args(["--offline", "0.2", "--photos", "0.8", "--problems", "0.3"])
        // Patrols that stray across the border count or not by how far they strayed: the
        // labelled corpus judges those; here every patrol's fate is known from its making.
        .args(["--stray", "0"])
        .arg("--store-dir")
        .arg(dir)
        .arg("--truth")
        .arg(dir.join(TRUTH))
        .stdout(if std::env::var_os("SOAK_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    command
}

/// The simulation's ground truth, beside the phones' stores.
const TRUTH: &str = "truth.jsonl";

/// Per (ISO week, inspector): the patrols recorded and those that should count.
type Tally = BTreeMap<(String, String), (u32, u32)>;

/// The weekly tally the simulation's ground truth gives. A patrol counts when the simulation
/// walked it honestly (no mock locations, not a desk patrol) for the policy's 20 minutes and
/// 10 fixes, with at least one photo (榕江's `min_photos`); weeks are ISO weeks in China time
/// (UTC+8, no daylight saving).
fn truth_tally(path: &std::path::Path) -> Tally {
    use chrono::Datelike;
    let china = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    let mut tally = Tally::new();
    let text = std::fs::read_to_string(path).expect("ground truth");
    for line in text.lines() {
        let p: serde_json::Value = serde_json::from_str(line).expect("truth line");
        assert_eq!(
            p["stray"], false,
            "the soak walks no border-crossing patrols"
        );
        let at = chrono::DateTime::from_timestamp_millis(p["started_ms"].as_i64().expect("start"))
            .expect("time")
            .with_timezone(&china)
            .iso_week();
        let week = format!("{}-W{:02}", at.year(), at.week());
        let counts = p["mock"] == false
            && p["desk"] == false
            && p["duration_s"].as_u64().expect("duration") >= 20 * 60
            && p["fixes"].as_u64().expect("fixes") >= 10
            && p["photos"].as_u64().expect("photos") >= 1;
        let entry = tally
            .entry((
                week,
                p["inspector"].as_str().expect("inspector").to_string(),
            ))
            .or_default();
        entry.0 += 1;
        entry.1 += u32::from(counts);
    }
    tally
}

/// The same tally from the server's weekly records (巡查台账) of those weeks, as the county
/// admin reads them over HTTP.
async fn record_tally(base: &str, truth: &Tally) -> Tally {
    let admin = gridpatrol_tests::process::demo_admin_token(base).await;
    let weeks: BTreeSet<&String> = truth.keys().map(|(week, _)| week).collect();
    let inspectors: BTreeSet<&String> = truth.keys().map(|(_, who)| who).collect();
    let mut tally = Tally::new();
    for week in weeks {
        let record: serde_json::Value = gridpatrol_tests::http_client()
            .get(format!("{base}/v1/compliance/weeks/{week}"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("week")
            .json()
            .await
            .expect("record");
        let townships = record["townships"].as_array().expect("townships");
        for village in townships
            .iter()
            .flat_map(|t| t["villages"].as_array().expect("villages"))
        {
            for person in village["inspectors"].as_array().expect("inspectors") {
                let who = person["username"].as_str().expect("username").to_string();
                let patrols = person["patrols"].as_u64().expect("patrols") as u32;
                if inspectors.contains(&who) && patrols > 0 {
                    let counted = person["counted"].as_u64().expect("counted") as u32;
                    tally.insert((week.clone(), who), (patrols, counted));
                }
            }
        }
    }
    tally
}

/// A count to read from the server's database.
type Count = Box<dyn FnOnce(&mut gridpatrol_server::db::DbConnection) -> QueryResult<i64>>;

async fn soak(servers: &mut Servers, database: &str) {
    let soak = profile();
    let upstreams: Vec<String> = servers.processes.iter().map(|p| p.0.base.clone()).collect();
    let link = Arc::new(Link2g::start(&upstreams, soak.link, 7).await);
    let phones_dir = tempfile::tempdir().expect("tmp");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);

    // Outages come and go on their own.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outages = {
        let (link, stop) = (link.clone(), stop.clone());
        let (outage, every) = (soak.outage, soak.outage_every);
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(12);
            let mut count = 0u32;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(rng.random_range(every.0..=every.1))).await;
                link.outage();
                count += 1;
                tokio::time::sleep(Duration::from_secs(rng.random_range(outage.0..=outage.1)))
                    .await;
                link.restore();
            }
            count
        })
    };

    // The simulator runs (and runs again where a run failed) while the servers are killed.
    let mut run = simulator(&link.base, phones_dir.path(), &soak, soak.days, 1)
        .spawn()
        .expect("patrol-sim");
    let mut runs = 1u32;
    let mut kills = 0u32;
    let mut next_kill = tokio::time::Instant::now()
        + Duration::from_secs(rng.random_range(soak.kill_every.0..=soak.kill_every.1));
    loop {
        if let Some(status) = run.try_wait().expect("wait") {
            if status.success() && kills >= soak.kills {
                break;
            }
            if !status.success() && runs % 20 == 1 {
                let mut text = String::new();
                if let Some(mut err) = run.stderr.take() {
                    use std::io::Read;
                    let _ = err.read_to_string(&mut text);
                }
                eprintln!("run {runs} failed: {}", text.trim());
            }
            assert!(runs < 200, "patrol-sim never got through");
            // Failed on a dead server or a dead link, or finished before the kills: go on
            // recording a day at a time, as phones do.
            runs += 1;
            run = simulator(&link.base, phones_dir.path(), &soak, 1, u64::from(runs))
                .spawn()
                .expect("patrol-sim");
        }
        if kills < soak.kills && tokio::time::Instant::now() >= next_kill {
            let k = rng.random_range(0..servers.processes.len());
            servers.restart(k).await;
            kills += 1;
            next_kill = tokio::time::Instant::now()
                + Duration::from_secs(rng.random_range(soak.kill_every.0..=soak.kill_every.1));
        }
        if std::env::var_os("SOAK_DEBUG").is_some() && runs.is_multiple_of(10) {
            let direct = gridpatrol_tests::http_client()
                .get(format!("{}/healthz", servers.processes[0].0.base))
                .send()
                .await
                .map(|r| r.status().as_u16());
            let via = gridpatrol_tests::http_client()
                .get(format!("{}/healthz", link.base))
                .send()
                .await
                .map(|r| r.status().as_u16());
            eprintln!("run {runs} kills {kills}: direct {direct:?} via link {via:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    link.restore();
    let outage_count = outages.await.expect("outages");
    link.restore();
    // A last day with a network everywhere and no more faults.
    let last = simulator(&link.base, phones_dir.path(), &soak, 1, 999)
        .output()
        .expect("last run");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    // What the phones hold.
    let mut on_phones: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    let mut photos_on_phones = BTreeSet::new();
    let mut stores = 0;
    for entry in std::fs::read_dir(phones_dir.path()).expect("stores") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "sqlite3") {
            continue;
        }
        stores += 1;
        let store = SqliteStore::open(&path).expect("store");
        let phone = Client::open(Arc::new(store), &link.base).expect("open");
        for patrol in phone.patrols() {
            assert_eq!(patrol.sync, SyncState::Durable, "{path:?} {patrol:?}");
            let counts = (patrol.fix_count, patrol.photo_count, patrol.problem_count);
            assert!(on_phones.insert(patrol.id.clone(), counts).is_none());
        }
        for photo in phone.photos().expect("photos") {
            assert_eq!(photo.state, "uploaded", "{path:?} {photo:?}");
            photos_on_phones.insert(photo.sha256);
        }
    }
    assert_eq!(stores, soak.inspectors);
    assert!(on_phones.len() >= (soak.inspectors * soak.days) as usize);

    // What the server holds: the same patrols once each, with the same fixes, photos and
    // problems; every photo whole; every verdict computed.
    let db = gridpatrol_server::db::Db::open(&servers.database_url, 2).expect("database");
    let query = |f: Count| {
        db.run_blocking(|conn| f(conn).map_err(gridpatrol_server::error::ApiError::from))
            .expect("query")
    };
    let rows: Vec<(String, i32, i32, i32)> = db
        .run_blocking(|conn| {
            use gridpatrol_server::schema::patrols;
            patrols::table
                .select((
                    patrols::id,
                    patrols::fix_count,
                    patrols::photo_count,
                    patrols::problem_count,
                ))
                .load(conn)
                .map_err(gridpatrol_server::error::ApiError::from)
        })
        .expect("patrols");
    let on_server: BTreeMap<String, (u32, u32, u32)> = rows
        .into_iter()
        .map(|(id, f, p, q)| (id, (f as u32, p as u32, q as u32)))
        .collect();
    assert_eq!(
        on_server, on_phones,
        "every patrol once, with its fixes, photos, problems"
    );
    let problems = query(Box::new(|conn| {
        gridpatrol_server::schema::problems::table
            .count()
            .get_result(conn)
    }));
    let problems_on_phones: u32 = on_phones.values().map(|c| c.2).sum();
    assert_eq!(
        problems,
        i64::from(problems_on_phones),
        "every problem once"
    );
    let photos_on_server: BTreeSet<String> = db
        .run_blocking(|conn| {
            gridpatrol_server::schema::photos::table
                .select(gridpatrol_server::schema::photos::sha256)
                .load::<String>(conn)
                .map_err(gridpatrol_server::error::ApiError::from)
        })
        .expect("photos")
        .into_iter()
        .collect();
    assert_eq!(photos_on_server, photos_on_phones);
    for sha in &photos_on_server {
        let bytes = std::fs::read(servers.photos.join("originals").join(sha)).expect("original");
        assert_eq!(&gridpatrol_tests::sha256_hex(&bytes), sha, "photo bytes");
    }
    let mut pending = i64::MAX;
    for _ in 0..120 {
        pending = query(Box::new(|conn| {
            use gridpatrol_server::schema::patrol_verdicts as v;
            v::table
                .filter(v::judged_version.lt(v::version))
                .count()
                .get_result(conn)
        }));
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(pending, 0, "every verdict computed");
    let truth = truth_tally(&phones_dir.path().join(TRUTH));
    assert_eq!(
        truth.values().map(|t| t.0 as usize).sum::<usize>(),
        on_server.len(),
        "the ground truth has every patrol"
    );
    let records = record_tally(&servers.processes[0].0.base, &truth).await;
    assert_eq!(
        records, truth,
        "the weekly records (patrols, counted per inspector and week) equal the simulation's truth"
    );
    let counted: u32 = truth.values().map(|t| t.1).sum();
    eprintln!(
        "soak ({database}): {} patrols ({counted} counted, as the truth says), {} photos, {problems} problems; {kills} kills, {outage_count} outages, {} connections cut, {runs} simulator runs; {} KB up, {} KB down",
        on_server.len(),
        photos_on_server.len(),
        link.cuts.load(Ordering::Relaxed),
        link.upstream_bytes.load(Ordering::Relaxed) / 1024,
        link.downstream_bytes.load(Ordering::Relaxed) / 1024,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_on_2g_with_the_server_killed_loses_and_duplicates_nothing_sqlite() {
    let bin = test_server_binary();
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let process = ServerProcess::start(&bin, dir.path(), port, &[]).await;
    let mut servers = Servers {
        bin,
        processes: vec![(process, dir.path().to_path_buf(), port, Vec::new())],
        database_url: format!(
            "sqlite://{}",
            dir.path().join("gridpatrol.sqlite3").display()
        ),
        photos: dir.path().join("photos"),
    };
    soak(&mut servers, "SQLite").await;
}

/// The same on PostgreSQL with two server processes sharing the database and the photo
/// directory behind the link, either of them killed at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_on_2g_with_servers_killed_loses_and_duplicates_nothing_postgres() {
    let bin = test_server_binary();
    let database = gridpatrol_tests::fresh_database(gridpatrol_tests::Backend::Postgres);
    let shared = tempfile::tempdir().expect("tmp");
    let photos = shared.path().join("photos");
    gridpatrol_tests::process::migrate(&bin, &database.url, shared.path());
    let env = vec![
        ("GRIDPATROL_DATABASE_URL".to_string(), database.url.clone()),
        (
            "GRIDPATROL_PHOTO_STORE".to_string(),
            photos.display().to_string(),
        ),
    ];
    let mut processes = Vec::new();
    for k in 0..2 {
        let dir = shared.path().join(format!("server-{k}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let port = free_port();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let process = ServerProcess::start(&bin, &dir, port, &pairs).await;
        processes.push((process, dir, port, env.clone()));
    }
    let mut servers = Servers {
        bin,
        processes,
        database_url: database.url.clone(),
        photos,
    };
    soak(&mut servers, "PostgreSQL, two servers").await;
}
