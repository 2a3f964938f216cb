//! The client SDK against the real server: an inspector's phone enrolls, records offline, syncs,
//! and hears the supervisor's verdict; a revoked phone keeps its records; a wrong clock is
//! measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::prelude::*;
use gridpatrol_sdk::clock::{Clock, SystemClock};
use gridpatrol_sdk::store::{Batch, MemoryStore, SqliteStore, Store, Write};
use gridpatrol_sdk::{
    Client, Datum, FixInput, Method, NewProblemInput, Options, ProblemDisposition, SdkError,
    SyncState, Trust,
};
use gridpatrol_server::schema::patrols;
use gridpatrol_tests::phone::Phone;
use gridpatrol_tests::tls::{TlsFront, test_ca};
use gridpatrol_tests::{Backend, TestApp, both_backends};
use serde_json::json;
use sync_protocol::client::Event;
use sync_protocol::schema::{self, Review, ReviewState};

const VILLAGE: &str = "522632100001"; // in 古州镇
const INSPECTOR: &str = "inspector-522632100001-1";

/// An enrollment code for `username`, as the township leader hands it out.
async fn code_for(app: &TestApp, username: &str) -> String {
    // A code for a manager comes from above all their grids: the county admin's for a leader.
    let issuer = if username.starts_with("inspector-") {
        "leader-522632100"
    } else {
        "admin-522632"
    };
    let token = app.token(issuer).await;
    app.enrollment_code(&token, app.user_id(username).await)
        .await
}

/// A phone keeping its store in `dir`, enrolled for `username`, on the real clock.
async fn enrolled(app: &TestApp, dir: &tempfile::TempDir, username: &str) -> Client {
    let phone = open(app, dir, Arc::new(SystemClock::default()));
    phone
        .enroll(
            &code_for(app, username).await,
            &format!("{username} 的手机"),
        )
        .await
        .expect("enroll");
    phone
}

fn open(app: &TestApp, dir: &tempfile::TempDir, clock: Arc<dyn Clock>) -> Client {
    let store = SqliteStore::open(&dir.path().join("phone.sqlite3")).expect("store");
    Client::open_with_clock(Arc::new(store), &app.base, clock).expect("open")
}

fn fix(i: i64, now: i64) -> FixInput {
    FixInput {
        at_ms: now + 10_000 * i,
        lon: 108.520 + 0.0002 * i as f64,
        lat: 25.930 + 0.0001 * i as f64,
        datum: Datum::Gcj02,
        accuracy_m: Some(5.0),
        mock: false,
    }
}

async fn an_inspector_records_offline_syncs_and_hears_the_verdict(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let phone = open(&app, &dir, Arc::clone(&clock));
    assert_eq!(
        phone.start_patrol(VILLAGE, Method::Routine),
        Err(SdkError::NotEnrolled)
    );
    phone
        .enroll(&code_for(&app, INSPECTOR).await, "红米 Note 12")
        .await
        .expect("enroll");
    assert!(phone.my_grids().iter().any(|g| g.code == VILLAGE));
    assert_eq!(
        phone
            .start_patrol("522632101001", Method::Routine)
            .expect_err("another township's village")
            .code(),
        "invalid"
    );

    // Offline: the whole patrol is recorded without the server.
    let now = clock.now_ms();
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    for i in 0..30 {
        phone.add_fix(&id, fix(i, now)).expect("fix");
    }
    phone
        .add_note(&id, "巡查河道两岸，未发现异常")
        .expect("note");
    let photo = dir.path().join("IMG_0001.jpg");
    std::fs::write(&photo, crate::photos::jpeg(1, 320, 240)).expect("photo");
    let sha = phone.attach_photo(&id, &photo, "河岸垃圾").expect("photo");
    assert_eq!(sha.len(), 64);
    assert_eq!(
        phone.queued_photos().expect("queue"),
        vec![(sha, photo.to_string_lossy().into_owned())]
    );
    let problem = phone
        .record_problem(
            &id,
            NewProblemInput {
                category: "固体废物".into(),
                description: "河岸堆放建筑垃圾".into(),
                lon: 108.521,
                lat: 25.931,
                datum: Datum::Gcj02,
                disposition: ProblemDisposition::Escalated,
            },
        )
        .expect("problem");
    phone.submit(&id).expect("submit");
    assert_eq!(
        phone
            .add_note(&id, "too late")
            .expect_err("submitted")
            .code(),
        "invalid"
    );
    let listed = phone.patrol(&id).expect("listed");
    assert_eq!(
        (
            listed.fix_count,
            listed.note_count,
            listed.photo_count,
            listed.problem_count
        ),
        (30, 1, 1, 1)
    );
    assert!(listed.submitted);
    assert_eq!(listed.sync, SyncState::LocalOnly);

    // Back in signal: one sync, one round trip, both documents durable.
    let report = phone.sync().await.expect("sync");
    assert_eq!(report.round_trips, 1);
    assert_eq!((report.pushed, report.durable), (2, 2), "{report:?}");
    assert_eq!(report.photos_uploaded, 1, "the photo follows its patrol");
    assert!(phone.queued_photos().expect("queue").is_empty());
    assert_eq!(phone.patrol(&id).expect("listed").sync, SyncState::Durable);
    let problems: i64 = app
        .with_conn(|conn| {
            gridpatrol_server::schema::problems::table
                .count()
                .get_result(conn)
        })
        .await;
    assert_eq!(problems, 1, "problem {problem} stored");

    // The township leader's tablet receives the patrol and returns it with a comment.
    let admin = app.token("admin-522632").await;
    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await;
    let synced = tablet.sync(&app).await;
    assert!(synced.events.contains(&Event::Received { id: id.clone() }));
    let review = Review {
        state: ReviewState::Returned,
        comment: "轨迹不完整，请补充巡查".into(),
        reviewer: tablet.user_id,
        at_ms: now + 3_600_000,
    };
    tablet.edit(&id, |doc| schema::set_review(doc, &review).expect("review"));
    tablet.sync(&app).await;

    // The verdict reaches the phone through the same sync, and observers hear of it.
    let heard = Arc::new(AtomicUsize::new(0));
    let observer = {
        let heard = Arc::clone(&heard);
        let id = id.clone();
        phone.observe(move |changed| {
            if changed == id {
                heard.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let report = phone.sync().await.expect("sync");
    assert_eq!(report.received, 1, "{report:?}");
    assert_eq!(
        phone.patrol(&id).expect("listed").sync,
        SyncState::Returned {
            comment: "轨迹不完整，请补充巡查".into()
        }
    );
    assert_eq!(heard.load(Ordering::SeqCst), 1);
    drop(observer);
    phone.sync().await.expect("sync");

    // Everything survives reopening the store; nothing is pending any more.
    drop(phone);
    let phone = open(&app, &dir, clock);
    let again = phone.patrol(&id).expect("listed");
    assert_eq!(again.fix_count, 30);
    assert!(matches!(again.sync, SyncState::Returned { .. }));
    assert_eq!(phone.sync().await.expect("sync").pushed, 0);
    let row: (i32, i32, Option<String>) = app
        .with_conn(move |conn| {
            patrols::table
                .find(id)
                .select((
                    patrols::fix_count,
                    patrols::photo_count,
                    patrols::review_state,
                ))
                .first(conn)
        })
        .await;
    assert_eq!(row, (30, 1, Some("returned".into())));
}

async fn a_refused_access_token_is_refreshed_on_the_way(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("phone.sqlite3");
    let phone = enrolled(&app, &dir, INSPECTOR).await;
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    drop(phone);
    let session = spoil_access_token(&path);

    let phone = open(&app, &dir, Arc::new(SystemClock::default()));
    let report = phone.sync().await.expect("refreshed, then synced");
    assert_eq!(report.durable, 1);
    assert_eq!(phone.patrol(&id).expect("listed").sync, SyncState::Durable);
    // The new pair was stored: the next run of the app syncs without refreshing again.
    drop(phone);
    let stored: serde_json::Value = serde_json::from_slice(
        &SqliteStore::open(&path)
            .expect("store")
            .snapshot()
            .expect("snapshot")
            .meta["session"],
    )
    .expect("session");
    assert_ne!(stored["access_token"], session["access_token"]);
    assert_ne!(stored["refresh_token"], session["refresh_token"]);
}

async fn several_phones_record_offline_and_sync_in_turns(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let mut phones = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        let inspector = format!("inspector-{VILLAGE}-{}", n + 1);
        phones.push(enrolled(&app, dir, &inspector).await);
    }
    // All three record two patrols each with no network, then sync one after the other, twice.
    let mut ids = Vec::new();
    for round in 0..2 {
        for (n, phone) in phones.iter().enumerate() {
            let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
            for i in 0..5 {
                phone
                    .add_fix(&id, fix(i, 1_795_000_000_000 + n as i64 * 1_000 + round))
                    .expect("fix");
            }
            phone.submit(&id).expect("submit");
            ids.push(id);
        }
        for phone in &phones {
            let report = phone.sync().await.expect("sync");
            assert_eq!((report.pushed, report.durable), (1, 1), "{report:?}");
            assert_eq!(report.received, 0, "a phone hears only of its own patrols");
        }
    }
    for phone in &phones {
        let mine = phone.patrols();
        assert_eq!(mine.len(), 2);
        assert!(mine.iter().all(|p| p.sync == SyncState::Durable));
    }
    // The township leader's tablet sees all six.
    let tablet = Client::open(
        Arc::new(gridpatrol_sdk::store::MemoryStore::new()),
        &app.base,
    )
    .expect("open");
    tablet
        .enroll(&code_for(&app, "leader-522632100").await, "镇长的平板")
        .await
        .expect("enroll");
    let report = tablet.sync().await.expect("sync");
    assert_eq!(report.received, 6);
    let seen: std::collections::BTreeSet<String> =
        tablet.patrols().into_iter().map(|p| p.id).collect();
    assert_eq!(seen, ids.into_iter().collect());
}

async fn a_revoked_phone_keeps_its_records(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = enrolled(&app, &dir, INSPECTOR).await;
    let id = phone
        .start_patrol(VILLAGE, Method::Unannounced)
        .expect("start");
    phone.add_fix(&id, fix(0, 1_795_000_000_000)).expect("fix");

    let leader = app.token("leader-522632100").await;
    let device = phone.device_id().expect("device");
    let revoked = app
        .post(
            &format!("/v1/devices/{device}/revoke"),
            Some(&leader),
            &json!({"reason": "手机丢失"}),
        )
        .await;
    assert!(revoked.status < 300, "{}", revoked.text);

    assert_eq!(
        phone.sync().await.expect_err("revoked"),
        SdkError::DeviceRevoked
    );
    let kept = phone.patrol(&id).expect("still there");
    assert_eq!(kept.fix_count, 1);
    assert_ne!(kept.sync, SyncState::Durable);
    // Recording goes on offline; nothing is lost.
    phone.add_fix(&id, fix(1, 1_795_000_000_000)).expect("fix");
    assert_eq!(phone.patrol(&id).expect("listed").fix_count, 2);
}

async fn a_refused_patrol_stays_marked_and_is_not_resent(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = enrolled(&app, &dir, INSPECTOR).await;
    // Recorded offline in a village the inspector was then moved away from.
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    phone.add_fix(&id, fix(0, 1_795_000_000_000)).expect("fix");
    let leader = app.token("leader-522632100").await;
    let user = app.user_id(INSPECTOR).await;
    let view = app.get(&format!("/v1/users/{user}"), Some(&leader)).await;
    let role = view.body["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["grid_code"] == VILLAGE && r["role"] == "inspector")
        .and_then(|r| r["role_id"].as_i64())
        .expect("the inspector's role");
    let removed = app
        .delete(&format!("/v1/users/{user}/roles/{role}"), Some(&leader))
        .await;
    assert!(removed.status < 300, "{}", removed.text);

    let report = phone.sync().await.expect("sync");
    assert_eq!((report.pushed, report.rejected), (1, 1), "{report:?}");
    match phone.patrol(&id).expect("kept").sync {
        SyncState::Rejected { code, message } => {
            assert_eq!(code, "not_inspector_of_grid", "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Never retried as it is: the next sync pushes nothing, and the patrol stays on the phone.
    assert_eq!(phone.sync().await.expect("sync").pushed, 0);
    assert_eq!(phone.patrol(&id).expect("kept").fix_count, 1);
    let stored: i64 = app
        .with_conn(|conn| patrols::table.count().get_result(conn))
        .await;
    assert_eq!(stored, 0);
}

/// Replaces the stored access token by one the server refuses (as when it expired while the
/// phone was off), so that the next sync has to refresh. Returns the stored session.
fn spoil_access_token(path: &std::path::Path) -> serde_json::Value {
    let store = SqliteStore::open(path).expect("store");
    let mut session: serde_json::Value =
        serde_json::from_slice(&store.snapshot().expect("snapshot").meta["session"])
            .expect("session");
    session["access_token"] = json!("eyJhbGciOiJIUzI1NiJ9.e30.expired");
    store
        .write(&Batch(vec![Write::Meta {
            key: "session".into(),
            value: serde_json::to_vec(&session).expect("json"),
        }]))
        .expect("write");
    session
}

async fn a_reused_refresh_token_signs_the_phone_out_and_keeps_its_records(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("phone.sqlite3");
    let phone = enrolled(&app, &dir, INSPECTOR).await;
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    drop(phone);
    let session = spoil_access_token(&path);
    // Someone else spent the phone's refresh token (a copied phone), minutes ago.
    let stolen = app
        .post(
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    stolen.assert_ok();
    app.with_conn(|conn| {
        use gridpatrol_server::schema::refresh_tokens;
        diesel::update(refresh_tokens::table.filter(refresh_tokens::used_at.is_not_null()))
            .set(
                refresh_tokens::used_at
                    .eq(chrono::Utc::now().naive_utc() - chrono::Duration::minutes(5)),
            )
            .execute(conn)
    })
    .await;

    let phone = open(&app, &dir, Arc::new(SystemClock::default()));
    match phone.sync().await {
        Err(SdkError::SignedOut { code, .. }) => assert_eq!(code, "refresh_token_reused"),
        other => panic!("{other:?}"),
    }
    let kept = phone.patrol(&id).expect("still on the phone");
    assert_eq!(kept.sync, SyncState::Sent);
}

/// A point inside a grid's GeoJSON polygon (the outer ring of the largest part).
pub(crate) fn inside(geometry: &serde_json::Value) -> (f64, f64) {
    use geo::{Area, InteriorPoint};
    let rings: Vec<&serde_json::Value> = match geometry["type"].as_str() {
        Some("Polygon") => vec![&geometry["coordinates"][0]],
        _ => geometry["coordinates"]
            .as_array()
            .expect("parts")
            .iter()
            .map(|part| &part[0])
            .collect(),
    };
    let polygons = rings.into_iter().map(|ring| {
        let coords: Vec<(f64, f64)> = ring
            .as_array()
            .expect("ring")
            .iter()
            .map(|c| (c[0].as_f64().expect("lon"), c[1].as_f64().expect("lat")))
            .collect();
        geo::Polygon::new(geo::LineString::from(coords), vec![])
    });
    let largest = polygons
        .max_by(|a, b| a.unsigned_area().total_cmp(&b.unsigned_area()))
        .expect("a polygon");
    let point = largest.interior_point().expect("interior");
    (point.x(), point.y())
}

/// Imports a key point (村口砂石场, radius 30 m) inside the demo village, as the county admin;
/// returns where it is.
pub(crate) async fn import_quarry(app: &TestApp) -> (f64, f64) {
    let admin = app.token("admin-522632").await;
    let village = app.grid_id(VILLAGE).await;
    let detail = app.get(&format!("/v1/grids/{village}"), Some(&admin)).await;
    let (lon, lat) = inside(&detail.body["geometry"]);
    let quarry = json!({"type": "FeatureCollection", "features": [{"type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"code": "522632100001-P01", "name": "村口砂石场", "level": "key_point",
                       "parent_code": VILLAGE, "kind": "key_point", "radius_m": 30}}]});
    let imported = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            "application/geo+json",
            serde_json::to_vec(&quarry).expect("json"),
        )
        .await;
    assert_eq!(imported.assert_ok()["created"], 1, "{}", imported.text);
    app.refresh_index().await;
    (lon, lat)
}

async fn key_points_in_my_village_are_kept_for_offline_use(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let (lon, lat) = import_quarry(&app).await;

    let dir = tempfile::tempdir().expect("tmp");
    let phone = enrolled(&app, &dir, INSPECTOR).await;
    drop(phone);
    // Reopened with no server at all: the key point is still there.
    let store = SqliteStore::open(&dir.path().join("phone.sqlite3")).expect("store");
    let offline = Client::open(Arc::new(store), "http://127.0.0.1:9").expect("open");
    let points = offline.my_key_points();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].name, "村口砂石场");
    assert!((points[0].lon - lon).abs() < 1e-6 && (points[0].lat - lat).abs() < 1e-6);
}

/// A phone whose clock is two hours slow.
struct Slow(SystemClock);

impl Clock for Slow {
    fn now_ms(&self) -> i64 {
        self.0.now_ms() - 2 * 3_600_000
    }
    fn monotonic_ms(&self) -> i64 {
        self.0.monotonic_ms()
    }
}

async fn a_clock_two_hours_slow_is_measured(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = open(&app, &dir, Arc::new(Slow(SystemClock::default())));
    assert_eq!(phone.clock_skew_ms(), None);
    phone
        .enroll(&code_for(&app, INSPECTOR).await, "时间不准的手机")
        .await
        .expect("enroll");
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    phone.sync().await.expect("sync");
    let skew = phone.clock_skew_ms().expect("measured");
    assert!(
        (skew - 7_200_000).abs() < 5_000,
        "measured {skew} ms, expected about 2 h"
    );
    // The patrol keeps the device's own (wrong) time; the server keeps its receive time.
    let started = phone.patrol(&id).expect("listed").started_at_ms;
    assert!(SystemClock::default().now_ms() - started > 7_000_000);
}

/// A phone opened in memory for `url`, trusting `trust`.
fn trusting(url: &str, trust: Trust) -> Client {
    Client::open_with(
        Arc::new(MemoryStore::new()),
        url,
        Options {
            trust,
            ..Options::default()
        },
    )
    .expect("open")
}

/// HTTPS does not depend on the database, so this runs on SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_syncs_over_https_to_a_server_with_the_deployments_own_ca() {
    let app = TestApp::with_demo(Backend::Sqlite).await;
    let front = TlsFront::start(&app.base).await;
    let code = code_for(&app, INSPECTOR).await;

    // Refused certificates: a clear, non-transient `tls` error, and nothing spent on the server.
    let (stranger_ca, _) = test_ca("someone else's CA");
    for (url, trust, why) in [
        (&front.base, Trust::PublicRoots, "not a public CA"),
        (&front.base, Trust::OnlyPem(stranger_ca), "another CA"),
        (
            &front.base_by_ip,
            Trust::OnlyPem(front.ca_pem.clone()),
            "the certificate names localhost, not 127.0.0.1",
        ),
    ] {
        let error = trusting(url, trust)
            .enroll(&code, "红米 Note 12")
            .await
            .expect_err(why);
        assert_eq!(error.code(), "tls", "{why}: {error}");
        assert!(!error.is_transient(), "{why}: retrying will not help");
    }

    // The deployment's CA: the very same code still enrolls, and a patrol syncs over HTTPS.
    let phone = trusting(&front.base, Trust::OnlyPem(front.ca_pem.clone()));
    phone.enroll(&code, "红米 Note 12").await.expect("enroll");
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    let now = SystemClock::default().now_ms();
    for i in 0..5 {
        phone.add_fix(&id, fix(i, now)).expect("fix");
    }
    phone.submit(&id).expect("submit");
    let report = phone.sync().await.expect("sync over https");
    assert_eq!(report.durable, 1);
    assert_eq!(phone.patrol(&id).expect("listed").sync, SyncState::Durable);
    let stored: i64 = app
        .with_conn(|conn| patrols::table.count().get_result(conn))
        .await;
    assert_eq!(stored, 1);
}

#[test]
fn a_server_address_that_is_not_http_is_refused_when_opening() {
    for url in [
        "",
        "gridpatrol.example.cn",
        "ftp://gridpatrol.example.cn",
        "https://",
    ] {
        let error = Client::open(Arc::new(MemoryStore::new()), url)
            .err()
            .unwrap_or_else(|| panic!("{url:?} opened"));
        assert_eq!(error.code(), "invalid", "{url:?}");
    }
}

/// Issue 21: 200 phones syncing at once took the server to 1.2 GB and 139 threads. Syncs now
/// take turns (admission control); a phone turned away gets `503 server_busy` with `Retry-After`,
/// nothing stored, and the SDK waits at least that long before it syncs again.
async fn a_busy_server_turns_phones_away_and_they_come_back(backend: Backend) {
    let app = TestApp::with_demo_serving(
        backend,
        gridpatrol_server::ServeConfig {
            max_concurrent_syncs: Some(1),
            sync_queue_ms: 0,
            ..gridpatrol_tests::serve_config()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = enrolled(&app, &dir, "inspector-522632100001-1").await;
    let patrol = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    let now = SystemClock::default().now_ms();
    for i in 0..3 {
        phone.add_fix(&patrol, fix(i, now)).expect("fix");
    }
    phone.submit(&patrol).expect("submit");
    // Every turn taken (as by other phones' syncs).
    let held = app
        .state
        .sync_settings
        .admission
        .acquire()
        .await
        .expect("turn");
    let before = app.table_counts().await;
    let refused = phone.sync().await.expect_err("busy");
    match &refused {
        gridpatrol_sdk::SdkError::Server {
            status,
            code,
            retry_after_secs,
            ..
        } => {
            assert_eq!((*status, code.as_str()), (503, "server_busy"));
            assert_eq!(*retry_after_secs, Some(3));
        }
        other => panic!("{other:?}"),
    }
    assert!(refused.is_transient());
    assert_eq!(app.table_counts().await, before);
    assert!(matches!(
        phone.patrols()[0].sync,
        SyncState::LocalOnly | SyncState::Sent
    ));
    // The turn frees a second later; the phone, retrying, waits out Retry-After first.
    let started = std::time::Instant::now();
    let release = async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        drop(held);
    };
    let retried = phone.sync_with_retry(
        5,
        gridpatrol_sdk::Backoff {
            base: std::time::Duration::from_millis(100),
            cap: std::time::Duration::from_millis(200),
        },
    );
    let ((), report) = tokio::join!(release, retried);
    let report = report.expect("synced after the wait");
    assert_eq!(report.durable, 1);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the phone honoured Retry-After ({:?})",
        started.elapsed()
    );
    let metrics = app
        .get("/metrics", Some(gridpatrol_tests::METRICS_TOKEN))
        .await
        .text;
    assert!(
        metrics.contains("gridpatrol_syncs_turned_away_total 2"),
        "{metrics}"
    );
}

both_backends!(
    a_busy_server_turns_phones_away_and_they_come_back,
    an_inspector_records_offline_syncs_and_hears_the_verdict,
    several_phones_record_offline_and_sync_in_turns,
    a_revoked_phone_keeps_its_records,
    a_refused_patrol_stays_marked_and_is_not_resent,
    a_refused_access_token_is_refreshed_on_the_way,
    a_reused_refresh_token_signs_the_phone_out_and_keeps_its_records,
    key_points_in_my_village_are_kept_for_offline_use,
    a_clock_two_hours_slow_is_measured,
);
