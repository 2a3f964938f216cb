//! Compliance at prefecture scale, end to end on a real SQLite file: 1,000 village grids (each
//! with a key point), 3,000 inspectors with a phone each, 21,000 patrols in one week with about
//! 2 million fixes, stored through the sync protocol's real server half. Then:
//!
//! - **full recompute**: `recompute-compliance`'s own function (every patrol's document loaded
//!   from the change store, judged against the 榕江 rules, the verdict written), its time and the
//!   process's peak memory;
//! - **incremental update**: one more patrol synced, then the compliance worker's pass that
//!   judges it, timed per patrol (median);
//! - **the weekly record** of the whole prefecture and of one township, as the API reads it;
//! - in the same run, the floors: loading the same documents with Automerge alone, from their
//!   change chunks and from the snapshots the worker saved as it first judged them (that first
//!   judging is timed too).
//!
//!     cargo bench -p gridpatrol-tests --bench recompute -- --bench
//!
//! Without `--bench` (as `cargo test --benches` runs it) it is a quick smoke test on 500 patrols.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use automerge::{ActorId, AutoCommit, Automerge};
use diesel::prelude::*;
use gridpatrol_server::auth::Role;
use gridpatrol_server::compliance::judging;
use gridpatrol_server::compliance::record;
use gridpatrol_server::db::DbConnection;
use gridpatrol_server::error::{ApiError, ApiResult};
use gridpatrol_server::grids::import::{self, Importer};
use gridpatrol_server::people::{self, Employment, NewUser};
use gridpatrol_server::schema::{devices, grids, patrol_verdicts, photos, sync_snapshots};
use gridpatrol_server::sync::DeviceAuthority;
use gridpatrol_server::sync::stored::{self, StoredDoc};
use gridpatrol_server::{AppState, Config, build_state};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use sync_protocol::client::ClientState;
use sync_protocol::schema::{self, DocKind, Fix, FixSource, Method, NewPatrol, PhotoRef};

/// The allocator of the `gridpatrol` binary, so that this process behaves like it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOWNSHIP_COLUMNS: usize = 8;
const TOWNSHIP_ROWS: usize = 5;
/// Villages per township side: 5 × 5 = 25 villages in each of 40 townships = 1,000.
const SIDE: usize = 5;
const VILLAGES: usize = TOWNSHIP_COLUMNS * TOWNSHIP_ROWS * SIDE * SIDE;
const INSPECTORS_PER_VILLAGE: usize = 3;
const FIXES: usize = 95;
/// A village's cell, in degrees (about 2.5 km at 榕江's latitude).
const CELL: f64 = 0.025;
const WEST: f64 = 108.0;
const SOUTH: f64 = 25.6;
/// Monday 2026-11-16 00:00 +08:00 (week 2026-W47), in ms.
const MONDAY: i64 = 1_794_758_400_000;
const WEEK: &str = "2026-W47";
const RUNS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn peak_rss_mib() -> f64 {
    gridpatrol_tests::process::peak_rss_mib(std::process::id())
}

/// Starts the peak-memory count afresh (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}

fn rect(west: f64, south: f64, east: f64, north: f64) -> serde_json::Value {
    json!({"type": "Polygon", "coordinates": [[
        [west, south], [east, south], [east, north], [west, north], [west, south]
    ]]})
}

fn village_centre(v: usize) -> (f64, f64) {
    let columns = TOWNSHIP_COLUMNS * SIDE;
    (
        WEST + CELL * ((v % columns) as f64 + 0.5),
        SOUTH + CELL * ((v / columns) as f64 + 0.5),
    )
}

fn township_of(v: usize) -> usize {
    let columns = TOWNSHIP_COLUMNS * SIDE;
    let (x, y) = (v % columns, v / columns);
    (y / SIDE) * TOWNSHIP_COLUMNS + x / SIDE
}

fn township_code(t: usize) -> String {
    format!("522632{:03}", t + 1)
}

fn village_code(v: usize) -> String {
    let columns = TOWNSHIP_COLUMNS * SIDE;
    let (x, y) = (v % columns, v / columns);
    let within = (y % SIDE) * SIDE + x % SIDE;
    format!("{}{:03}", township_code(township_of(v)), within + 1)
}

/// The prefecture-scale tree as a GeoJSON FeatureCollection: the county, 40 townships (rectangles
/// of 5 × 5 cells), 1,000 villages (irregular 24-sided polygons inside their cells), a key point
/// each.
fn grid_tree(rng: &mut StdRng) -> Vec<u8> {
    let columns = TOWNSHIP_COLUMNS * SIDE;
    let rows = TOWNSHIP_ROWS * SIDE;
    let mut features = vec![json!({"type": "Feature",
        "properties": {"code": "522632", "name": "榕江县", "level": "county"},
        "geometry": rect(WEST, SOUTH, WEST + CELL * columns as f64, SOUTH + CELL * rows as f64)})];
    for t in 0..TOWNSHIP_COLUMNS * TOWNSHIP_ROWS {
        let (x, y) = ((t % TOWNSHIP_COLUMNS) * SIDE, (t / TOWNSHIP_COLUMNS) * SIDE);
        let (west, south) = (WEST + CELL * x as f64, SOUTH + CELL * y as f64);
        features.push(json!({"type": "Feature",
            "properties": {"code": township_code(t), "name": format!("第{}乡", t + 1),
                           "level": "township", "parent_code": "522632"},
            "geometry": rect(west, south, west + CELL * SIDE as f64, south + CELL * SIDE as f64)}));
    }
    for v in 0..VILLAGES {
        let (cx, cy) = village_centre(v);
        let ring: Vec<[f64; 2]> = (0..=24)
            .map(|k| {
                let angle = std::f64::consts::TAU * (k % 24) as f64 / 24.0;
                let r = CELL * (0.36 + 0.1 * ((k % 24 * 7 + v) % 5) as f64 / 5.0);
                [cx + r * angle.cos(), cy + r * angle.sin()]
            })
            .collect();
        features.push(json!({"type": "Feature",
            "properties": {"code": village_code(v), "name": format!("第{}村", v + 1),
                           "level": "village", "parent_code": township_code(township_of(v))},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}));
        let (kx, ky) = (
            cx + rng.random_range(-0.003..0.003),
            cy + rng.random_range(-0.003..0.003),
        );
        features.push(json!({"type": "Feature",
            "properties": {"code": format!("{}-P01", village_code(v)), "name": "排污口",
                           "level": "key_point", "parent_code": village_code(v),
                           "kind": "key_point", "radius_m": 50},
            "geometry": {"type": "Point", "coordinates": [kx, ky]}}));
    }
    serde_json::to_vec(&json!({"type": "FeatureCollection", "features": features})).expect("json")
}

/// An inspector's phone as the server knows it.
struct Inspector {
    user_id: i64,
    device_id: i64,
    actor: ActorId,
    village: usize,
}

fn people(conn: &mut DbConnection) -> Vec<Inspector> {
    let village_ids: Vec<(i64, String)> = grids::table
        .filter(grids::level.eq("village"))
        .filter(grids::kind.eq("territorial"))
        .select((grids::id, grids::code))
        .load(conn)
        .expect("villages");
    let by_code: BTreeMap<String, i64> = village_ids.into_iter().map(|(id, c)| (c, id)).collect();
    let mut inspectors = Vec::new();
    for v in 0..VILLAGES {
        let grid_id = by_code[&village_code(v)];
        for k in 0..INSPECTORS_PER_VILLAGE {
            let username = format!("wgy{v:04}{k}");
            let user_id = people::create_user(
                conn,
                &NewUser {
                    username: &username,
                    display_name: &format!("网格员{v}-{k}"),
                    phone: None,
                    password: None,
                    is_superuser: false,
                },
            )
            .expect("user");
            people::grant_role(
                conn,
                user_id,
                grid_id,
                Role::Inspector,
                Some(Employment::PartTime),
                None,
            )
            .expect("role");
            let actor = ActorId::random();
            let device_id: i64 = diesel::insert_into(devices::table)
                .values((
                    devices::user_id.eq(user_id),
                    devices::name.eq(format!("{username} 的手机")),
                    devices::actor_id.eq(actor.to_hex_string()),
                    devices::enrolled_at.eq(gridpatrol_server::db::now()),
                ))
                .returning(devices::id)
                .get_result(conn)
                .expect("device");
            inspectors.push(Inspector {
                user_id,
                device_id,
                actor,
                village: v,
            });
        }
    }
    inspectors
}

/// A patrol of `FIXES` fixes 30 s apart wandering around the village's centre (a third of them
/// GCJ-02), with a note and a photo reference, submitted; a change a minute, as a phone saves.
fn patrol(inspector: &Inspector, started: i64, rng: &mut StdRng) -> (String, Automerge, PhotoRef) {
    let id = schema::new_id();
    let mut doc = AutoCommit::new().with_actor(inspector.actor.clone());
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: id.clone(),
            grid: village_code(inspector.village),
            inspector: inspector.user_id,
            device: inspector.device_id,
            method: Method::Routine,
            started_at_ms: started,
        },
    )
    .expect("create");
    let (mut x, mut y) = village_centre(inspector.village);
    let fixes: Vec<Fix> = (0..FIXES)
        .map(|i| {
            x += rng.random_range(-0.0004..0.0004);
            y += rng.random_range(-0.0004..0.0004);
            Fix {
                at_ms: started + 30_000 * i as i64,
                lon: x,
                lat: y,
                datum: if i % 3 == 0 {
                    schema::Datum::Gcj02
                } else {
                    schema::Datum::Wgs84
                },
                accuracy_m: Some(rng.random_range(3.0..40.0)),
                source: FixSource::Fused,
                mock: false,
            }
        })
        .collect();
    for minute in fixes.chunks(2) {
        schema::add_fixes(&mut doc, minute).expect("fixes");
    }
    schema::add_note(
        &mut doc,
        &schema::Note {
            at_ms: started + 600_000,
            text: "巡查河道两岸，未发现异常".into(),
        },
    )
    .expect("note");
    let mut sha = [0u8; 32];
    rng.fill(&mut sha);
    let photo = PhotoRef {
        sha256: hex::encode(sha),
        taken_at_ms: started + 900_000,
        position: Some((x, y)),
        caption: "河道".into(),
    };
    schema::add_photo(&mut doc, &photo).expect("photo");
    schema::submit(&mut doc, started + 30_000 * FIXES as i64).expect("submit");
    let mut plain = Automerge::new();
    plain.apply_changes(doc.get_changes(&[])).expect("apply");
    (id, plain, photo)
}

/// The photos' arrival, as the upload's last byte records it: EXIF time and place (in China's
/// time), and a perceptual hash, so that judging looks for reuse among the county's photos.
fn photos_arrive(
    conn: &mut DbConnection,
    inspector: &Inspector,
    photos: &[PhotoRef],
    rng: &mut StdRng,
) {
    for photo in photos {
        let local = chrono::DateTime::from_timestamp_millis(photo.taken_at_ms + 8 * 3_600_000)
            .expect("time")
            .naive_utc();
        let exif = gridpatrol_photo::Exif {
            taken_at: Some(local.format("%Y-%m-%dT%H:%M:%S").to_string()),
            offset: Some("+08:00".into()),
            lon: photo.position.map(|p| p.0),
            lat: photo.position.map(|p| p.1),
            gps_datum: Some("WGS-84".into()),
            ..Default::default()
        };
        diesel::insert_into(photos::table)
            .values((
                photos::sha256.eq(&photo.sha256),
                photos::bytes.eq(3_500_000i64),
                photos::format.eq("jpeg"),
                photos::width.eq(4000),
                photos::height.eq(3000),
                photos::exif.eq(serde_json::to_string(&exif).expect("exif")),
                photos::phash.eq(Some(rng.random::<i64>())),
                photos::derived.eq("done"),
                photos::device_id.eq(inspector.device_id),
                photos::user_id.eq(inspector.user_id),
                photos::received_at.eq(gridpatrol_server::db::now()),
                photos::hashed_at.eq(Some(gridpatrol_server::db::now())),
            ))
            .execute(conn)
            .expect("photo row");
    }
}

/// Stores one phone's patrols through the protocol's server half in one write transaction, as
/// `POST /v1/sync` does (no HTTP: the bench measures compliance, the ingest bench the rest).
fn store(
    state: &AppState,
    inspector: &Inspector,
    docs: BTreeMap<String, Automerge>,
) -> ApiResult<()> {
    let mut client = ClientState {
        actor: Some(inspector.actor.clone()),
        ..ClientState::default()
    };
    for id in docs.keys() {
        client.track(id, DocKind::Patrol);
    }
    let request = client.request(&docs, 0);
    let index = state.index.current();
    let path = index
        .get_by_code(&village_code(inspector.village))
        .map(|g| index.path_of(g))
        .expect("village path");
    let authority = DeviceAuthority {
        user_id: inspector.user_id,
        device_id: inspector.device_id,
        actor: inspector.actor.clone(),
        author_paths: vec![path],
        review_paths: vec![],
        index,
    };
    let limits = state.sync_settings.limits;
    state.db.write_blocking(|conn| {
        let refused: Vec<_> =
            gridpatrol_server::sync::store_request(conn, &request, &authority, &limits)?
                .into_iter()
                .filter_map(|r| r.error.map(|e| (r.id, e.code)))
                .collect();
        assert!(refused.is_empty(), "refused: {refused:?}");
        Ok::<_, ApiError>(())
    })
}

/// The floor of the recompute: decoding and applying every stored document's changes, nothing
/// else (no database, no judging).
fn automerge_floor(state: &AppState) -> f64 {
    let docs: Vec<Vec<Vec<u8>>> = state
        .db
        .run_blocking(|conn| {
            let ids: Vec<String> = patrol_verdicts::table
                .select(patrol_verdicts::patrol_id)
                .load(conn)?;
            ids.iter()
                .map(|id| gridpatrol_server::sync::load_changes(conn, id).map(|(c, _)| c))
                .collect::<ApiResult<Vec<_>>>()
        })
        .expect("changes");
    let started = Instant::now();
    for changes in docs {
        let doc = sync_protocol::server::load_stored(changes).expect("load");
        std::hint::black_box(doc.get_heads());
    }
    started.elapsed().as_secs_f64()
}

/// The same, from the documents' stored form: each patrol's snapshot, written by the worker as
/// it first judged the patrol, and the changes logged after it (none here).
fn snapshot_floor(state: &AppState) -> f64 {
    let docs: Vec<(String, StoredDoc)> = state
        .db
        .run_blocking(|conn| {
            let ids: Vec<String> = patrol_verdicts::table
                .select(patrol_verdicts::patrol_id)
                .load(conn)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut docs = Vec::new();
            for batch in ids.chunks(500) {
                docs.extend(stored::load_many(conn, batch)?);
            }
            Ok::<_, ApiError>(docs)
        })
        .expect("stored");
    let started = Instant::now();
    for (_, doc) in docs {
        let doc = doc.load().expect("load");
        std::hint::black_box(doc.get_heads());
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let patrols_per_inspector = if quick { 0 } else { 7 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/gridpatrol.sqlite3", dir.path().display());
    let config = Config::for_database(dir.path().to_path_buf(), url);
    let state: Arc<AppState> = runtime
        .block_on(build_state(&config, &Default::default(), true))
        .expect("state");
    let mut rng = StdRng::seed_from_u64(48);
    let tree = grid_tree(&mut rng);
    state
        .db
        .write_blocking(|conn| {
            import::import(conn, &tree, &Importer::Operator, &import::Limits::default())
        })
        .expect("import");
    runtime.block_on(state.refresh_index()).expect("index");
    let inspectors = state
        .db
        .write_blocking(|conn| Ok::<_, ApiError>(people(conn)))
        .expect("people");
    runtime.block_on(state.refresh_index()).expect("index");

    let started = Instant::now();
    let mut patrols = 0;
    let mut fixes = 0;
    let mut bytes = 0;
    for (n, inspector) in inspectors.iter().enumerate() {
        let count = if quick {
            usize::from(n < 500)
        } else {
            patrols_per_inspector
        };
        let mut docs = BTreeMap::new();
        let mut photos = Vec::new();
        for day in 0..count {
            let at = MONDAY + day as i64 * 86_400_000 + rng.random_range(0..36_000_000);
            let (id, doc, photo) = patrol(inspector, at, &mut rng);
            docs.insert(id, doc);
            // Nine photos in ten have arrived.
            if rng.random_range(0..10) > 0 {
                photos.push(photo);
            }
        }
        patrols += docs.len();
        fixes += docs.len() * FIXES;
        bytes += docs
            .values()
            .flat_map(|d| d.get_changes(&[]))
            .map(|c| c.raw_bytes().len())
            .sum::<usize>();
        if !docs.is_empty() {
            store(&state, inspector, docs).expect("store");
            state
                .db
                .write_blocking(|conn| {
                    photos_arrive(conn, inspector, &photos, &mut rng);
                    Ok::<_, ApiError>(())
                })
                .expect("photos");
        }
    }
    println!(
        "{VILLAGES} villages (each with a key point), {} inspectors, {patrols} patrols, {fixes} \
         fixes, {:.0} MiB of changes; stored in {:.0} s",
        inspectors.len(),
        bytes as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    );

    // Full recompute, as `gridpatrol recompute-compliance` runs it; the first pass judges them
    // all for the first time, then RUNS timed passes.
    let started = Instant::now();
    runtime
        .block_on(judging::judge_stale(&state))
        .expect("first judging");
    let first_judging = started.elapsed().as_secs_f64();
    let mut recompute = Vec::new();
    let mut peak = 0f64;
    for _ in 0..RUNS {
        reset_peak_rss();
        let started = Instant::now();
        let judged = runtime
            .block_on(judging::recompute_all(&state))
            .expect("recompute");
        recompute.push(started.elapsed().as_secs_f64());
        peak = peak.max(peak_rss_mib());
        assert_eq!(judged, patrols);
    }
    let floor = median((0..RUNS).map(|_| automerge_floor(&state)).collect());
    let from_snapshots = median((0..RUNS).map(|_| snapshot_floor(&state)).collect());
    let (snapshot_bytes, snapshots): (Option<i64>, i64) = state
        .db
        .run_blocking(|conn| {
            sync_snapshots::table
                .select((
                    diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>(
                        "sum(length(bytes))",
                    ),
                    diesel::dsl::count_star(),
                ))
                .first(conn)
                .map_err(ApiError::from)
        })
        .expect("snapshot sizes");
    let recompute = median(recompute);
    let counted: i64 = state
        .db
        .run_blocking(|conn| {
            patrol_verdicts::table
                .filter(patrol_verdicts::counted.eq(true))
                .count()
                .get_result(conn)
                .map_err(ApiError::from)
        })
        .expect("counted");

    let failing: BTreeMap<String, usize> = state
        .db
        .run_blocking(|conn| {
            patrol_verdicts::table
                .select(patrol_verdicts::verdict)
                .load::<Option<String>>(conn)
                .map_err(ApiError::from)
        })
        .expect("verdicts")
        .into_iter()
        .flatten()
        .flat_map(|text| {
            let verdict: serde_json::Value = serde_json::from_str(&text).expect("verdict");
            let mut codes = Vec::new();
            for reason in verdict["reasons"].as_array().into_iter().flatten() {
                if reason["passed"] == false {
                    codes.push(format!(
                        "not met: {}",
                        reason["code"].as_str().unwrap_or("?")
                    ));
                }
            }
            for flag in verdict["flags"].as_array().into_iter().flatten() {
                codes.push(format!("flag: {}", flag["signal"]));
            }
            codes
        })
        .fold(BTreeMap::new(), |mut tally, code| {
            *tally.entry(code).or_default() += 1;
            tally
        });

    // Incremental: a patrol synced, then the worker's pass that judges it.
    let samples = if quick { 20 } else { 200 };
    let mut incremental = Vec::new();
    let mut sync_times = Vec::new();
    for k in 0..samples {
        let inspector = &inspectors[(k * 7919) % inspectors.len()];
        let at = MONDAY + 6 * 86_400_000 + k as i64 * 60_000;
        let (id, doc, _) = patrol(inspector, at, &mut rng);
        let started = Instant::now();
        store(&state, inspector, BTreeMap::from([(id, doc)])).expect("store");
        sync_times.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let judged = runtime
            .block_on(judging::judge_stale(&state))
            .expect("judge");
        incremental.push(started.elapsed().as_secs_f64());
        assert_eq!(judged, 1);
    }

    // The weekly record, as GET /v1/compliance/weeks/{week} reads it.
    let (policy, tz) = {
        let index = state.index.current();
        let county = index.get_by_code("522632").expect("county").id;
        let (policy, tz) = judging::policy_of(&state, county);
        (policy.cloned(), tz)
    };
    let record_of = |code: &str| -> f64 {
        let code = code.to_string();
        let times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let code = code.clone();
                let policy = policy.clone();
                state
                    .db
                    .run_blocking(move |conn| {
                        let root = gridpatrol_server::compliance::signoff::grid_row(
                            conn,
                            Some(&code),
                            None,
                        )?;
                        let started = Instant::now();
                        let record = record::week_record(conn, root, WEEK, policy.as_ref(), tz)?;
                        std::hint::black_box(record);
                        Ok::<_, ApiError>(started.elapsed().as_secs_f64())
                    })
                    .expect("record")
            })
            .collect();
        median(times)
    };
    let county_record = record_of("522632");
    let township_record = record_of(&township_code(0));

    println!();
    println!(
        "| step (median of {RUNS}, 2 cores) | seconds | per patrol | vs loading the documents alone |"
    );
    println!("|---|---|---|---|");
    println!(
        "| floor: decode and apply every patrol's changes (Automerge only, one core) | {floor:.2} | {:.0} µs | 1.00× |",
        floor * 1e6 / patrols as f64
    );
    println!(
        "| floor: load every patrol from its snapshot (Automerge only, one core) | {from_snapshots:.2} | {:.0} µs | {:.2}× |",
        from_snapshots * 1e6 / patrols as f64,
        from_snapshots / floor
    );
    println!(
        "| first judging (once: every patrol replayed from its changes, judged, saved as a snapshot) | {first_judging:.2} | {:.0} µs | {:.2}× |",
        first_judging * 1e6 / patrols as f64,
        first_judging / floor
    );
    println!(
        "| full recompute (`recompute_all`: load, judge, write every verdict) | {recompute:.2} | {:.0} µs | {:.2}× |",
        recompute * 1e6 / patrols as f64,
        recompute / floor
    );
    println!();
    println!(
        "{snapshots} snapshots, {:.0} MiB ({:.1} KB a patrol; its changes: {:.1} KB)",
        snapshot_bytes.unwrap_or(0) as f64 / 1_048_576.0,
        snapshot_bytes.unwrap_or(0) as f64 / 1e3 / snapshots.max(1) as f64,
        bytes as f64 / 1e3 / patrols as f64,
    );
    println!(
        "peak RSS during the recompute: {peak:.0} MiB; {counted} of {patrols} patrols counted; \
         {failing:?}"
    );
    println!();
    println!("| per synced patrol (median of {samples}) | ms |");
    println!("|---|---|");
    println!(
        "| store it (the sync's write transaction, no HTTP) | {:.2} |",
        median(sync_times) * 1e3
    );
    println!(
        "| incremental update: the worker's pass that judges it | {:.2} |",
        median(incremental) * 1e3
    );
    println!();
    println!("| weekly record {WEEK} (median of {RUNS}) | ms |");
    println!("|---|---|");
    println!(
        "| whole county: 1,000 villages, 3,000 inspectors | {:.0} |",
        county_record * 1e3
    );
    println!(
        "| one township: 25 villages | {:.1} |",
        township_record * 1e3
    );
}
