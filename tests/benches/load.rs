//! Load: a burst of phones syncing at once against the real `gridpatrol` binary in a process of
//! its own, as at the end of a working day when a village's phones find a signal together.
//!
//! Every phone has one typical patrol (`gridpatrol_tests::phone::typical_patrol`: 45 minutes, a
//! fix every 10 s, a change a minute, three notes) to push in three syncs (a third of it each,
//! the last with the notes and the submission), as a phone that syncs whenever it has a network
//! does. All phones start at the same instant. A phone that
//! gets `503 server_busy` waits what `Retry-After` says and sends again, as the SDK does; any
//! other answer, or a connection error, is an error. Measured: syncs answered per second, the
//! latency of each answered sync (sent to answer read, so it includes the server's queue),
//! turn-aways, errors, and the server's peak RSS (VmHWM) and peak threads, sampled through the
//! burst and until every patrol is judged.
//!
//!     cargo build --release -p gridpatrol-server
//!     cargo bench -p gridpatrol-tests --bench load                  # 50, 200 and 1,000 phones, SQLite
//!     GRIDPATROL_TEST_PG_URL=postgres://… cargo bench -p gridpatrol-tests --bench load
//!                                                                   # also two servers on PostgreSQL
//!     cargo bench -p gridpatrol-tests --bench load -- 200           # one size only
//!
//! The phones' side may be the test build, against the release server named by
//! `GRIDPATROL_BIN` (spares a second release build of the tests crate; the phones' requests are
//! built before the burst, so the burst measures the server):
//!
//!     GRIDPATROL_BIN=target/release/gridpatrol cargo test -p gridpatrol-tests --bench load -- --bench
//!
//! `scripts/test` runs it once in quick mode (40 phones, SQLite, the debug binary), which fails on
//! any error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use automerge::{ActorId, Automerge, Change};
use gridpatrol_tests::process::{ServerProcess, free_port, peak_rss_mib, server_binary};
use serde_bytes::ByteBuf;
use sync_protocol::schema::DocKind;
use sync_protocol::wire::{self, DocPush, SyncRequest, SyncResponse};

const T0: i64 = 1_795_000_000_000;
const SYNCS_PER_PHONE: usize = 3;

/// A phone ready to go: its token and the three requests it will send (built before the burst,
/// so that the phones' own work is not measured as the server's).
struct Phone {
    token: String,
    requests: Vec<SyncRequest>,
}

/// The three requests that push `changes` a third at a time, each naming the heads the server
/// holds after the one before (as a phone's receipts tell it).
fn requests_for(id: &str, changes: &[Vec<u8>]) -> Vec<SyncRequest> {
    let mut requests = Vec::new();
    let mut have = Vec::new();
    let mut done = 0;
    for k in 1..=SYNCS_PER_PHONE {
        let upto = changes.len() * k / SYNCS_PER_PHONE;
        requests.push(SyncRequest {
            v: wire::PROTOCOL_VERSION,
            cursor: wire::Cursor::default(),
            sent_at_ms: T0,
            docs: vec![DocPush {
                id: id.to_string(),
                kind: DocKind::Patrol,
                have: have.clone(),
                changes: changes[done..upto]
                    .iter()
                    .cloned()
                    .map(ByteBuf::from)
                    .collect(),
                sync_message: None,
            }],
        });
        let mut doc = Automerge::new();
        let decoded: Vec<Change> = changes[..upto]
            .iter()
            .map(|b| Change::try_from(&b[..]).expect("change"))
            .collect();
        doc.apply_changes(decoded).expect("apply");
        have = doc.get_heads().into_iter().map(wire::Hash::from).collect();
        done = upto;
    }
    requests
}

/// Enrolls `count` phones over HTTP (the demo's inspectors in code order, a second phone each
/// when there are more phones than inspectors), `servers[k % n]` for phone k.
async fn enroll(servers: &[String], count: usize) -> Vec<Phone> {
    use gridpatrol_tests::process::{enroll_device, enrollment_code, inspectors};
    let client = gridpatrol_tests::http_client();
    let base = &servers[0];
    let admin = gridpatrol_tests::process::demo_admin_token(base).await;
    let mut inspectors: Vec<(String, i64)> = inspectors(&client, base, &admin)
        .await
        .into_iter()
        .filter_map(|(name, id)| {
            let village = name.strip_prefix("inspector-")?.rsplit_once('-')?.0;
            Some((village.to_string(), id))
        })
        .collect();
    inspectors.sort();
    assert!(!inspectors.is_empty(), "the demo has inspectors");
    let work: Vec<(usize, String, i64)> = (0..count)
        .map(|k| {
            let (village, id) = &inspectors[k % inspectors.len()];
            (k, village.clone(), *id)
        })
        .collect();
    let mut phones = Vec::with_capacity(count);
    for chunk in work.chunks(8) {
        let mut tasks = Vec::new();
        for (k, village, user_id) in chunk.iter().cloned() {
            let client = client.clone();
            let admin = admin.clone();
            let base = servers[k % servers.len()].clone();
            tasks.push(tokio::spawn(async move {
                let code = enrollment_code(&client, &base, &admin, user_id).await;
                let actor = ActorId::random();
                let (device_id, token) = enroll_device(&client, &base, &code, &actor, "load").await;
                let started = T0 + k as i64 * 60_000;
                let (id, changes) = gridpatrol_tests::phone::typical_patrol(
                    &actor, user_id, device_id, &village, started,
                );
                Phone {
                    token,
                    requests: requests_for(&id, &changes),
                }
            }));
        }
        for task in tasks {
            phones.push(task.await.expect("enroll"));
        }
    }
    phones
}

#[derive(Default)]
struct Outcome {
    /// Latency of each sync answered 200, in ms.
    latencies: Vec<f64>,
    turned_away: usize,
    errors: Vec<String>,
}

/// Sends every phone's syncs, all phones at once; returns what happened and the wall time.
async fn burst(servers: &[String], phones: Vec<Phone>) -> (Outcome, f64) {
    // One connection pool per phone, as every phone is its own client.
    let start = Arc::new(tokio::sync::Barrier::new(phones.len()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, phone) in phones.into_iter().enumerate() {
        let base = servers[k % servers.len()].clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let client = gridpatrol_tests::http_client();
            let mut outcome = Outcome::default();
            let mut cursor = wire::Cursor::default();
            start.wait().await;
            for mut request in phone.requests {
                request.cursor = cursor;
                let body = wire::encode(&request);
                loop {
                    let sent = Instant::now();
                    let answer = client
                        .post(format!("{base}/v1/sync"))
                        .bearer_auth(&phone.token)
                        .header("content-type", sync_protocol::CONTENT_TYPE)
                        .body(body.clone())
                        .timeout(Duration::from_secs(120))
                        .send()
                        .await;
                    let response = match answer {
                        Ok(response) => response,
                        Err(e) => {
                            outcome.errors.push(format!("connection: {e}"));
                            return outcome;
                        }
                    };
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    let bytes = match response.bytes().await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            outcome.errors.push(format!("body: {e}"));
                            return outcome;
                        }
                    };
                    match (status, retry_after) {
                        (200, _) => {
                            outcome
                                .latencies
                                .push(sent.elapsed().as_secs_f64() * 1000.0);
                            let response: SyncResponse = wire::decode(&bytes).expect("decode");
                            if response
                                .results
                                .iter()
                                .any(|r| r.outcome != wire::Outcome::Accepted)
                            {
                                outcome
                                    .errors
                                    .push(format!("not accepted: {:?}", response.results));
                                return outcome;
                            }
                            cursor = response.cursor;
                            break;
                        }
                        (503, Some(wait)) => {
                            outcome.turned_away += 1;
                            tokio::time::sleep(Duration::from_secs(wait)).await;
                        }
                        _ => {
                            outcome.errors.push(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&bytes)
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            ));
                            return outcome;
                        }
                    }
                }
            }
            outcome
        }));
    }
    let mut all = Outcome::default();
    for task in tasks {
        let one = task.await.expect("phone");
        all.latencies.extend(one.latencies);
        all.turned_away += one.turned_away;
        all.errors.extend(one.errors);
    }
    (all, started.elapsed().as_secs_f64())
}

/// Threads of a process now.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A metric's value summed over its label sets, from `/metrics`.
async fn metric(base: &str, name: &str) -> f64 {
    let text = gridpatrol_tests::http_client()
        .get(format!("{base}/metrics"))
        .bearer_auth(gridpatrol_tests::METRICS_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the servers have judged `patrols` patrols (at least; a patrol judged again after
/// a later sync counts again) and owe no snapshots.
async fn settle(servers: &[String], patrols: usize) {
    let started = Instant::now();
    loop {
        let mut judged = 0.0;
        let mut owed = 0.0;
        for base in servers {
            judged += metric(base, "gridpatrol_patrols_judged_total").await;
            owed += metric(base, "gridpatrol_snapshots_owed").await;
        }
        if judged >= patrols as f64 && owed == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "never settled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    phones: usize,
    syncs_per_s: f64,
    p50: f64,
    p99: f64,
    turned_away: usize,
    errors: usize,
    rss: Vec<f64>,
    threads: Vec<usize>,
    settled_s: f64,
}

/// One burst of `count` phones against `processes` (all sharing one database).
async fn run(processes: &[ServerProcess], count: usize) -> Row {
    let servers: Vec<String> = processes.iter().map(|p| p.base.clone()).collect();
    let phones = enroll(&servers, count).await;
    let pids: Vec<u32> = processes.iter().map(|p| p.child.id()).collect();
    let peak_threads: Arc<Vec<AtomicUsize>> =
        Arc::new(pids.iter().map(|_| AtomicUsize::new(0)).collect());
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pids, peak, sampling) = (pids.clone(), peak_threads.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                for (k, pid) in pids.iter().enumerate() {
                    peak[k].fetch_max(threads(*pid), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eprintln!("burst of {count} phones starts");
    let (mut outcome, wall) = burst(&servers, phones).await;
    let settling = Instant::now();
    settle(&servers, count).await;
    let settled_s = settling.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    outcome.latencies.sort_by(f64::total_cmp);
    for error in outcome.errors.iter().take(5) {
        eprintln!("error: {error}");
    }
    Row {
        phones: count,
        syncs_per_s: outcome.latencies.len() as f64 / wall,
        p50: percentile(&outcome.latencies, 0.5),
        p99: percentile(&outcome.latencies, 0.99),
        turned_away: outcome.turned_away,
        errors: outcome.errors.len(),
        rss: pids.iter().map(|pid| peak_rss_mib(*pid)).collect(),
        threads: peak_threads
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect(),
        settled_s,
    }
}

fn print_row(database: &str, row: &Row) {
    let join = |v: Vec<String>| v.join(" / ");
    println!(
        "| {database} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1} |",
        row.phones,
        row.phones * SYNCS_PER_PHONE,
        row.syncs_per_s,
        row.p50,
        row.p99,
        row.turned_away,
        row.errors,
        join(row.rss.iter().map(|r| format!("{r:.0}")).collect()),
        join(row.threads.iter().map(|t| t.to_string()).collect()),
        row.settled_s,
    );
}

/// Two `gridpatrol serve --demo` processes on one fresh PostgreSQL database (migrated and
/// seeded once) and one photo directory.
async fn postgres_servers(
    bin: &std::path::Path,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (gridpatrol_tests::TestDb, Vec<ServerProcess>) {
    let database = gridpatrol_tests::fresh_database(gridpatrol_tests::Backend::Postgres);
    let photos = dir.join("photos").display().to_string();
    gridpatrol_tests::process::migrate(bin, &database.url, dir);
    let mut processes = Vec::new();
    for k in 0..2 {
        let own = dir.join(format!("server-{k}"));
        std::fs::create_dir_all(&own).expect("dir");
        let mut env = vec![
            ("GRIDPATROL_DATABASE_URL", database.url.as_str()),
            ("GRIDPATROL_PHOTO_STORE", photos.as_str()),
        ];
        env.extend_from_slice(extra);
        processes.push(ServerProcess::start(bin, &own, free_port(), &env).await);
    }
    (database, processes)
}

#[tokio::main]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let asked: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let sizes: Vec<usize> = if quick {
        vec![40]
    } else if asked.is_empty() {
        vec![50, 200, 1000]
    } else {
        asked
    };
    let bin = server_binary().expect(
        "no gridpatrol binary beside the bench: `cargo build --release -p gridpatrol-server` first",
    );
    println!(
        "| database | phones | syncs | syncs/s | p50 ms | p99 ms | 503 (honoured) | errors | peak RSS MiB | peak threads | judged after s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Each size twice: database jobs unbounded (each waiting for a connection on a blocking
    // thread of its own, as before issue 21) as the baseline, then as served.
    let variants: &[(&str, &[(&str, &str)])] = if quick {
        &[("", &[])]
    } else {
        &[
            (
                ", jobs unbounded (baseline)",
                &[("GRIDPATROL_DB_JOBS", "1000000")],
            ),
            ("", &[]),
        ]
    };
    let mut failed = false;
    for &count in &sizes {
        for (label, env) in variants {
            let dir = tempfile::tempdir().expect("tmp");
            let server = ServerProcess::start(&bin, dir.path(), free_port(), env).await;
            let row = run(std::slice::from_ref(&server), count).await;
            print_row(&format!("SQLite, one server{label}"), &row);
            failed |= row.errors > 0;
        }
    }
    if !quick && std::env::var("GRIDPATROL_TEST_PG_URL").is_ok() {
        for &count in &sizes {
            for (label, env) in variants {
                let dir = tempfile::tempdir().expect("tmp");
                let (_database, processes) = postgres_servers(&bin, dir.path(), env).await;
                let row = run(&processes, count).await;
                print_row(&format!("PostgreSQL, two servers{label}"), &row);
                failed |= row.errors > 0;
            }
        }
    }
    assert!(!failed, "errors other than a honoured 503");
}
