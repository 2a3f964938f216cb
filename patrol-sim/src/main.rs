//! `patrol-sim`: village grid inspectors walking their grids, through the real client SDK.
//!
//! Signs in as the county administrator to hand out enrollment codes, enrolls one phone per
//! inspector (the first inspector of each of the first N village grids of the demo), and for each
//! simulated day walks every inspector through a patrol of their village: a believable track,
//! notes, now and then a problem, submitted; phones that are offline that day sync the next time
//! they have a network. `serve --demo` plus this gives a week of data:
//!
//!     cargo run -- serve --demo &
//!     cargo run -p patrol-sim -- --server http://127.0.0.1:8080 --inspectors 20 --days 7

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use clap::Parser;
use gridpatrol_sdk::clock::Clock;
use gridpatrol_sdk::store::{MemoryStore, SqliteStore, Store};
use gridpatrol_sdk::{
    Client, Datum, FixInput, Method, NewProblemInput, Options, PhotoOptions, ProblemDisposition,
};
use patrol_sim::api;
use patrol_sim::camera::{self, Shot};
use patrol_sim::track::{self, TrackOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(
    version,
    about = "Simulated village grid inspectors, through the GridPatrol SDK"
)]
struct Args {
    /// The GridPatrol server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Inspectors to simulate (one per village grid, in code order).
    #[arg(long, default_value_t = 20)]
    inspectors: usize,
    /// Days to simulate, one patrol per inspector a day.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// The first simulated day's 08:00 China time, as Unix milliseconds (default: 7 days ago).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Keep each phone's store in this directory (`<username>.sqlite3`), so that a second run
    /// resumes the same phones; without it, phones live in memory.
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// The administrator who hands out enrollment codes, and their password.
    #[arg(long, default_value = "admin-522632")]
    admin: String,
    #[arg(long, default_value = "gridpatrol-demo")]
    password: String,
    /// Share of days a phone has no network at the end of its patrol.
    #[arg(long, default_value_t = 0.3)]
    offline: f64,
    /// Share of phones reporting GCJ-02 (a Chinese map SDK) rather than raw GNSS.
    #[arg(long, default_value_t = 0.7)]
    gcj02: f64,
    /// Share of patrols that stray outside the grid for a while.
    #[arg(long, default_value_t = 0.1)]
    stray: f64,
    /// Share of patrols recorded with a mock-location app.
    #[arg(long, default_value_t = 0.02)]
    mock: f64,
    /// Share of "desk patrols" where the phone never moves.
    #[arg(long, default_value_t = 0.05)]
    desk: f64,
    /// Share of patrols with photos (one or two, taken along the way).
    #[arg(long, default_value_t = 0.8)]
    photos: f64,
    /// Share of patrols that find a problem.
    #[arg(long, default_value_t = 0.15)]
    problems: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append the ground truth of every patrol recorded (one JSON object a line: id, inspector,
    /// grid, start, duration, and what the simulation did: strayed, mock locations, desk patrol,
    /// photos) to this file, for checking the server's verdicts and weekly records against it.
    #[arg(long)]
    truth: Option<PathBuf>,
}

/// The phone's clocks, moved by the simulation.
struct SimClock {
    now: AtomicI64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::Relaxed)
    }
    fn monotonic_ms(&self) -> i64 {
        self.now.load(Ordering::Relaxed)
    }
}

struct Inspector {
    username: String,
    grid: track::Grid,
    phone: Client,
    clock: Arc<SimClock>,
    gcj02: bool,
    /// Where the simulated camera writes its files before the SDK takes them.
    camera_dir: PathBuf,
}

const DAY_MS: i64 = 86_400_000;
const NOTES: [&str; 4] = [
    "巡查河道两岸，未发现异常",
    "沿村道巡查，垃圾收集点清运正常",
    "查看养殖场周边，无异味",
    "与村民交谈，了解秸秆焚烧情况",
];
const CATEGORIES: [(&str, &str); 3] = [
    ("固体废物", "河岸堆放建筑垃圾"),
    ("大气污染", "田间焚烧秸秆"),
    ("水污染", "养殖废水直排沟渠"),
];

/// Tries `attempt` up to eight times, waiting 0.5 s, 1 s, 2 s … (at most 4 s) between tries: the
/// simulator's own calls (the admin's sign-in, enrollment codes) cross the same bad links as the
/// phones' syncs do.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut wait = std::time::Duration::from_millis(500);
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if tries >= 7 => return Err(error),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(4));
                tries += 1;
            }
        }
    }
}

/// The admin's token and the inspectors' user ids, fetched the first time a phone needs an
/// enrollment code.
struct Admin {
    token: String,
    users: serde_json::Value,
}

async fn admin(http: &reqwest::Client, args: &Args) -> Result<Admin, String> {
    retrying(|| async {
        let token = api::sign_in(http, &args.server, &args.admin, &args.password).await?;
        let users: serde_json::Value = http
            .get(format!("{}/v1/users?role=inspector", args.server))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Admin { token, users })
    })
    .await
}

async fn phones(args: &Args, start_ms: i64, rng: &mut StdRng) -> Result<Vec<Inspector>, String> {
    let grids = track::load_grids(include_str!(
        "../../server/demo/rongjiang_522632_grids.geojson"
    ))?;
    let mut villages: Vec<track::Grid> =
        grids.into_iter().filter(|g| g.level == "village").collect();
    villages.sort_by(|a, b| a.code.cmp(&b.code));
    villages.truncate(args.inspectors);

    // reqwest comes with rustls but no crypto provider (the SDK configures its own): ring it is.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut admin_session: Option<Admin> = None;
    let mut inspectors = Vec::new();
    for grid in villages {
        let username = format!("inspector-{}-1", grid.code);
        let store: Arc<dyn Store> = match &args.store_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                Arc::new(
                    SqliteStore::open(&dir.join(format!("{username}.sqlite3")))
                        .map_err(|e| e.to_string())?,
                )
            }
            None => Arc::new(MemoryStore::new()),
        };
        let clock = Arc::new(SimClock {
            now: AtomicI64::new(start_ms),
        });
        // Photos: the SDK's own copies next to the store (or in a temporary directory for
        // phones in memory), the camera's files beside them.
        let base = match &args.store_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("patrol-sim-{}", std::process::id())),
        };
        let camera_dir = base.join("camera").join(&username);
        std::fs::create_dir_all(&camera_dir).map_err(|e| e.to_string())?;
        let phone = Client::open_with(
            store,
            &args.server,
            Options {
                clock: clock.clone(),
                photos: PhotoOptions {
                    dir: Some(base.join(format!("{username}.photos"))),
                    ..PhotoOptions::default()
                },
                ..Options::default()
            },
        )
        .map_err(|e| e.to_string())?;
        if !phone.is_enrolled() {
            if admin_session.is_none() {
                admin_session = Some(admin(&http, args).await?);
            }
            let Some(session) = &admin_session else {
                unreachable!("signed in just above");
            };
            let id = session
                .users
                .as_array()
                .into_iter()
                .flatten()
                .find(|u| u["username"] == username)
                .and_then(|u| u["id"].as_i64())
                .ok_or_else(|| {
                    format!("no inspector {username} on the server (run serve --demo)")
                })?;
            // A new code each try: one whose enrollment went through but whose answer was lost
            // is spent.
            retrying(|| async {
                if phone.is_enrolled() {
                    // Enrolled, but fetching its grids failed: only that is left to do.
                    return phone
                        .refresh_grids()
                        .await
                        .map_err(|e| format!("{username}: {e}"));
                }
                let code = api::enrollment_code(&http, &args.server, &session.token, id).await?;
                phone
                    .enroll(&code, &format!("{username} 的手机"))
                    .await
                    .map_err(|e| format!("{username}: {e}"))
            })
            .await?;
        }
        inspectors.push(Inspector {
            username,
            grid,
            phone,
            clock,
            gcj02: rng.random_bool(args.gcj02),
            camera_dir,
        });
    }
    Ok(inspectors)
}

fn datum(fix: &track::Fix) -> Datum {
    match fix.datum {
        track::Datum::Wgs84 => Datum::Wgs84,
        track::Datum::Gcj02 => Datum::Gcj02,
    }
}

/// One inspector's patrol of the day. Returns the number of fixes recorded.
fn patrol(
    args: &Args,
    inspector: &Inspector,
    day_start_ms: i64,
    rng: &mut StdRng,
) -> Result<usize, String> {
    let started = day_start_ms + rng.random_range(0..6 * 3_600_000);
    let options = TrackOptions {
        start_ms: started,
        duration_s: rng.random_range(30..75) * 60,
        gcj02: inspector.gcj02,
        stray_outside: rng.random_bool(args.stray),
        mock_location: rng.random_bool(args.mock),
        desk: rng.random_bool(args.desk),
        ..TrackOptions::default()
    };
    let fixes = track::walk(&inspector.grid.polygon, &options, rng);
    let phone = &inspector.phone;
    inspector.clock.now.store(started, Ordering::Relaxed);
    let method = match rng.random_range(0..10) {
        0 => Method::Announced,
        1 => Method::Unannounced,
        _ => Method::Routine,
    };
    let id = phone
        .start_patrol(&inspector.grid.code, method)
        .map_err(|e| e.to_string())?;
    let note_at: Vec<usize> = (0..rng.random_range(1..4))
        .map(|_| rng.random_range(0..fixes.len().max(1)))
        .collect();
    let photo_at: Vec<usize> = if rng.random_bool(args.photos) {
        (0..rng.random_range(1..3))
            .map(|_| rng.random_range(0..fixes.len().max(1)))
            .collect()
    } else {
        Vec::new()
    };
    let problem_at = rng
        .random_bool(args.problems)
        .then(|| rng.random_range(0..fixes.len().max(1)));
    for (i, fix) in fixes.iter().enumerate() {
        inspector.clock.now.store(fix.at_ms, Ordering::Relaxed);
        phone
            .add_fix(
                &id,
                FixInput {
                    at_ms: fix.at_ms,
                    lon: fix.lon,
                    lat: fix.lat,
                    datum: datum(fix),
                    accuracy_m: Some(fix.accuracy_m),
                    mock: fix.mock,
                },
            )
            .map_err(|e| e.to_string())?;
        if note_at.contains(&i) {
            let note = NOTES[rng.random_range(0..NOTES.len())];
            phone.add_note(&id, note).map_err(|e| e.to_string())?;
        }
        for _ in photo_at.iter().filter(|&&at| at == i) {
            let shot = Shot {
                at_ms: fix.at_ms,
                lon: fix.lon,
                lat: fix.lat,
                datum: match fix.datum {
                    track::Datum::Wgs84 => "WGS-84",
                    track::Datum::Gcj02 => "GCJ-02",
                },
                utc_offset_min: 480,
                writes_offset: true,
            };
            let bytes = camera::shoot(&shot, 1280, 960, rng)?;
            let file = inspector.camera_dir.join(format!("IMG_{}.jpg", fix.at_ms));
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            let caption = NOTES[rng.random_range(0..NOTES.len())];
            phone
                .attach_photo(&id, &file, caption)
                .map_err(|e| e.to_string())?;
            // The SDK keeps its own copy; the camera roll is the user's business.
            let _ = std::fs::remove_file(&file);
        }
        if problem_at == Some(i) {
            let (category, description) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
            phone
                .record_problem(
                    &id,
                    NewProblemInput {
                        category: category.into(),
                        description: description.into(),
                        lon: fix.lon,
                        lat: fix.lat,
                        datum: datum(fix),
                        disposition: if rng.random_bool(0.6) {
                            ProblemDisposition::StoppedOnSite
                        } else {
                            ProblemDisposition::Escalated
                        },
                    },
                )
                .map_err(|e| e.to_string())?;
        }
    }
    phone.submit(&id).map_err(|e| e.to_string())?;
    if let Some(path) = &args.truth {
        use std::io::Write;
        let line = serde_json::json!({
            "id": id,
            "inspector": inspector.username,
            "grid": inspector.grid.code,
            "started_ms": fixes.first().map_or(started, |f| f.at_ms),
            "duration_s": options.duration_s,
            "fixes": fixes.len(),
            "stray": options.stray_outside,
            "mock": options.mock_location,
            "desk": options.desk,
            "photos": photo_at.len(),
        });
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{line}"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(fixes.len())
}

/// Syncs one phone; returns the documents it made durable and the photos it uploaded.
async fn sync(inspector: &Inspector) -> Result<(usize, usize), String> {
    let backoff = gridpatrol_sdk::Backoff {
        base: std::time::Duration::from_millis(250),
        cap: std::time::Duration::from_secs(4),
    };
    let report = inspector
        .phone
        .sync_with_retry(8, backoff)
        .await
        .map_err(|e| format!("{}: {e}", inspector.username))?;
    Ok((report.durable as usize, report.photos_uploaded as usize))
}

async fn run(args: Args) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Midnight UTC is 08:00 in China (UTC+8): the first day's morning, a week ago.
    let start_ms = args
        .start_ms
        .unwrap_or_else(|| (now - 7 * DAY_MS).div_euclid(DAY_MS) * DAY_MS);
    let inspectors = phones(&args, start_ms, &mut rng).await?;
    println!(
        "{} inspectors enrolled; simulating {} days from {start_ms}",
        inspectors.len(),
        args.days
    );
    let (mut patrols, mut fixes, mut synced, mut photos) = (0usize, 0usize, 0usize, 0usize);
    for day in 0..args.days {
        let day_start = start_ms + i64::from(day) * DAY_MS;
        for inspector in &inspectors {
            fixes += patrol(&args, inspector, day_start, &mut rng)?;
            patrols += 1;
            if !rng.random_bool(args.offline) {
                // A sync that fails (the network, the server) is as good as a day offline: the
                // records stay on the phone for the next one.
                match sync(inspector).await {
                    Ok((docs, sent)) => (synced, photos) = (synced + docs, photos + sent),
                    Err(error) => eprintln!("patrol-sim: will sync later: {error}"),
                }
            }
        }
        println!("day {}: {patrols} patrols, {fixes} fixes so far", day + 1);
    }
    // The last day ends with a network everywhere.
    for inspector in &inspectors {
        let (docs, sent) = sync(inspector).await?;
        (synced, photos) = (synced + docs, photos + sent);
    }
    println!(
        "{patrols} patrols ({fixes} fixes) recorded; {synced} documents acknowledged, {photos} photos uploaded"
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(error) = run(args).await {
        eprintln!("patrol-sim: {error}");
        std::process::exit(1);
    }
}
