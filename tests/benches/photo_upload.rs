//! Photo upload over loopback, phone (the real SDK) to server (the `gridpatrol` binary in its own
//! process when built in release; else in this process): throughput and the server's CPU per MB
//! for 4 MB photos, against a raw loopback TCP copy of the same bytes in the same run; and the
//! bytes that cross the link in total when the connection drops halfway through a photo.
//!
//! `cargo build --release -p gridpatrol-server && cargo bench -p gridpatrol-tests --bench photo_upload`
//! (`cargo test` runs it once in a quick mode, in-process, with small photos).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use gridpatrol_sdk::store::MemoryStore;
use gridpatrol_sdk::{Client, Datum, FixInput, Method, Options, PhotoOptions};
use gridpatrol_tests::link::FlakyLink;
use gridpatrol_tests::{Backend, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VILLAGE: &str = "522632100001";
const LINK_BYTES_PER_S: u64 = 2_000_000;
const INSPECTOR_ID_NAME: &str = "inspector-522632100001-1";

/// A JPEG of noise of at least `bytes` bytes (noise does not compress: honest sizes).
fn photo(seed: u64, bytes: usize) -> Vec<u8> {
    let mut side = 256u32;
    loop {
        let out = gridpatrol_tests::noise_jpeg(seed, side * 4 / 3, side);
        if out.len() >= bytes {
            return out;
        }
        side = side * 21 / 20;
    }
}

use gridpatrol_tests::process::{ServerProcess, cpu_seconds};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Raw loopback TCP: the same bytes written to a socket and read into a sink. MB/s.
async fn loopback_baseline(bytes: &[u8]) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0;
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    socket.write_all(bytes).await.expect("write");
    socket.shutdown().await.expect("shutdown");
    assert_eq!(reader.await.expect("reader"), bytes.len());
    bytes.len() as f64 / 1e6 / started.elapsed().as_secs_f64()
}

struct Server {
    base: String,
    pid: u32,
    admin_token: String,
    _process: Option<ServerProcess>,
    _app: Option<TestApp>,
}

async fn server(separate: bool) -> Server {
    if separate && let Some(bin) = gridpatrol_tests::process::server_binary() {
        let process = ServerProcess::spawn(&bin).await;
        let (base, pid) = (process.base.clone(), process.child.id());
        let admin_token = gridpatrol_tests::process::demo_admin_token(&base).await;
        return Server {
            base,
            pid,
            admin_token,
            _process: Some(process),
            _app: None,
        };
    }
    if separate {
        println!(
            "(build the server first for its own process: `cargo build --release -p gridpatrol-server`)"
        );
    }
    let app = TestApp::with_demo(Backend::Sqlite).await;
    let admin_token = app.token("admin-522632").await;
    Server {
        base: app.base.clone(),
        pid: std::process::id(),
        admin_token,
        _process: None,
        _app: Some(app),
    }
}

/// An enrolled phone talking to `url` (the server or a link in front of it).
async fn phone(server: &Server, url: &str, dir: &tempfile::TempDir) -> Client {
    use gridpatrol_tests::process::{enrollment_code, inspectors};
    let client = gridpatrol_tests::http_client();
    let (_, id) = inspectors(&client, &server.base, &server.admin_token)
        .await
        .into_iter()
        .find(|(name, _)| name == INSPECTOR_ID_NAME)
        .expect("inspector");
    let code = enrollment_code(&client, &server.base, &server.admin_token, id).await;
    let phone = Client::open_with(
        Arc::new(MemoryStore::new()),
        url,
        Options {
            photos: PhotoOptions {
                dir: Some(dir.path().join("photos")),
                delete_after_upload: true,
                ..PhotoOptions::default()
            },
            ..Options::default()
        },
    )
    .expect("open");
    phone.enroll(&code, "bench").await.expect("enroll");
    phone
}

/// A recording patrol with one fix, already durable on the server.
async fn patrol(phone: &Client) -> String {
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    phone
        .add_fix(
            &id,
            FixInput {
                at_ms: 1_795_000_000_000,
                lon: 108.52,
                lat: 25.93,
                datum: Datum::Wgs84,
                accuracy_m: Some(5.0),
                mock: false,
            },
        )
        .expect("fix");
    phone.sync().await.expect("sync the patrol");
    id
}

fn attach(phone: &Client, patrol: &str, dir: &tempfile::TempDir, bytes: &[u8], n: usize) {
    let camera = dir.path().join(format!("IMG_{n}.jpg"));
    std::fs::write(&camera, bytes).expect("camera");
    phone.attach_photo(patrol, &camera, "").expect("attach");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (size, count) = if full { (4_000_000, 11) } else { (300_000, 2) };
    let server = server(full).await;
    let dir = tempfile::tempdir().expect("tmp");
    let photos: Vec<Vec<u8>> = (0..count).map(|n| photo(n as u64, size)).collect();
    let mb = photos[0].len() as f64 / 1e6;
    println!(
        "{count} photos of {:.2} MB each; server {}",
        mb,
        if server._process.is_some() {
            "in its own process"
        } else {
            "in the bench process"
        }
    );

    // Throughput and server CPU, one photo per sync.
    let inspector = phone(&server, &server.base, &dir).await;
    let id = patrol(&inspector).await;
    let (mut rates, mut cpu_per_mb, mut baselines) = (Vec::new(), Vec::new(), Vec::new());
    for (n, bytes) in photos.iter().enumerate() {
        baselines.push(loopback_baseline(bytes).await);
        attach(&inspector, &id, &dir, bytes, n);
        let cpu = cpu_seconds(server.pid);
        let started = Instant::now();
        let report = inspector.sync().await.expect("sync");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(report.photos_uploaded, 1);
        rates.push(mb / seconds);
        cpu_per_mb.push((cpu_seconds(server.pid) - cpu) * 1000.0 / mb);
    }
    let (rate, baseline) = (median(rates), median(baselines));
    println!();
    println!(
        "| upload of one photo (median of {count}) | MB/s | vs raw loopback TCP (same run) | server CPU ms per MB |"
    );
    println!("|---|---|---|---|");
    println!("| raw loopback TCP copy | {baseline:.0} | 1.00× | |");
    println!(
        "| SDK sync: tus create + status + one PATCH, checked, hashed, stored | {rate:.0} | {:.1}× slower | {:.1} |",
        baseline / rate,
        median(cpu_per_mb)
    );
    println!("(server CPU includes the phone's when the server runs in the bench process)");

    // A drop halfway through the photo: what crosses the link in total.
    let link = FlakyLink::start(&server.base).await;
    // Paced like a good mobile link: over raw loopback actix drops the bytes it has read but
    // not yet parsed when the connection ends (up to its read buffer), which a paced link does
    // not fill.
    link.pace(LINK_BYTES_PER_S);
    let dir2 = tempfile::tempdir().expect("tmp");
    let inspector = phone(&server, &link.base, &dir2).await;
    let id = patrol(&inspector).await;
    let bytes = photo(1_000, size);
    attach(&inspector, &id, &dir2, &bytes, 0);
    let before = link.upstream_bytes.load(Ordering::Relaxed);
    // The sync request for the patrol's new change, the upload's creation and status, the
    // PATCH's headers (about 2 KB in all), then half the photo.
    link.cut_after(2_000 + bytes.len() as u64 / 2);
    let first = inspector.sync().await;
    assert!(first.is_err(), "the link was cut");
    link.disarm();
    let report = inspector.sync().await.expect("resumed");
    assert_eq!(report.photos_uploaded, 1);
    let crossed = link.upstream_bytes.load(Ordering::Relaxed) - before;
    println!();
    println!(
        "drop at 50 % on a link paced at {} MB/s: {crossed} bytes crossed the link for a {} byte photo: {:.3}× (goal ≤ 1.05×)",
        LINK_BYTES_PER_S as f64 / 1e6,
        bytes.len(),
        crossed as f64 / bytes.len() as f64
    );
    assert!(
        (crossed as f64) < bytes.len() as f64 * 1.1,
        "resuming resent what the server held"
    );
}
