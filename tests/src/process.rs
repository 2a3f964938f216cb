//! The `gridpatrol` binary in a process of its own, for benchmarks that measure the server alone
//! (its CPU time and memory from /proc).

/// The `gridpatrol` binary built beside the running bench (`cargo build --release -p
/// gridpatrol-server`), if there is one.
pub fn server_binary() -> Option<std::path::PathBuf> {
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
    _dir: tempfile::TempDir,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = std::process::Command::new(bin)
            .args(["serve", "--demo"])
            .env("GRIDPATROL_DATA_DIR", dir.path())
            .env("GRIDPATROL_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start gridpatrol");
        let server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
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
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("gridpatrol did not start");
    }
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
