//! Server ingest: typical patrols (45 minutes, a fix every 10 s, a change a minute) pushed by
//! phones over real HTTP in batches, on SQLite and on PostgreSQL with two server processes, beside
//! the pure Automerge cost of loading the same documents, measured in the same run.
//!
//!     cargo bench -p gridpatrol-tests --bench ingest                 # 10,000 patrols, SQLite
//!     GRIDPATROL_TEST_PG_URL=postgres://… cargo bench -p gridpatrol-tests --bench ingest
//!     cargo bench -p gridpatrol-tests --bench ingest -- binary      # only the rows named
//!
//! Before each ingest it prints "ingest starts" to stderr (and, for the binary, the server's pid
//! before that), so that a profiler can be started from outside for the ingest alone.
//!
//! `scripts/test` runs it once in quick mode (200 patrols) as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{Automerge, Change};
use gridpatrol_tests::phone::Phone;
use gridpatrol_tests::{Backend, TestApp, serve_config};
use sync_protocol::client::ClientState;
use sync_protocol::schema::DocKind;
use sync_protocol::wire::{self, SyncResponse};

/// The allocator of the `gridpatrol` binary, so that the servers in this process behave like it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_795_000_000_000;
const PHONES: usize = 40;
const BATCH: usize = 10;
const PARALLEL: usize = 4;

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    gridpatrol_tests::process::peak_rss_mib(std::process::id())
}

fn typical_patrol(phone: &Phone, village: &str, n: usize) -> (String, Vec<Vec<u8>>) {
    gridpatrol_tests::phone::typical_patrol(
        &phone.actor,
        phone.user_id,
        phone.device_id,
        village,
        T0 + n as i64 * 3_600_000,
    )
}

struct Workload {
    /// Per phone: its patrols as (id, change chunks).
    per_phone: Vec<Vec<(String, Vec<Vec<u8>>)>>,
}

impl Workload {
    /// `patrols` typical patrols, shared out among the phones, each in its phone's village.
    fn new(phones: &[Phone], villages: &[String], patrols: usize) -> Workload {
        let per = patrols / PHONES;
        let per_phone = phones
            .iter()
            .zip(villages)
            .map(|(phone, village)| {
                (0..per)
                    .map(|n| typical_patrol(phone, village, n))
                    .collect()
            })
            .collect();
        Workload { per_phone }
    }

    fn total(&self) -> usize {
        self.per_phone.iter().map(Vec::len).sum()
    }
}

/// Decodes change chunks and applies them to a new document: the work the baseline measures.
fn load(changes: &[Vec<u8>]) -> Automerge {
    let decoded: Vec<Change> = changes
        .iter()
        .map(|b| Change::try_from(&b[..]).expect("change"))
        .collect();
    let mut doc = Automerge::new();
    doc.apply_changes(decoded).expect("apply");
    doc
}

/// The pure Automerge baseline: decode and apply every patrol's changes into a fresh document.
fn automerge_baseline(work: &Workload) -> f64 {
    let started = Instant::now();
    let mut heads = 0;
    for phone in &work.per_phone {
        for (_, changes) in phone {
            heads += load(changes).get_heads().len();
        }
    }
    assert!(heads >= work.total());
    work.total() as f64 / started.elapsed().as_secs_f64()
}

/// The requests each phone sends: its patrols, BATCH per request (built before the clock starts,
/// so that the phones' own work is not counted as the server's). Each is encoded when sent, with
/// the cursor of the phone's previous response, as a phone does.
fn requests(phones: &[Phone], work: &Workload) -> Vec<Vec<wire::SyncRequest>> {
    phones
        .iter()
        .zip(&work.per_phone)
        .map(|(phone, patrols)| {
            let mut state = ClientState {
                actor: Some(phone.actor.clone()),
                ..ClientState::default()
            };
            patrols
                .chunks(BATCH)
                .map(|batch| {
                    let mut docs = std::collections::BTreeMap::new();
                    for (id, changes) in batch {
                        docs.insert(id.clone(), load(changes));
                        state.track(id, DocKind::Patrol);
                    }
                    let request = state.request(&docs, 0);
                    for id in docs.keys() {
                        state.docs.remove(id);
                    }
                    request
                })
                .collect()
        })
        .collect()
}

/// CPU seconds this process has used so far (user and system).
fn cpu_seconds() -> f64 {
    gridpatrol_tests::process::cpu_seconds(std::process::id())
}

/// The phone's inspector, allowed to record in any grid (the bench measures cost, not rules).
struct Author<'a>(&'a Phone);

impl sync_protocol::server::Authority for Author<'_> {
    fn user_id(&self) -> i64 {
        self.0.user_id
    }
    fn device_id(&self) -> i64 {
        self.0.device_id
    }
    fn actor(&self) -> &automerge::ActorId {
        &self.0.actor
    }
    fn may_author(&self, _: &str) -> bool {
        true
    }
    fn may_review(&self, _: &str) -> bool {
        false
    }
}

/// The protocol's merge and checks alone (no HTTP, no database), to split the server's cost.
fn merge_only(phones: &[Phone], work: &Workload) -> f64 {
    let started = Instant::now();
    for (phone, patrols) in phones.iter().zip(&work.per_phone) {
        let author = Author(phone);
        for (id, changes) in patrols {
            let push = wire::DocPush {
                id: id.clone(),
                kind: DocKind::Patrol,
                have: vec![],
                changes: changes
                    .iter()
                    .cloned()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
                sync_message: None,
            };
            let (merged, _) = sync_protocol::server::merge(
                &Automerge::new(),
                0,
                &push,
                &author,
                &sync_protocol::Limits::default(),
            )
            .expect("merge");
            assert!(merged.created);
        }
    }
    work.total() as f64 / started.elapsed().as_secs_f64()
}

/// CPU seconds the whole machine has been busy so far (every process, PostgreSQL's too).
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or("");
    // cpu  user nice system idle iowait irq softirq steal …
    let fields: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: f64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(7)
        .map(|(_, v)| v)
        .sum();
    busy / 100.0
}

/// What one ingest run measured.
struct Rate {
    docs_per_s: f64,
    /// Cores busy on average in this process (servers and the phones' HTTP clients).
    cores: f64,
    /// Cores busy on average in the whole machine (PostgreSQL included).
    machine_cores: f64,
}

/// Sends every phone's requests, PARALLEL phones at a time, alternating phones between the given
/// servers.
async fn ingest(servers: &[String], phones: &[Phone], work: &Workload) -> Rate {
    let client = gridpatrol_tests::http_client();
    let requests = requests(phones, work);
    eprintln!("ingest starts");
    let started = Instant::now();
    let cpu = cpu_seconds();
    let machine = machine_cpu_seconds();
    let mut next = 0usize;
    while next < phones.len() {
        let mut tasks = Vec::new();
        for p in next..(next + PARALLEL).min(phones.len()) {
            let base = servers[p % servers.len()].clone();
            let client = client.clone();
            let token = phones[p].token.clone();
            let requests = requests[p].clone();
            tasks.push(tokio::spawn(async move {
                let mut cursor = wire::Cursor::default();
                for mut request in requests {
                    request.cursor = cursor;
                    let response = client
                        .post(format!("{base}/v1/sync"))
                        .bearer_auth(&token)
                        .header("content-type", sync_protocol::CONTENT_TYPE)
                        .body(wire::encode(&request))
                        .send()
                        .await
                        .expect("sync");
                    assert_eq!(response.status(), 200);
                    let bytes = response.bytes().await.expect("body");
                    let response: SyncResponse = wire::decode(&bytes).expect("decode");
                    assert!(
                        response
                            .results
                            .iter()
                            .all(|r| r.outcome == wire::Outcome::Accepted)
                    );
                    cursor = response.cursor;
                }
            }));
        }
        for task in tasks {
            task.await.expect("phone");
        }
        next += PARALLEL;
    }
    let seconds = started.elapsed().as_secs_f64();
    Rate {
        docs_per_s: work.total() as f64 / seconds,
        cores: (cpu_seconds() - cpu) / seconds,
        machine_cores: (machine_cpu_seconds() - machine) / seconds,
    }
}

async fn setup(app: &TestApp, patrols: usize) -> (Vec<Phone>, Workload) {
    let leader = app.token("admin-522632").await;
    let villages: Vec<String> = app
        .with_conn(|conn| {
            use diesel::prelude::*;
            use gridpatrol_server::schema::grids;
            grids::table
                .filter(grids::level.eq("village"))
                .order(grids::code.asc())
                .select(grids::code)
                .limit(PHONES as i64)
                .load(conn)
        })
        .await;
    let mut phones = Vec::new();
    for village in &villages {
        phones.push(Phone::enroll(app, &leader, &format!("inspector-{village}-1")).await);
    }
    let work = Workload::new(&phones, &villages, patrols);
    (phones, work)
}

async fn patrol_count(app: &TestApp) -> i64 {
    app.with_conn(|conn| {
        use diesel::prelude::*;
        gridpatrol_server::schema::patrols::table
            .count()
            .get_result(conn)
    })
    .await
}

/// Waits until the server has caught up after an ingest: every patrol judged and every
/// patrol's snapshot written (the worker judges patrols from the views their syncs left and
/// writes the snapshots they owe once syncs pause). Returns the seconds that took. `apps` are the
/// server processes sharing one database.
async fn settle(apps: &[&TestApp], patrols: i64) -> f64 {
    let app = apps[0];
    use diesel::prelude::*;
    use gridpatrol_server::schema::{patrol_verdicts, sync_snapshots};
    let started = Instant::now();
    loop {
        let (behind, snapshots) = app
            .with_conn(|conn| {
                let behind: i64 = patrol_verdicts::table
                    .filter(patrol_verdicts::judged_version.lt(patrol_verdicts::version))
                    .count()
                    .get_result(conn)?;
                let snapshots: i64 = sync_snapshots::table.count().get_result(conn)?;
                Ok((behind, snapshots))
            })
            .await;
        if behind == 0 && snapshots == patrols && apps.iter().all(|a| a.state.fresh.owed() == 0) {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The servers run as `gridpatrol serve` does by default: an HTTP worker per core.
fn served() -> gridpatrol_server::config::ServeConfig {
    gridpatrol_server::config::ServeConfig {
        workers: None,
        ..serve_config()
    }
}

fn print_rate(what: &str, rate: &Rate, baseline: f64) {
    println!(
        "| {what} | {:.0} | {:.2}× slower | {:.2} / {:.2} | {:.0} |",
        rate.docs_per_s,
        baseline / rate.docs_per_s,
        rate.cores,
        rate.machine_cores,
        peak_rss_mib()
    );
}

use gridpatrol_tests::process::{
    ServerProcess, peak_rss_mib as process_peak_rss_mib, server_binary,
};

/// Phones enrolled over HTTP only (no database access), for a server in another process.
async fn enroll_over_http(base: &str, patrols: usize) -> (Vec<Phone>, Workload) {
    use gridpatrol_tests::process::{enroll_device, enrollment_code, inspectors};
    let client = gridpatrol_tests::http_client();
    let admin = gridpatrol_tests::process::demo_admin_token(base).await;
    let mut firsts: Vec<(String, i64)> = inspectors(&client, base, &admin)
        .await
        .into_iter()
        .filter_map(|(name, id)| {
            let village = name.strip_prefix("inspector-")?.strip_suffix("-1")?;
            Some((village.to_string(), id))
        })
        .collect();
    firsts.sort();
    firsts.truncate(PHONES);
    let mut phones = Vec::new();
    let mut villages = Vec::new();
    for (village, user_id) in firsts {
        let code = enrollment_code(&client, base, &admin, user_id).await;
        let actor = automerge::ActorId::random();
        let (device_id, token) = enroll_device(&client, base, &code, &actor, "bench").await;
        phones.push(Phone {
            user_id,
            device_id,
            actor: actor.clone(),
            token,
            state: ClientState {
                actor: Some(actor),
                ..ClientState::default()
            },
            docs: std::collections::BTreeMap::new(),
        });
        villages.push(village);
    }
    let work = Workload::new(&phones, &villages, patrols);
    (phones, work)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    // `cargo bench … --bench ingest -- binary` runs only the rows named (sqlite, binary,
    // postgres); the two baselines always run.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs = |row: &str| named.is_empty() || named.iter().any(|n| n == row);
    let patrols = if quick { 200 } else { 10_000 };
    println!(
        "{patrols} patrols, {PHONES} phones, {BATCH} patrols per request, {PARALLEL} phones at a time"
    );
    println!();
    println!(
        "| backend | documents/s | vs pure Automerge load (same run) | cores busy: this process / machine | peak RSS after (MiB) |"
    );
    println!("|---|---|---|---|---|");

    let mut settled = None;
    let app = Arc::new(TestApp::with_demo_serving(Backend::Sqlite, served()).await);
    let (phones, work) = setup(&app, patrols).await;
    let baseline = automerge_baseline(&work);
    let merge = merge_only(&phones, &work);
    let rss_before = peak_rss_mib();
    println!(
        "| pure Automerge: decode + apply, one core | {baseline:.0} | 1.00× | 1 | {rss_before:.0} |"
    );
    println!(
        "| protocol merge and checks only, one core (no HTTP, no database) | {merge:.0} | {:.2}× slower | 1 | |",
        baseline / merge
    );
    if runs("sqlite") {
        let rate = ingest(std::slice::from_ref(&app.base), &phones, &work).await;
        assert_eq!(patrol_count(&app).await, work.total() as i64);
        print_rate("SQLite, one server (in the bench process)", &rate, baseline);
        settled = Some(settle(&[&app], work.total() as i64).await);
    }
    drop((phones, work, app));

    // The real binary in its own process: its peak RSS is the server's alone.
    match (quick || !runs("binary"), server_binary()) {
        (false, Some(bin)) => {
            let server = ServerProcess::spawn(&bin).await;
            let (phones, work) = enroll_over_http(&server.base, patrols).await;
            let idle = process_peak_rss_mib(server.child.id());
            // For a profiler attached from outside (docs/BENCHMARKS.md says how).
            eprintln!("the server's pid: {}", server.child.id());
            let rate = ingest(std::slice::from_ref(&server.base), &phones, &work).await;
            println!(
                "| SQLite, the `gridpatrol` binary in its own process | {:.0} | {:.2}× slower | {:.2} (bench) / {:.2} | server only: {:.0} after start, {:.0} peak |",
                rate.docs_per_s,
                baseline / rate.docs_per_s,
                rate.cores,
                rate.machine_cores,
                idle,
                process_peak_rss_mib(server.child.id())
            );
        }
        (false, None) => println!(
            "(the `gridpatrol` binary in its own process: build it first, `cargo build --release -p gridpatrol-server`)"
        ),
        (true, _) => {}
    }

    if runs("postgres") {
        postgres_rows(patrols, baseline).await;
    }
    if let Some(seconds) = settled {
        println!();
        println!(
            "After the in-process SQLite ingest, the server caught up (every patrol judged, every snapshot written) {seconds:.1} s after the last response."
        );
    }
}

/// PostgreSQL: one server process, then two on one database.
async fn postgres_rows(patrols: usize, baseline: f64) {
    if std::env::var("GRIDPATROL_TEST_PG_URL").is_err() {
        println!("(PostgreSQL skipped: GRIDPATROL_TEST_PG_URL is not set)");
        return;
    }
    let single = Arc::new(TestApp::with_demo_serving(Backend::Postgres, served()).await);
    let (phones, work) = setup(&single, patrols).await;
    let rate = ingest(std::slice::from_ref(&single.base), &phones, &work).await;
    print_rate("PostgreSQL, one server process", &rate, baseline);
    assert_eq!(patrol_count(&single).await, work.total() as i64);
    // Caught up before the next run: a stopped server's worker carries on in this process, and
    // its judging and snapshots would otherwise share the cores with the next run's ingest.
    let single_settled = settle(&[&single], work.total() as i64).await;
    drop((phones, work, single));

    let first = Arc::new(TestApp::with_demo_serving(Backend::Postgres, served()).await);
    let second = Arc::new(first.sharing_database(served()).await);
    let (phones, work) = setup(&first, patrols).await;
    let rate = ingest(&[first.base.clone(), second.base.clone()], &phones, &work).await;
    print_rate("PostgreSQL, two servers", &rate, baseline);
    assert_eq!(patrol_count(&first).await, work.total() as i64);
    let settled = settle(&[&first, &second], work.total() as i64).await;
    println!();
    println!(
        "On PostgreSQL the servers caught up {single_settled:.1} s (one) and {settled:.1} s (two) after the last response."
    );
}
