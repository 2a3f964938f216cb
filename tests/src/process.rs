//! The `gridpatrol` binary in a process of its own, for benchmarks that measure the server alone
//! (its CPU time and memory from /proc).

/// The `gridpatrol` binary named by `GRIDPATROL_BIN`, or else the one built beside the running
/// bench (`cargo build --release -p gridpatrol-server`), if there is one.
pub fn server_binary() -> Option<std::path::PathBuf> {
    if let Some(bin) = std::env::var_os("GRIDPATROL_BIN") {
        let bin = std::path::PathBuf::from(bin);
        return bin.exists().then_some(bin);
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("gridpatrol");
    bin.exists().then_some(bin)
}

/// Peak resident memory (VmHWM) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command: state is field 0, utime 11, stime 12 (clock ticks, 100 a second).
    (ticks(11) + ticks(12)) / 100.0
}

/// `gridpatrol serve --demo` in its own process on a fresh SQLite file, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `bin` on a free port and waits until it answers `/healthz`.
    pub async fn spawn(bin: &std::path::Path) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tmp");
        let mut server = Self::start(bin, dir.path(), free_port(), &[]).await;
        server._dir = Some(dir);
        server
    }

    /// Starts `bin serve --demo` on `port` with its data in `dir` (kept: a restart on the same
    /// directory finds what the last process left) and `env` set, and waits until it answers.
    pub async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut command = std::process::Command::new(bin);
        command.args(["serve", "--demo"]);
        Self::launch(command, dir, port, env).await
    }

    /// [`ServerProcess::start`] on a disk of `size_mib`: a tmpfs mounted on `dir` in a mount
    /// namespace of the server's own (`unshare -m`), invisible to the rest of the machine and
    /// gone with the process. The test reaches it through `/proc/<pid>/root` ([`Self::disk`]).
    pub async fn start_on_small_disk(
        bin: &std::path::Path,
        dir: &std::path::Path,
        size_mib: u32,
        port: u16,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut command = std::process::Command::new("unshare");
        command.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            r#"mount -t tmpfs -o "size=$0m" tmpfs "$1" && exec "$2" serve --demo"#,
        ]);
        command.arg(size_mib.to_string()).arg(dir).arg(bin);
        Self::launch(command, dir, port, env).await
    }

    /// `dir` as the server process sees it (inside its mount namespace).
    pub fn disk(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        std::path::PathBuf::from(format!("/proc/{}/root", self.child.id())).join(relative)
    }

    async fn launch(
        mut command: std::process::Command,
        dir: &std::path::Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        command
            .env("GRIDPATROL_DATA_DIR", dir)
            .env("GRIDPATROL_LISTEN", format!("127.0.0.1:{port}"))
            .env("GRIDPATROL_METRICS_TOKEN", crate::METRICS_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start gridpatrol");
        let mut server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: None,
        };
        let client = crate::http_client();
        for _ in 0..300 {
            if client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "gridpatrol exited at start: {status} (its stderr is above; a fault test needs the binary built with the fault-injection feature, as `cargo test --workspace` builds it)"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("gridpatrol did not start");
    }

    /// Waits up to `limit` for the process to end by itself (a crash point aborting it).
    pub async fn exited(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// The debug `gridpatrol` binary that `cargo test --workspace` builds beside the tests (with the
/// crash points of the `fault-injection` feature, which this crate turns on). Panics with what
/// to do when it is missing: fault tests never skip.
pub fn test_server_binary() -> std::path::PathBuf {
    const BUILD: &str = "run the tests with `cargo test --workspace` (scripts/test), or build it with `cargo build -p gridpatrol-server --features fault-injection`";
    let bin =
        server_binary().unwrap_or_else(|| panic!("no gridpatrol binary beside the tests: {BUILD}"));
    // `cargo test -p gridpatrol-tests` alone does not rebuild the binary: refuse a stale one
    // rather than test old code.
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("binary's time");
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src");
    let newest = newest_file(&sources);
    assert!(
        newest <= built,
        "{} is older than the server's sources: {BUILD}",
        bin.display()
    );
    bin
}

fn newest_file(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_file(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(time);
    }
    newest
}

/// An access token of the demo's county admin, signed in over HTTP at `base`.
pub async fn demo_admin_token(base: &str) -> String {
    let body: serde_json::Value = crate::http_client()
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin-522632", "password": crate::PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    body["access_token"].as_str().expect("token").to_string()
}

/// The demo's inspectors as (user name, user id), read over HTTP with the token `admin`.
pub async fn inspectors(client: &reqwest::Client, base: &str, admin: &str) -> Vec<(String, i64)> {
    let users: Vec<serde_json::Value> = client
        .get(format!("{base}/v1/users?role=inspector"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    users
        .iter()
        .filter_map(|u| Some((u["username"].as_str()?.to_string(), u["id"].as_i64()?)))
        .collect()
}

/// A one-time enrollment code for the person `user_id`, made over HTTP with the token `admin`.
pub async fn enrollment_code(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    user_id: i64,
) -> String {
    let code: serde_json::Value = client
        .post(format!("{base}/v1/users/{user_id}/enrollment-codes"))
        .bearer_auth(admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("code")
        .json()
        .await
        .expect("json");
    code["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an enrollment code: {code}"))
        .to_string()
}

/// A device enrolled over HTTP with `code` for the Automerge `actor`: its id and access token.
pub async fn enroll_device(
    client: &reqwest::Client,
    base: &str,
    code: &str,
    actor: &automerge::ActorId,
    device_name: &str,
) -> (i64, String) {
    let pair: serde_json::Value = client
        .post(format!("{base}/v1/devices/enroll"))
        .json(
            &serde_json::json!({"code": code, "device_name": device_name,
                                  "actor_id": actor.to_hex_string()}),
        )
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("json");
    let device_id = pair["device_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("enrolled: {pair}"));
    let token = pair["access_token"].as_str().expect("token").to_string();
    (device_id, token)
}

/// Runs `bin migrate` on `database_url` (a shared PostgreSQL that `serve` processes do not
/// migrate themselves), with `data_dir` as its data directory; panics with its stderr if it fails.
pub fn migrate(bin: &std::path::Path, database_url: &str, data_dir: &std::path::Path) {
    let migrated = std::process::Command::new(bin)
        .arg("migrate")
        .env("GRIDPATROL_DATABASE_URL", database_url)
        .env("GRIDPATROL_DATA_DIR", data_dir)
        .output()
        .expect("migrate");
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
}
