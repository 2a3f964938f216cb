//! Phones killed at any moment (SIGKILL, as Android kills a background app) lose nothing and
//! duplicate nothing: the simulator runs as a child process on phones kept in SQLite stores, is
//! killed mid-run several times, and finishes on a last run; then every patrol on every phone is
//! on the server exactly once, acknowledged, and so is every photo, with no upload left half done.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use futures_util::StreamExt;
use gridpatrol_sdk::store::SqliteStore;
use gridpatrol_sdk::{Client, SyncState};
use gridpatrol_server::schema::{patrols, photo_uploads, photos};
use gridpatrol_tests::link::FlakyLink;
use gridpatrol_tests::{Backend, TestApp};

fn simulator(app: &TestApp, dir: &std::path::Path, days: u32, seed: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_patrol-sim"));
    command
        .args([
            "--server",
            &app.base,
            "--inspectors",
            "3",
            "--offline",
            "0.2",
        ])
        .args(["--days", &days.to_string(), "--seed", &seed.to_string()])
        .arg("--store-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The simulator's phones, reopened from the SQLite stores it left in `dir` (killed or not).
fn phones(dir: &std::path::Path, base: &str) -> Vec<(std::path::PathBuf, Client)> {
    let mut phones = Vec::new();
    for entry in std::fs::read_dir(dir).expect("stores") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "sqlite3") {
            continue;
        }
        let store = SqliteStore::open(&path).expect("a killed store reopens");
        let phone = Client::open(Arc::new(store), base).expect("open");
        phones.push((path, phone));
    }
    phones
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_killed_mid_run_lose_and_duplicate_nothing() {
    let app = TestApp::with_demo(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tmp");
    // Killed at different moments: while enrolling, recording, syncing.
    for (seed, after_ms) in [(1, 150), (2, 600), (3, 1_100), (4, 1_700)] {
        let mut child = simulator(&app, dir.path(), 60, seed)
            .spawn()
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let last = simulator(&app, dir.path(), 1, 9)
        .output()
        .expect("last run");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let mut on_phones = BTreeSet::new();
    let mut photos_on_phones = BTreeSet::new();
    let mut stores = 0;
    for (path, phone) in phones(dir.path(), &app.base) {
        stores += 1;
        for patrol in phone.patrols() {
            assert_eq!(patrol.sync, SyncState::Durable, "{path:?} {patrol:?}");
            assert!(on_phones.insert(patrol.id.clone()), "{} twice", patrol.id);
        }
        for photo in phone.photos().expect("photos") {
            assert_eq!(photo.state, "uploaded", "{path:?} {photo:?}");
            photos_on_phones.insert(photo.sha256);
        }
    }
    assert_eq!(stores, 3);
    let on_server: BTreeSet<String> = app
        .with_conn(|conn| patrols::table.select(patrols::id).load::<String>(conn))
        .await
        .into_iter()
        .collect();
    assert!(on_phones.len() >= 3, "the runs recorded patrols");
    assert_eq!(on_server, on_phones);

    // Photos: every one the phones took is on the server once, whole, and no upload is left
    // half done.
    let photos_on_server: BTreeSet<String> = app
        .with_conn(|conn| photos::table.select(photos::sha256).load::<String>(conn))
        .await
        .into_iter()
        .collect();
    assert!(!photos_on_phones.is_empty(), "the runs took photos");
    assert_eq!(photos_on_server, photos_on_phones);
    let mut pieces = app
        .state
        .photos
        .store
        .list(Some(&object_store::path::Path::from("uploads")));
    assert!(pieces.next().await.is_none(), "no pieces left over");
}

/// The case of an app killed in the middle of an upload, made certain: over a slow link
/// (32 KB/s, a poor 3G uplink), the phone is killed, as its link drops, once a third of a photo's
/// bytes have crossed after the server opened its upload. The server keeps what arrived (the
/// upload stands part way: checked, so the kill did land inside the PATCH); the phone, started
/// again, asks where the upload stands, sends only the rest, and the photo is stored once with
/// the phone's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_killed_mid_upload_sends_only_the_rest() {
    let app = TestApp::with_demo(Backend::Sqlite).await;
    let link = FlakyLink::start(&app.base).await;
    link.pace(32_000);
    let dir = tempfile::tempdir().expect("tmp");
    let run = |days: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_patrol-sim"));
        command
            .args(["--server", &link.base, "--inspectors", "1", "--days", days])
            .args(["--offline", "0", "--photos", "1", "--problems", "0"])
            .args(["--seed", "5", "--store-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let mut child = run("1").spawn().expect("spawn");

    // The server opens an upload; a third of the photo crosses the link after that.
    let open = || {
        app.with_conn(|conn| {
            photo_uploads::table
                .filter(photo_uploads::completed_at.is_null())
                .select((photo_uploads::id, photo_uploads::length))
                .first::<(String, i64)>(conn)
                .optional()
        })
    };
    let mut upload = None;
    for _ in 0..1_200 {
        if let Some(found) = open().await {
            upload = Some(found);
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before uploading"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (id, length) = upload.expect("an upload opened within 30 s");
    let crossed = |link: &FlakyLink| {
        link.upstream_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let opened_at = crossed(&link);
    let third = u64::try_from(length / 3).expect("length");
    while crossed(&link) < opened_at + third {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Killed as its radio drops: the bytes the phone's kernel still held are lost with it. (With
    // the network up they would still go out after the kill, and the server would hold the whole
    // photo: the case the other test meets.)
    link.cut_after(0);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let uploads = || {
        app.with_conn(|conn| {
            photo_uploads::table
                .select((
                    photo_uploads::id,
                    photo_uploads::sha256,
                    photo_uploads::length,
                    photo_uploads::completed_at.is_not_null(),
                ))
                .load::<(String, String, i64, bool)>(conn)
        })
    };
    let done_before: BTreeSet<String> = uploads()
        .await
        .into_iter()
        .filter(|(_, _, _, done)| *done)
        .map(|(id, ..)| id)
        .collect();

    // The cut reaches the server through the link: it keeps what arrived.
    let received = || {
        let id = id.clone();
        app.with_conn(move |conn| {
            photo_uploads::table
                .find(&id)
                .select(photo_uploads::received)
                .first::<i64>(conn)
        })
    };
    let mut kept = 0;
    for _ in 0..200 {
        kept = received().await;
        if kept > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        kept > 0 && kept < length,
        "killed inside the PATCH: {kept} of {length} bytes kept"
    );

    // Started again on a good link: it finishes from there.
    assert!(link.has_cut());
    link.pace(0);
    let before = crossed(&link);
    let last = run("0").output().expect("last run");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    let resent = crossed(&link) - before;
    let after = uploads().await;
    let (_, sha256, _, done) = after.iter().find(|u| u.0 == id).expect("the upload");
    assert!(done, "the upload that was cut is the one completed");
    assert_eq!(
        after.iter().filter(|u| &u.1 == sha256).count(),
        1,
        "no second upload of the photo: the phone resumed the first"
    );
    // Resuming means a PATCH at the kept offset (one from 0 is refused), so the second run
    // sent the rest of this photo, the photos not done before the kill, and a few kilobytes of
    // HTTP and sync; never this photo whole again.
    let rest = u64::try_from(length - kept).expect("rest");
    let others: u64 = after
        .iter()
        .filter(|u| u.0 != id && !done_before.contains(&u.0))
        .map(|u| u64::try_from(u.2).expect("length"))
        .sum();
    assert!(
        resent >= rest && resent < rest + others + 16_384,
        "{resent} bytes sent again: {rest} of this photo were missing, {others} of others"
    );

    // On the server once, whole (its SHA-256 checked at completion), and the phone knows it.
    let on_server: i64 = app
        .with_conn({
            let sha256 = sha256.clone();
            move |conn| {
                photos::table
                    .filter(photos::sha256.eq(sha256))
                    .count()
                    .get_result(conn)
            }
        })
        .await;
    assert_eq!(on_server, 1);
    let mut seen = false;
    for (_, phone) in phones(dir.path(), &app.base) {
        for photo in phone.photos().expect("photos") {
            assert_eq!(photo.state, "uploaded", "{photo:?}");
            seen |= &photo.sha256 == sha256;
        }
    }
    assert!(seen, "the phone holds the photo it uploaded");
}
