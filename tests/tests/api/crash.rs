//! Crash points (issue 21): the real server binary, built with the `fault-injection` feature,
//! aborts itself at a named point while a real SDK phone uploads a photo; a new process on the
//! same data directory starts, and the phone syncs again. At no moment may the phone hold as
//! uploaded a photo the server does not have, and in the end the server has it exactly once,
//! byte for byte.

use std::sync::Arc;
use std::time::Duration;

use gridpatrol_sdk::store::SqliteStore;
use gridpatrol_sdk::{Client, Datum, FixInput, Method, Options, PhotoOptions};
use gridpatrol_tests::process::{ServerProcess, demo_admin_token, free_port, test_server_binary};
use gridpatrol_tests::{http_client, noise_jpeg, sha256_hex};

const VILLAGE: &str = "522632100001";
const INSPECTOR: &str = "inspector-522632100001-1";

/// An enrollment code for the demo inspector, from the county admin over HTTP.
async fn enrollment_code(base: &str) -> String {
    try_enrollment_code(base)
        .await
        .expect("an enrollment code from the county admin")
}

/// [`enrollment_code`] that says `None` when the server fails or dies on the way.
async fn try_enrollment_code(base: &str) -> Option<String> {
    let client = http_client();
    let login: serde_json::Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin-522632", "password": gridpatrol_tests::PASSWORD}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let admin = login["access_token"].as_str()?.to_string();
    let users: serde_json::Value = client
        .get(format!("{base}/v1/users?role=inspector"))
        .bearer_auth(&admin)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let id = users
        .as_array()?
        .iter()
        .find(|u| u["username"] == INSPECTOR)?["id"]
        .as_i64()?;
    let code: serde_json::Value = client
        .post(format!("{base}/v1/users/{id}/enrollment-codes"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    code["code"].as_str().map(str::to_string)
}

/// What the server holds of a photo: its bytes' SHA-256 as the county admin downloads them.
async fn server_copy(base: &str, sha: &str) -> Option<String> {
    let admin = demo_admin_token(base).await;
    let got = http_client()
        .get(format!("{base}/v1/photos/{sha}"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get");
    if got.status().as_u16() != 200 {
        return None;
    }
    Some(sha256_hex(&got.bytes().await.expect("bytes")))
}

/// A phone that recorded a submitted patrol with one photo (still queued).
fn recorded_phone(dir: &tempfile::TempDir, base: &str) -> (Client, Vec<u8>) {
    let store = SqliteStore::open(&dir.path().join("phone.sqlite3")).expect("store");
    let phone = Client::open_with(
        Arc::new(store),
        base,
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
    (phone, noise_jpeg(7, 640, 480))
}

fn walk_and_attach(dir: &tempfile::TempDir, phone: &Client, bytes: &[u8]) -> (String, String) {
    let patrol = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    let start = 1_795_000_000_000;
    for i in 0..3 {
        phone
            .add_fix(
                &patrol,
                FixInput {
                    at_ms: start + 10_000 * i,
                    lon: 108.52 + 0.0002 * i as f64,
                    lat: 25.93,
                    datum: Datum::Wgs84,
                    accuracy_m: Some(5.0),
                    mock: false,
                },
            )
            .expect("fix");
    }
    let camera = dir.path().join("IMG_0001.jpg");
    std::fs::write(&camera, bytes).expect("camera");
    let sha = phone
        .attach_photo(&patrol, &camera, "排污口")
        .expect("attach");
    phone.submit(&patrol).expect("submit");
    (patrol, sha)
}

/// What [`sync_into_crash`] leaves: the server's data and port, and the phone.
struct Crashed {
    data: tempfile::TempDir,
    port: u16,
    phone_dir: tempfile::TempDir,
    phone: Client,
    patrol: String,
    sha: String,
    outcome: Result<gridpatrol_sdk::SyncReport, gridpatrol_sdk::SdkError>,
}

/// Starts the server with the crash point `point` armed; a phone enrolls, records a patrol with
/// a photo and syncs it (what that sync answered is kept); the server must have died at the
/// point, abnormally, within 30 s.
async fn sync_into_crash(bin: &std::path::Path, point: &str) -> Crashed {
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut server =
        ServerProcess::start(bin, data.path(), port, &[("GRIDPATROL_FAULT", point)]).await;
    let base = server.base.clone();
    let phone_dir = tempfile::tempdir().expect("tmp");
    let (phone, bytes) = recorded_phone(&phone_dir, &base);
    phone
        .enroll(&enrollment_code(&base).await, "红米 Note 12")
        .await
        .expect("enroll");
    let (patrol, sha) = walk_and_attach(&phone_dir, &phone, &bytes);
    let outcome = phone.sync().await;
    let status = server
        .exited(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("{point}: the server did not stop at its crash point"));
    assert!(!status.success(), "{point}: {status}");
    Crashed {
        data,
        port,
        phone_dir,
        phone,
        patrol,
        sha,
        outcome,
    }
}

fn phone_says_uploaded(phone: &Client) -> bool {
    phone.photos().expect("photos")[0].state == "uploaded"
}

/// Each photo crash point in turn: the server dies there in the middle of the phone's upload.
#[tokio::test]
async fn a_photo_survives_a_crash_at_every_point_of_its_upload() {
    let bin = test_server_binary();
    let points: Vec<&str> = gridpatrol_server::faults::POINTS
        .iter()
        .copied()
        // The points on the way to storing the photo (derived images come after: the harness
        // below covers them).
        .filter(|p| p.starts_with("photo.") && !p.starts_with("photo.derive."))
        .collect();
    assert!(points.len() >= 7, "{points:?}");
    for point in points {
        let Crashed {
            data,
            port,
            phone_dir: _phone_dir,
            phone,
            patrol: _,
            sha,
            outcome,
        } = sync_into_crash(&bin, point).await;
        assert!(
            outcome.is_err() || !phone_says_uploaded(&phone),
            "{point}: the phone believes the photo uploaded from a server that died: {outcome:?}"
        );
        assert!(!phone_says_uploaded(&phone), "{point}");
        let own_copy = std::path::PathBuf::from(&phone.photos().expect("photos")[0].path);
        assert!(own_copy.exists(), "{point}: the phone kept its copy");

        // A new process on the same data: what the crash left is completed or resumed.
        let server = ServerProcess::start(&bin, data.path(), port, &[]).await;
        let mut report = None;
        for _ in 0..5 {
            if let Ok(r) = phone.sync().await
                && phone_says_uploaded(&phone)
            {
                report = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(report.is_some(), "{point}: the photo never uploaded");
        assert_eq!(
            server_copy(&server.base, &sha).await.as_deref(),
            Some(sha.as_str()),
            "{point}: the server holds the photo, byte for byte"
        );
        assert!(
            !own_copy.exists(),
            "{point}: deleted only after the receipt"
        );
        // Exactly once: one photo row, one finished upload, no pieces left behind.
        let db = data.path().join("gridpatrol.sqlite3");
        let counts = sqlite_counts(&db, &sha);
        assert_eq!(
            counts,
            (1, 1, 0),
            "{point}: photos, finished uploads, pieces"
        );
        let stored_originals = std::fs::read_dir(data.path().join("photos/originals"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(stored_originals, 1, "{point}");
        drop(server);
    }
}

/// (photos rows, finished upload rows, piece rows) for a photo, read from the SQLite file.
fn sqlite_counts(path: &std::path::Path, sha: &str) -> (i64, i64, i64) {
    use diesel::prelude::*;
    use gridpatrol_server::schema::{photo_upload_chunks, photo_uploads, photos};
    let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let held: i64 = photos::table
        .filter(photos::sha256.eq(sha))
        .count()
        .get_result(&mut conn)
        .expect("photos");
    let finished: i64 = photo_uploads::table
        .filter(photo_uploads::sha256.eq(sha))
        .filter(photo_uploads::completed_at.is_not_null())
        .count()
        .get_result(&mut conn)
        .expect("uploads");
    let pieces: i64 = photo_upload_chunks::table
        .count()
        .get_result(&mut conn)
        .expect("pieces");
    (held, finished, pieces)
}

/// Fills a disk through `path` until it refuses (ENOSPC); returns the filler's path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0x5au8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

/// Issue 21: on a full disk every failing request was `500 internal_error`, `/healthz` kept
/// answering ok, and a photo could be lost. Now: `507 insufficient_storage`, nothing
/// acknowledged that was not stored, `/readyz` not ready while `/healthz` stays live, and once
/// space is back the same process takes the photo, with no restart.
#[tokio::test]
async fn a_full_disk_answers_507_and_recovers_without_a_restart() {
    let bin = test_server_binary();
    let base_dir = tempfile::tempdir().expect("tmp");
    let data = base_dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mount point");
    let port = free_port();
    let server = ServerProcess::start_on_small_disk(
        &bin,
        &data,
        48,
        port,
        &[("GRIDPATROL_MIN_FREE_MB", "2")],
    )
    .await;
    let base = server.base.clone();
    let client = http_client();
    let ready = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };
    assert_eq!(ready(client.clone(), base.clone()).await, 200);

    let phone_dir = tempfile::tempdir().expect("tmp");
    let (phone, bytes) = recorded_phone(&phone_dir, &base);
    phone
        .enroll(&enrollment_code(&base).await, "红米 Note 12")
        .await
        .expect("enroll");
    let (_patrol, sha) = walk_and_attach(&phone_dir, &phone, &bytes);
    // A second device for probing the upload endpoints by hand.
    let probe: serde_json::Value = client
        .post(format!("{base}/v1/devices/enroll"))
        .json(
            &serde_json::json!({"code": enrollment_code(&base).await.as_str(),
            "device_name": "probe", "actor_id": "0123456789abcdef0123456789abcdef"}),
        )
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    let token = probe["access_token"].as_str().expect("token").to_string();

    let filler = fill(&server.disk(&data));
    assert_eq!(
        ready(client.clone(), base.clone()).await,
        503,
        "not ready on a full disk"
    );
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        health.status().as_u16(),
        200,
        "but alive: no reason to restart it"
    );

    // The phone syncs: whatever fails says why, and the photo is not taken for uploaded.
    let outcome = phone.sync().await;
    assert!(!phone_says_uploaded(&phone), "{outcome:?}");
    if let Err(error) = &outcome {
        let text = format!("{error:?}");
        assert!(
            text.contains("507") || text.contains("insufficient_storage"),
            "{text}"
        );
        assert!(!text.contains("internal_error"), "{text}");
    }
    // A sign-in writes a session: refused with 507 too, not 500.
    let login = client
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin-522632", "password": gridpatrol_tests::PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status().as_u16(), 507);
    // Straight through HTTP: a new upload's piece is refused with 507, its code and a message.
    {
        let other = noise_jpeg(8, 640, 480);
        use base64::Engine;
        let meta = format!(
            "sha256 {}",
            base64::engine::general_purpose::STANDARD.encode(sha256_hex(&other))
        );
        let created = client
            .post(format!("{base}/v1/photos/uploads"))
            .bearer_auth(&token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", other.len().to_string())
            .header("upload-metadata", meta)
            .send()
            .await
            .expect("create");
        let status = created.status().as_u16();
        if status == 201 {
            let location = created.headers()["location"]
                .to_str()
                .expect("location")
                .to_string();
            let patched = client
                .patch(format!("{base}{location}"))
                .bearer_auth(&token)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", "0")
                .header("content-type", "application/offset+octet-stream")
                .body(other.clone())
                .send()
                .await
                .expect("patch");
            assert_eq!(patched.status().as_u16(), 507);
            assert!(patched.headers().get("photo-stored").is_none());
            let body: serde_json::Value = patched.json().await.expect("json");
            assert_eq!(body["error"], "insufficient_storage");
        } else {
            assert_eq!(status, 507, "creating the upload on a full disk");
        }
    }

    // Space comes back: ready again, and the same process takes the photo.
    std::fs::remove_file(&filler).expect("free the disk");
    assert_eq!(ready(client.clone(), base.clone()).await, 200);
    let mut uploaded = false;
    for _ in 0..5 {
        if phone.sync().await.is_ok() && phone_says_uploaded(&phone) {
            uploaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(uploaded, "the photo uploads once space is back");
    assert_eq!(
        server_copy(&base, &sha).await.as_deref(),
        Some(sha.as_str())
    );
}

/// Issue 21: patrols claimed for judging by a process that was killed stayed "判定计算中" for the
/// claim's ten minutes. Claims are leases now: the restarted process judges them within the
/// lease (20 s) and a wake of its worker.
#[tokio::test]
async fn a_patrol_claimed_by_a_killed_process_is_judged_soon_after() {
    let bin = test_server_binary();
    for point in [
        "compliance.judge.after_claim",
        "compliance.judge.before_write",
    ] {
        let Crashed {
            data,
            port,
            phone_dir: _phone_dir,
            phone,
            patrol,
            ..
        } = sync_into_crash(&bin, point).await;
        let server = ServerProcess::start(&bin, data.path(), port, &[]).await;
        let _ = phone.sync().await; // the photo, if the crash came before it
        let admin = demo_admin_token(&server.base).await;
        let started = std::time::Instant::now();
        let mut judged = None;
        while started.elapsed() < Duration::from_secs(90) {
            let reply = http_client()
                .get(format!("{}/v1/patrols/{patrol}/verdict", server.base))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("verdict");
            if reply.status().as_u16() == 200 {
                judged = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let judged = judged.unwrap_or_else(|| panic!("{point}: never judged"));
        eprintln!("{point}: judged {judged:?} after the restart");
    }
}

/// Restarts the server without faults if it has died; returns whether it had.
async fn revive(
    server: &mut ServerProcess,
    bin: &std::path::Path,
    data: &std::path::Path,
    port: u16,
) -> bool {
    match server.child.try_wait() {
        Ok(Some(_)) => {
            *server = ServerProcess::start(bin, data, port, &[]).await;
            true
        }
        _ => false,
    }
}

/// The week (ISO, China time) of the fixed times `walk_and_attach` records at.
fn patrol_week() -> String {
    chrono::DateTime::from_timestamp_millis(1_795_000_000_000)
        .expect("time")
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("zone"))
        .format("%G-W%V")
        .to_string()
}

/// Issue 21: at least 30 named crash points in sign-in, sync, projection, upload, completion,
/// derived images, judging, snapshots and sign-off, and a run through each. The server aborts at
/// the point (as SIGKILL would) while an inspector's day goes on: enrolling, a patrol synced fix
/// by fix (a long enough log for its snapshot to be owed), a photo, the verdict, the township's
/// sign-off. The server is restarted without the fault and the day carries on. Afterwards the
/// patrol, its photo (byte for byte) and the sign-off are on the server exactly once, and the
/// verdict is computed. `GRIDPATROL_FAULT_ONLY=<point>` runs one point.
#[tokio::test]
async fn every_crash_point_loses_nothing_and_duplicates_nothing() {
    let bin = test_server_binary();
    let only = std::env::var("GRIDPATROL_FAULT_ONLY").ok();
    let points: Vec<&str> = gridpatrol_server::faults::POINTS
        .iter()
        .copied()
        .filter(|p| only.as_deref().is_none_or(|o| o == *p))
        .collect();
    assert!(
        only.is_some() || points.len() >= 30,
        "{} points",
        points.len()
    );
    let mut unreached = Vec::new();
    for point in points {
        let data_dir = tempfile::tempdir().expect("tmp");
        let data = data_dir.path().to_path_buf();
        let port = free_port();
        let mut server =
            ServerProcess::start(&bin, &data, port, &[("GRIDPATROL_FAULT", point)]).await;
        let base = server.base.clone();
        let mut crashed = false;
        let phone_dir = tempfile::tempdir().expect("tmp");
        let (phone, bytes) = recorded_phone(&phone_dir, &base);

        // Enrolling (the admin's sign-in, the code, the enrollment).
        let mut enrolled = false;
        for _ in 0..4 {
            let code = tokio::time::timeout(Duration::from_secs(20), try_enrollment_code(&base))
                .await
                .ok()
                .flatten();
            if let Some(code) = code
                && phone.enroll(&code, "红米 Note 12").await.is_ok()
            {
                enrolled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            crashed |= revive(&mut server, &bin, &data, port).await;
        }
        assert!(enrolled, "{point}: could not enroll");

        // A patrol synced fix by fix, then a photo, submitted.
        let patrol = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
        let start = 1_795_000_000_000;
        for i in 0..12 {
            phone
                .add_fix(
                    &patrol,
                    FixInput {
                        at_ms: start + 150_000 * i,
                        lon: 108.52 + 0.0004 * i as f64,
                        lat: 25.93,
                        datum: Datum::Wgs84,
                        accuracy_m: Some(5.0),
                        mock: false,
                    },
                )
                .expect("fix");
            let _ = phone.sync().await;
            crashed |= revive(&mut server, &bin, &data, port).await;
        }
        let camera = phone_dir.path().join("IMG_0001.jpg");
        std::fs::write(&camera, &bytes).expect("camera");
        let sha = phone
            .attach_photo(&patrol, &camera, "排污口")
            .expect("attach");
        phone.submit(&patrol).expect("submit");
        let mut durable = false;
        for _ in 0..8 {
            if phone.sync().await.is_ok()
                && phone_says_uploaded(&phone)
                && phone.patrols()[0].sync == gridpatrol_sdk::SyncState::Durable
            {
                durable = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            crashed |= revive(&mut server, &bin, &data, port).await;
        }
        assert!(
            durable,
            "{point}: the patrol and its photo never reached the server"
        );

        // The verdict, background work (images, snapshots), the township's sign-off.
        let week = patrol_week();
        let mut verdict = false;
        let mut signed = false;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) && !(verdict && signed) {
            crashed |= revive(&mut server, &bin, &data, port).await;
            let base = server.base.clone();
            let login = http_client()
                .post(format!("{base}/v1/auth/login"))
                .json(&serde_json::json!({"username": "leader-522632100", "password": gridpatrol_tests::PASSWORD}))
                .send()
                .await;
            let Some(token) = (match login {
                Ok(r) if r.status().is_success() => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["access_token"].as_str().map(str::to_string)),
                _ => None,
            }) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            if !verdict {
                verdict = http_client()
                    .get(format!("{base}/v1/patrols/{patrol}/verdict"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200);
            }
            if verdict && !signed {
                // Let the background work run (images, owed snapshots) before signing.
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                if revive(&mut server, &bin, &data, port).await {
                    crashed = true;
                    continue;
                }
                let answer = http_client()
                    .post(format!(
                        "{base}/v1/compliance/weeks/{week}/signoff?grid=522632100"
                    ))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({}))
                    .send()
                    .await;
                signed = answer.is_ok_and(|r| matches!(r.status().as_u16(), 200 | 409));
            }
            if !(verdict && signed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // A crash in background work after the sign-off still counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        crashed |= revive(&mut server, &bin, &data, port).await;
        assert!(verdict, "{point}: no verdict");
        assert!(signed, "{point}: not signed");
        if !crashed {
            unreached.push(point);
        }
        // Exactly once: one patrol with its twelve fixes, one photo, one sign-off.
        assert_eq!(
            server_copy(&server.base, &sha).await.as_deref(),
            Some(sha.as_str()),
            "{point}"
        );
        let db = data.join("gridpatrol.sqlite3");
        let (held, finished, _) = sqlite_counts(&db, &sha);
        assert_eq!(
            (held, finished),
            (1, 1),
            "{point}: photos, finished uploads"
        );
        let (patrols, fixes, signoffs) = {
            use diesel::prelude::*;
            use gridpatrol_server::schema::{patrols, week_signoffs};
            let mut conn = diesel::SqliteConnection::establish(&db.to_string_lossy()).expect("db");
            let rows: Vec<i32> = patrols::table
                .filter(patrols::id.eq(&patrol))
                .select(patrols::fix_count)
                .load(&mut conn)
                .expect("patrols");
            let signoffs: i64 = week_signoffs::table
                .filter(week_signoffs::week.eq(&week))
                .count()
                .get_result(&mut conn)
                .expect("signoffs");
            (rows.len(), rows.first().copied(), signoffs)
        };
        assert_eq!(
            (patrols, fixes, signoffs),
            (1, Some(12), 1),
            "{point}: patrol rows, its fixes, sign-offs"
        );
        drop(server);
    }
    assert!(
        unreached.is_empty(),
        "crash points never reached by the day: {unreached:?}"
    );
}
