//! The `gridpatrol` binary as an operator uses it: import grids, add people, print enrollment codes,
//! serve (with the demo), migrate PostgreSQL, write the OpenAPI file.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use diesel::{Connection, RunQueryDsl, pg::PgConnection};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_gridpatrol");
const DEMO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/demo/rongjiang_522632_grids.geojson"
);

fn gridpatrol(
    data_dir: &Path,
    database_url: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("GRIDPATROL_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match database_url {
        Some(url) => command.env("GRIDPATROL_DATABASE_URL", url),
        None => command.env_remove("GRIDPATROL_DATABASE_URL"),
    };
    let mut child = command.spawn().expect("run gridpatrol");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `gridpatrol serve`, killed on drop.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(data_dir: &Path, database_url: Option<&str>, extra: &[&str]) -> Served {
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(extra)
        .env("GRIDPATROL_DATA_DIR", data_dir)
        .env("GRIDPATROL_LISTEN", format!("127.0.0.1:{port}"))
        .env("GRIDPATROL_WORKERS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.env("GRIDPATROL_DATABASE_URL", url);
    }
    let served = Served {
        child: command.spawn().expect("spawn serve"),
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Ok(resp) = http_client()
            .get(format!("{}/healthz", served.base))
            .send()
            .await
            && resp.status().is_success()
        {
            return served;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// reqwest is built with rustls but no crypto provider in this workspace (the SDK brings its own
/// TLS configuration): install ring as the process default before building a client.
fn http_client() -> reqwest::Client {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = http_client()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_imports_grids_adds_people_and_enrolls_a_phone() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path();

    let out = gridpatrol(data, None, &["import-grids", DEMO], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("273 created"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        data.join("gridpatrol.sqlite3").exists(),
        "SQLite is the default, in the data dir"
    );
    let again = gridpatrol(data, None, &["import-grids", DEMO], None);
    assert!(
        text(&again.stdout).contains("0 created, 0 updated, 273 unchanged"),
        "{}",
        text(&again.stdout)
    );

    // A broken file: every problem listed, non-zero exit, nothing written.
    let broken = dir.path().join("broken.geojson");
    std::fs::write(
        &broken,
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"code": "X1", "name": "a", "level": "village", "parent_code": "522632100"},
             "geometry": {"type": "Polygon", "coordinates": [[[108.5, 25.9], [108.6, 25.9], [108.6, 26.0], [108.5, 26.0]]]}},
            {"type": "Feature", "properties": {"code": "X2", "name": "b", "level": "village", "parent_code": "nope"},
             "geometry": {"type": "Polygon", "coordinates": [[[108.5, 25.9], [108.6, 25.9], [108.6, 26.0], [108.5, 25.9]]]}}
        ]})
        .to_string(),
    )
    .expect("write");
    let out = gridpatrol(
        data,
        None,
        &["import-grids", broken.to_str().expect("path")],
        None,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("feature #0 (X1): ring_not_closed"), "{err}");
    assert!(err.contains("feature #1 (X2): missing_parent"), "{err}");
    assert!(err.contains("nothing was imported"), "{err}");
    let unchanged = gridpatrol(data, None, &["import-grids", DEMO], None);
    assert!(
        text(&unchanged.stdout).contains("273 grids in all"),
        "{}",
        text(&unchanged.stdout)
    );

    // People.
    let out = gridpatrol(
        data,
        None,
        &[
            "user",
            "add",
            "--username",
            "wang.fang",
            "--name",
            "王芳",
            "--grid",
            "522632100",
            "--role",
            "leader",
            "--password-stdin",
        ],
        Some("a-long-enough-password\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dup = gridpatrol(
        data,
        None,
        &["user", "add", "--username", "wang.fang", "--name", "王芳"],
        None,
    );
    assert!(!dup.status.success());
    assert!(text(&dup.stderr).contains("taken"), "{}", text(&dup.stderr));
    let bad_role = gridpatrol(
        data,
        None,
        &[
            "user",
            "add",
            "--username",
            "li",
            "--name",
            "李",
            "--grid",
            "522632100",
            "--role",
            "king",
        ],
        None,
    );
    assert!(!bad_role.status.success());
    assert!(
        text(&bad_role.stderr).contains("unknown role"),
        "{}",
        text(&bad_role.stderr)
    );
    let out = gridpatrol(
        data,
        None,
        &[
            "user",
            "add",
            "--username",
            "zhao.lei",
            "--name",
            "赵磊",
            "--grid",
            "522632100001",
            "--role",
            "inspector",
            "--employment",
            "full_time",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = gridpatrol(data, None, &["enroll", "--user", "zhao.lei"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let code = stdout
        .split_whitespace()
        .find(|w| w.len() == 14 && w.matches('-').count() == 2)
        .unwrap_or_else(|| panic!("no code in {stdout}"))
        .to_string();
    let missing = gridpatrol(data, None, &["enroll", "--user", "nobody"], None);
    assert!(!missing.status.success());

    let rebuilt = gridpatrol(data, None, &["rebuild-projections"], None);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt.stderr));
    assert!(
        text(&rebuilt.stdout).contains("0 document(s) projected again"),
        "{}",
        text(&rebuilt.stdout)
    );

    // The server uses what the commands wrote.
    let served = serve(data, None, &[]).await;
    let (status, body) = post(
        &served.base,
        "/v1/auth/login",
        &json!({"username": "wang.fang", "password": "a-long-enough-password"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        &served.base,
        "/v1/devices/enroll",
        &json!({"code": code, "device_name": "红米", "actor_id": "00112233445566778899aabbccddeeff"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["device_id"].is_i64());
}

/// The README's run command: `serve --demo` loads 榕江县 once and prints how to sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_is_ready_to_use() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut served = serve(dir.path(), None, &["--demo"]).await;
    let located: Value = http_client()
        .get(format!(
            "{}/v1/grids/locate?lon=108.52&lat=25.93",
            served.base
        ))
        .send()
        .await
        .expect("locate")
        .json()
        .await
        .expect("json");
    let levels: Vec<&str> = located["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .filter_map(|g| g["level"].as_str())
        .collect();
    assert_eq!(levels, ["county", "township", "village"], "{located}");
    let (status, _) = post(
        &served.base,
        "/v1/auth/login",
        &json!({"username": "leader-522632100", "password": "gridpatrol-demo"}),
    )
    .await;
    assert_eq!(status, 200);
    let _ = served.child.kill();
    let output = std::mem::replace(
        &mut served.child,
        Command::new("true").spawn().expect("true"),
    )
    .wait_with_output()
    .expect("output");
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("榕江县 loaded (273 grids, 756 inspectors"),
        "{stdout}"
    );
    assert!(stdout.contains("admin-522632"), "{stdout}");
    drop(served);

    // A second start finds grids and loads nothing twice.
    let served = serve(dir.path(), None, &["--demo"]).await;
    let health: Value = http_client()
        .get(format!("{}/healthz", served.base))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["grids"], 273);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_migrated_explicitly_then_served() {
    let admin = std::env::var("GRIDPATROL_TEST_PG_URL")
        .expect("GRIDPATROL_TEST_PG_URL is not set: run scripts/test, which starts PostgreSQL");
    let name = format!("gp_cli_{}", std::process::id());
    let mut conn = PgConnection::establish(&admin).expect("connect to test PostgreSQL");
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .expect("drop");
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .expect("create");
    let (base, _) = admin.rsplit_once('/').expect("db in URL");
    let url = format!("{base}/{name}");
    let dir = tempfile::tempdir().expect("tmp");

    // Many processes may share PostgreSQL: `serve` does not migrate it behind their backs.
    let refused = gridpatrol(dir.path(), Some(&url), &["serve"], None);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("gridpatrol migrate"),
        "{}",
        text(&refused.stderr)
    );

    let out = gridpatrol(dir.path(), Some(&url), &["migrate"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let applied = text(&out.stdout);
    assert!(
        applied.contains("migration(s) applied") && !applied.starts_with("0 "),
        "{applied}"
    );
    let again = gridpatrol(dir.path(), Some(&url), &["migrate"], None);
    assert!(
        text(&again.stdout).contains("0 migration(s) applied"),
        "{}",
        text(&again.stdout)
    );
    let out = gridpatrol(dir.path(), Some(&url), &["import-grids", DEMO], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let served = serve(dir.path(), Some(&url), &[]).await;
    let health: Value = http_client()
        .get(format!("{}/healthz", served.base))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["database"], "postgres");
    assert_eq!(health["grids"], 273);
    assert!(!dir.path().join("gridpatrol.sqlite3").exists());
}

#[test]
fn unsupported_database_url_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = gridpatrol(
        dir.path(),
        Some("mysql://root:hunter2@db/gp"),
        &["migrate"],
        None,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password must not be printed: {err}"
    );
}

#[test]
fn openapi_command_writes_the_committed_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("openapi.yaml");
    let out = gridpatrol(
        dir.path(),
        None,
        &["openapi", "--output", path.to_str().expect("path")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(path).expect("written");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
            .expect("committed");
    assert_eq!(
        written, committed,
        "openapi.yaml is stale: regenerate it with `gridpatrol openapi --output openapi.yaml`"
    );
}

/// `rotate-signing-key`: new tokens get the new key; old tokens keep working until the old key is
/// retired, and then the client recovers by refreshing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_signing_anyone_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path();
    assert!(
        gridpatrol(data, None, &["import-grids", DEMO], None)
            .status
            .success()
    );
    let out = gridpatrol(
        data,
        None,
        &[
            "user",
            "add",
            "--username",
            "chen.jing",
            "--name",
            "陈静",
            "--grid",
            "522632",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("rotate-me-please"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let login = json!({"username": "chen.jing", "password": "rotate-me-please"});
    let kid = |token: &str| -> String {
        let header = token.split('.').next().expect("header");
        let bytes = base64_url(header);
        let value: Value = serde_json::from_slice(&bytes).expect("header json");
        value["kid"].as_str().expect("kid").to_string()
    };
    let me = |base: String, token: String| async move {
        http_client()
            .get(format!("{base}/v1/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("me")
            .status()
            .as_u16()
    };

    let served = serve(data, None, &[]).await;
    let (_, first) = post(&served.base, "/v1/auth/login", &login).await;
    let first_token = first["access_token"].as_str().expect("token").to_string();
    drop(served);

    let out = gridpatrol(data, None, &["rotate-signing-key"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let served = serve(data, None, &[]).await;
    assert_eq!(
        me(served.base.clone(), first_token.clone()).await,
        200,
        "old tokens stay valid"
    );
    let (_, second) = post(&served.base, "/v1/auth/login", &login).await;
    let second_token = second["access_token"].as_str().expect("token").to_string();
    assert_ne!(
        kid(&first_token),
        kid(&second_token),
        "new tokens are signed with the new key"
    );
    drop(served);

    let out = gridpatrol(
        data,
        None,
        &["rotate-signing-key", "--retire-previous"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 older key(s) retired"),
        "{}",
        text(&out.stdout)
    );
    let served = serve(data, None, &[]).await;
    assert_eq!(
        me(served.base.clone(), second_token).await,
        401,
        "retired keys no longer verify"
    );
    let (status, refreshed) = post(
        &served.base,
        "/v1/auth/refresh",
        &json!({"refresh_token": second["refresh_token"]}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let third = refreshed["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(me(served.base.clone(), third).await, 200);
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}
