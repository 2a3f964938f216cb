//! Test harness: a real GridPatrol server, in this process, on a free loopback port, over a real
//! SQLite file or a fresh PostgreSQL database, driven over real HTTP.
//!
//! PostgreSQL comes from `GRIDPATROL_TEST_PG_URL` (an admin URL of a throwaway cluster, which
//! `scripts/test` starts). Without it the PostgreSQL half fails loudly; it never skips.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use diesel::{Connection, RunQueryDsl, pg::PgConnection};
use gridpatrol_server::{AppState, Config, ServeConfig, build_state, demo, launch};
use serde_json::{Value, json};

/// The signing secret of every test server, so tests can forge tokens deliberately.
/// The scrape token test servers accept at `/metrics` (`GRIDPATROL_METRICS_TOKEN`).
pub const METRICS_TOKEN: &str = "test-metrics-scraper-token";
pub const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";
pub const PASSWORD: &str = demo::PASSWORD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one async test body on both backends: `both_backends!(name);` expects
/// `async fn name(backend: Backend)` and makes `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
        }
    )+};
}

/// A fresh, empty database for one test; the value keeps a SQLite file's directory alive.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

pub fn postgres_admin_url() -> String {
    std::env::var("GRIDPATROL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "GRIDPATROL_TEST_PG_URL is not set. Run the suite with scripts/test, which installs and \
             starts a throwaway PostgreSQL; the PostgreSQL tests never skip."
        )
    })
}

pub fn fresh_database(backend: Backend) -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        Backend::Sqlite => format!(
            "sqlite://{}",
            dir.path().join("gridpatrol.sqlite3").display()
        ),
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let name = format!("gp_test_{:016x}", rand::random::<u64>());
            let mut conn = PgConnection::establish(&admin)
                .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin}: {e}"));
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .expect("create test database");
            let (base, _) = admin.rsplit_once('/').expect("admin URL names a database");
            format!("{base}/{name}")
        }
    };
    TestDb { url, dir }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// Asserts an error response with this status and stable code, and the documented body shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got {}: {}",
            self.status, self.text
        );
        assert_eq!(self.body["error"], code, "body: {}", self.text);
        let message = self.body["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "an error needs a human message: {}",
            self.text
        );
        self
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {}: {}",
            self.status,
            self.text
        );
        &self.body
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub db: TestDb,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command now; the workers wind down on their own.
        drop(self.handle.stop(false));
    }
}

/// A plain reqwest client. The workspace's reqwest has rustls without a crypto provider (the SDK
/// configures its own), so ring is installed as the process default first.
pub fn http_client() -> reqwest::Client {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Test settings with photos in a fresh bucket of the S3-compatible server at
/// `GRIDPATROL_TEST_S3_URL` (moto, which `scripts/test` starts). Without it the test fails.
pub async fn s3_serve_config() -> ServeConfig {
    let url = std::env::var("GRIDPATROL_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "GRIDPATROL_TEST_S3_URL is not set. Run the suite with scripts/test, which starts an \
             S3-compatible server (moto); the S3 tests never skip."
        )
    });
    let bucket = format!("photos-{}", uuid::Uuid::now_v7().simple());
    let created = http_client()
        .put(format!("{url}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {url} does not answer: {e}"));
    assert!(
        created.status().is_success(),
        "bucket: {}",
        created.status()
    );
    ServeConfig {
        photo_store: Some(format!("s3://{bucket}/gridpatrol")),
        s3_endpoint: Some(url),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        ..serve_config()
    }
}

pub fn serve_config() -> ServeConfig {
    ServeConfig {
        jwt_secret: Some(JWT_SECRET.into()),
        metrics_token: Some(METRICS_TOKEN.into()),
        workers: Some(1),
        ..ServeConfig::default()
    }
}

impl TestApp {
    /// A server with the 榕江县 demo jurisdiction loaded.
    pub async fn with_demo(backend: Backend) -> TestApp {
        Self::with_demo_serving(backend, serve_config()).await
    }

    /// A server with the demo jurisdiction and the given HTTP settings (benchmarks run it as
    /// `serve` does by default: a worker per core).
    pub async fn with_demo_serving(backend: Backend, serve: ServeConfig) -> TestApp {
        let app = Self::start(fresh_database(backend), serve).await;
        app.state
            .db
            .write(demo::load_if_empty)
            .await
            .unwrap_or_else(|e| panic!("demo load failed: {e}"));
        app.refresh_index().await;
        app
    }

    pub async fn empty(backend: Backend) -> TestApp {
        Self::start(fresh_database(backend), serve_config()).await
    }

    pub async fn start(db: TestDb, serve: ServeConfig) -> TestApp {
        let config = Config::for_database(db.dir.path().to_path_buf(), db.url.clone());
        let state = build_state(&config, &serve, true)
            .await
            .expect("server state");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = launch(state.clone(), listener, &serve).expect("launch");
        let handle = server.handle();
        tokio::spawn(server);
        TestApp {
            base,
            client: http_client(),
            state,
            db,
            handle,
        }
    }

    /// A second server process on this one's database (its own pool, writer queue, workers and
    /// files directory), as a deployment with two processes behind a balancer runs.
    pub async fn sharing_database(&self, serve: ServeConfig) -> TestApp {
        Self::start(
            TestDb {
                url: self.db.url.clone(),
                dir: tempfile::tempdir().expect("tmp"),
            },
            serve,
        )
        .await
    }

    pub async fn refresh_index(&self) {
        self.state.refresh_index().await.expect("index refresh");
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Resp {
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    }

    fn with_token(
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Self::with_token(
            self.client.get(format!("{}{path}", self.base)),
            token,
        ))
        .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.send(
            Self::with_token(self.client.post(format!("{}{path}", self.base)), token).json(body),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        self.send(
            Self::with_token(self.client.post(format!("{}{path}", self.base)), token)
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(Self::with_token(
            self.client.delete(format!("{}{path}", self.base)),
            token,
        ))
        .await
    }

    /// Signs in and returns the token pair.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let resp = self
            .post(
                "/v1/auth/login",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        resp.assert_ok().clone()
    }

    /// Signs in with the demo password and returns the access token.
    pub async fn token(&self, username: &str) -> String {
        self.login(username, PASSWORD).await["access_token"]
            .as_str()
            .expect("access token")
            .to_string()
    }

    /// Enrolls a phone for `user_id` as a manager would (a code, then the phone's enrollment) and
    /// returns the phone's token pair.
    pub async fn enroll_phone(
        &self,
        manager_token: &str,
        user_id: i64,
        device_name: &str,
    ) -> Value {
        self.enroll_phone_as(manager_token, user_id, device_name, &actor_id())
            .await
    }

    /// Like [`TestApp::enroll_phone`], with the phone's Automerge actor id (hex) given.
    /// A one-time enrollment code for the user's phone, handed out by `manager_token`'s holder.
    pub async fn enrollment_code(&self, manager_token: &str, user_id: i64) -> String {
        let code = self
            .post(
                &format!("/v1/users/{user_id}/enrollment-codes"),
                Some(manager_token),
                &json!({}),
            )
            .await;
        assert_eq!(code.status, 201, "{}", code.text);
        code.body["code"].as_str().expect("code").to_string()
    }

    pub async fn enroll_phone_as(
        &self,
        manager_token: &str,
        user_id: i64,
        device_name: &str,
        actor: &str,
    ) -> Value {
        let code = self.enrollment_code(manager_token, user_id).await;
        let phone = self
            .post(
                "/v1/devices/enroll",
                None,
                &json!({"code": code, "device_name": device_name, "actor_id": actor}),
            )
            .await;
        phone.assert_ok().clone()
    }

    /// The id of the grid with this code.
    pub async fn grid_id(&self, code: &str) -> i64 {
        let code = code.to_string();
        self.state
            .db
            .run(move |conn| {
                use diesel::prelude::*;
                use gridpatrol_server::schema::grids;
                grids::table
                    .filter(grids::code.eq(code))
                    .select(grids::id)
                    .first::<i64>(conn)
                    .map_err(gridpatrol_server::error::ApiError::from)
            })
            .await
            .expect("grid exists")
    }

    /// The id of the user with this name.
    pub async fn user_id(&self, username: &str) -> i64 {
        let username = username.to_string();
        self.state
            .db
            .run(move |conn| {
                use diesel::prelude::*;
                use gridpatrol_server::schema::users;
                users::table
                    .filter(users::username.eq(username))
                    .select(users::id)
                    .first::<i64>(conn)
                    .map_err(gridpatrol_server::error::ApiError::from)
            })
            .await
            .expect("user exists")
    }

    /// Runs a closure on a database connection (to age a timestamp or count rows).
    pub async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut gridpatrol_server::db::DbConnection) -> diesel::QueryResult<T>
        + Send
        + 'static,
    ) -> T {
        self.state
            .db
            .run(move |conn| f(conn).map_err(gridpatrol_server::error::ApiError::from))
            .await
            .expect("database call")
    }

    /// Row counts of every table, to check that a refused request changed nothing.
    pub async fn table_counts(&self) -> Vec<(&'static str, i64)> {
        self.with_conn(|conn| {
            use diesel::prelude::*;
            use gridpatrol_server::schema::*;
            Ok(vec![
                ("grids", grids::table.count().get_result(conn)?),
                ("users", users::table.count().get_result(conn)?),
                ("grid_roles", grid_roles::table.count().get_result(conn)?),
                ("devices", devices::table.count().get_result(conn)?),
                (
                    "enrollment_codes",
                    enrollment_codes::table.count().get_result(conn)?,
                ),
                ("sessions", sessions::table.count().get_result(conn)?),
                (
                    "refresh_tokens",
                    refresh_tokens::table.count().get_result(conn)?,
                ),
            ])
        })
        .await
    }
}

pub mod link;
pub mod link2g;
pub mod phone;
pub mod process;
pub mod tls;

/// A random Automerge-style actor id (16 bytes, hex).
pub fn actor_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A JPEG of noise (incompressible, so sizes are honest), different for each seed.
pub fn noise_jpeg(seed: u64, width: u32, height: u32) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let image = image::RgbImage::from_fn(width, height, |_, _| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v = (state >> 33) as u32;
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&image)
        .unwrap_or_else(|e| panic!("encoding a test JPEG: {e}"));
    out
}

/// A JPEG as a phone camera writes one (quality 90, `width` × `height`): a scene of gradients
/// and blocks under moderate per-pixel noise (±10 levels), which at 4000 × 3000 weighs about
/// 3 MB, inside the 3–5 MB of a 12-megapixel phone photo. Different for each seed.
pub fn camera_jpeg(seed: u64, width: u32, height: u32) -> Vec<u8> {
    let mut s = (seed as u32) | 1;
    let shift = (seed % 97) as u32;
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let n = (s % 21) as i32 - 10;
        let block = (((x + shift * 7) / 300 + y / 200) % 3) as i32 * 40;
        let r = ((x + shift) * 200 / width) as i32 + block + n;
        let g = (y * 200 / height) as i32 + n;
        let b = ((x + y) * 160 / (width + height)) as i32 + 60 - block / 2 - n;
        image::Rgb([r, g, b].map(|v| v.clamp(0, 255) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&image)
        .unwrap_or_else(|e| panic!("encoding a test JPEG: {e}"));
    out
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
