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
use gridpatrol_server::schema::{patrols, photos};
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
    for entry in std::fs::read_dir(dir.path()).expect("stores") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "sqlite3") {
            continue;
        }
        stores += 1;
        let store = SqliteStore::open(&path).expect("a killed store reopens");
        let phone = Client::open(Arc::new(store), &app.base).expect("open");
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
