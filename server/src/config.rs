//! One typed configuration for the server, read from flags and `GRIDPATROL_*` environment variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::error::StartupError;

/// Settings shared by every command that touches the database.
#[derive(Args, Clone)]
pub struct Config {
    /// Directory for the SQLite file, photos and generated secrets.
    #[arg(
        long,
        env = "GRIDPATROL_DATA_DIR",
        default_value = "data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// `sqlite://PATH` (default: `sqlite://<data dir>/gridpatrol.sqlite3`) or `postgres://…`.
    #[arg(long, env = "GRIDPATROL_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// IANA time zone of the jurisdiction's calendar (weekly records, deadlines).
    #[arg(
        long,
        env = "GRIDPATROL_TIMEZONE",
        default_value = "Asia/Shanghai",
        global = true
    )]
    pub timezone: String,

    /// Connections in the database pool.
    #[arg(
        long,
        env = "GRIDPATROL_DB_POOL_SIZE",
        default_value_t = 8,
        global = true
    )]
    pub db_pool_size: u32,
}

/// Settings of the HTTP server (`serve`).
#[derive(Args, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "GRIDPATROL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Secret for signing access tokens (at least 32 bytes). When absent, a key is generated on
    /// first start and kept in the database, so every server process on one database shares it.
    #[arg(long, env = "GRIDPATROL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "GRIDPATROL_ACCESS_TOKEN_TTL", default_value_t = 900)]
    pub access_token_ttl_secs: i64,

    /// Lifetime of a refresh token, in days.
    #[arg(long, env = "GRIDPATROL_REFRESH_TOKEN_DAYS", default_value_t = 60)]
    pub refresh_token_days: i64,

    /// Largest accepted JSON body, in bytes (bigger bodies get 413 `payload_too_large`).
    #[arg(long, env = "GRIDPATROL_MAX_JSON_BYTES", default_value_t = 256 * 1024)]
    pub max_json_bytes: usize,

    /// Largest accepted GeoJSON upload, in bytes.
    #[arg(long, env = "GRIDPATROL_MAX_GEOJSON_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_geojson_bytes: usize,

    /// Most positions (vertices) in one GeoJSON import; more get 422 `too_many_vertices`.
    #[arg(
        long,
        env = "GRIDPATROL_IMPORT_MAX_VERTICES",
        default_value_t = 1_000_000
    )]
    pub import_max_vertices: usize,

    /// Most positions in one ring of an imported grid; a feature with more is refused
    /// (`too_many_vertices` in the import's problems).
    #[arg(
        long,
        env = "GRIDPATROL_IMPORT_MAX_RING_VERTICES",
        default_value_t = 250_000
    )]
    pub import_max_ring_vertices: usize,

    /// Largest accepted sync request, in bytes.
    #[arg(long, env = "GRIDPATROL_MAX_SYNC_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_sync_bytes: usize,

    /// Worker threads for HTTP (default: one per core).
    #[arg(long, env = "GRIDPATROL_WORKERS")]
    pub workers: Option<usize>,

    /// Where photos are kept: a directory (default: `<data dir>/photos`), or
    /// `s3://BUCKET[/PREFIX]` on any S3-compatible store (see the `--s3-*` settings).
    #[arg(long, env = "GRIDPATROL_PHOTO_STORE")]
    pub photo_store: Option<String>,

    /// The S3 endpoint (e.g. `https://oss-cn-hangzhou.aliyuncs.com` or a MinIO at
    /// `http://10.0.0.5:9000`); default: AWS. With an endpoint, path-style requests are used.
    #[arg(long, env = "GRIDPATROL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// The S3 region.
    #[arg(long, env = "GRIDPATROL_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// The S3 access key id.
    #[arg(long, env = "GRIDPATROL_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// The S3 secret access key.
    #[arg(long, env = "GRIDPATROL_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Largest accepted photo, in bytes.
    #[arg(long, env = "GRIDPATROL_MAX_PHOTO_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_photo_bytes: u64,

    /// Largest accepted photo, in pixels (width × height).
    #[arg(
        long,
        env = "GRIDPATROL_MAX_PHOTO_PIXELS",
        default_value_t = 50_000_000
    )]
    pub max_photo_pixels: u64,

    /// Hours an unfinished upload is kept after its last piece.
    #[arg(long, env = "GRIDPATROL_UPLOAD_TTL_HOURS", default_value_t = 24)]
    pub upload_ttl_hours: u64,

    /// Syncs that read, merge and store at once in this process (default: four per core, at
    /// least 8); more wait for a turn (`GRIDPATROL_SYNC_QUEUE_MS`), then get 503 `server_busy`.
    #[arg(long, env = "GRIDPATROL_MAX_CONCURRENT_SYNCS")]
    pub max_concurrent_syncs: Option<usize>,

    /// How long a sync waits for a turn before it is told to come back (503 with Retry-After).
    #[arg(long, env = "GRIDPATROL_SYNC_QUEUE_MS", default_value_t = 2_000)]
    pub sync_queue_ms: u64,

    /// Failed password sign-ins one client address may make per minute (429 beyond).
    #[arg(
        long,
        env = "GRIDPATROL_SIGNIN_PER_CLIENT_PER_MINUTE",
        default_value_t = 20
    )]
    pub signin_per_client_per_minute: u32,

    /// Failed sign-ins to one account from one address in 15 minutes before that address is
    /// refused for the rest of the window.
    #[arg(long, env = "GRIDPATROL_SIGNIN_MAX_FAILURES", default_value_t = 5)]
    pub signin_max_failures: i32,

    /// Failed sign-ins to one account from all addresses in 15 minutes past which only addresses
    /// the owner signed in from may try.
    #[arg(
        long,
        env = "GRIDPATROL_SIGNIN_ACCOUNT_MAX_FAILURES",
        default_value_t = 50
    )]
    pub signin_account_max_failures: i64,

    /// Password checks (argon2) at once (default: one per core).
    #[arg(long, env = "GRIDPATROL_PASSWORD_CONCURRENCY")]
    pub password_concurrency: Option<usize>,

    /// How long a sign-in waits for a password check before 503 `server_busy`.
    #[arg(long, env = "GRIDPATROL_PASSWORD_QUEUE_MS", default_value_t = 1_000)]
    pub password_queue_ms: u64,

    /// A request body must arrive within this many seconds plus one second per
    /// `GRIDPATROL_BODY_MIN_BYTES_PER_SEC` bytes; a slower one gets 408 `request_timeout`.
    #[arg(long, env = "GRIDPATROL_BODY_TIMEOUT_SECS", default_value_t = 10)]
    pub body_timeout_secs: u64,

    /// The slowest a request body may arrive on average, after the first
    /// `GRIDPATROL_BODY_TIMEOUT_SECS` (a phone on 2G sends 5 to 20 KB/s).
    #[arg(
        long,
        env = "GRIDPATROL_BODY_MIN_BYTES_PER_SEC",
        default_value_t = 1024
    )]
    pub body_min_bytes_per_sec: u64,

    /// `/readyz` answers not ready when the disk of the SQLite file or of the photo directory has
    /// less than this many MiB free, so that a load balancer stops sending before writes fail.
    #[arg(long, env = "GRIDPATROL_MIN_FREE_MB", default_value_t = 256)]
    pub min_free_mb: u64,

    /// Database jobs in flight at once in this process (default: twice the pool). More wait as
    /// futures rather than each on a blocking thread of its own.
    #[arg(long, env = "GRIDPATROL_DB_JOBS")]
    pub db_jobs: Option<usize>,

    /// Unfinished uploads one device may have open at once, and the MiB they may announce.
    #[arg(long, env = "GRIDPATROL_MAX_OPEN_UPLOADS", default_value_t = 64)]
    pub max_open_uploads: i64,
    #[arg(long, env = "GRIDPATROL_MAX_OPEN_UPLOAD_MB", default_value_t = 1024)]
    pub max_open_upload_mb: i64,

    /// A bearer token that a metrics scraper (Prometheus) sends to read `/metrics`. Without it,
    /// only a signed-in operator may read them.
    #[arg(long, env = "GRIDPATROL_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Addresses of the reverse proxies in front of this server (comma-separated IPs). Only a
    /// request from one of them is believed when it says, in `X-Forwarded-Proto` or
    /// `Forwarded`, that the client came over HTTPS (the console's cookies are then `Secure`).
    #[arg(long, env = "GRIDPATROL_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl ServeConfig {
    /// The caps on one GeoJSON import.
    pub fn import_limits(&self) -> crate::grids::import::Limits {
        crate::grids::import::Limits {
            max_vertices: self.import_max_vertices,
            max_ring_vertices: self.import_max_ring_vertices,
        }
    }

    /// The sign-in limits these settings describe.
    pub fn sign_in_settings(&self) -> crate::auth::throttle::Settings {
        let defaults = crate::auth::throttle::Settings::default();
        crate::auth::throttle::Settings {
            per_client_per_minute: self.signin_per_client_per_minute,
            max_failures: self.signin_max_failures,
            account_max_failures: self.signin_account_max_failures,
            password_concurrency: self
                .password_concurrency
                .unwrap_or(defaults.password_concurrency),
            password_queue: std::time::Duration::from_millis(self.password_queue_ms),
            ..defaults
        }
    }

    /// [`ServeConfig::max_concurrent_syncs`], with its default.
    pub fn max_concurrent_syncs(&self) -> usize {
        self.max_concurrent_syncs.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            (4 * cores).max(8)
        })
    }

    /// The photo store and checks these settings describe.
    pub fn photos(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<crate::photos::Photos, StartupError> {
        let limits = gridpatrol_photo::Limits {
            max_bytes: self.max_photo_bytes,
            max_pixels: self.max_photo_pixels,
            ..gridpatrol_photo::Limits::default()
        };
        let ttl = std::time::Duration::from_secs(self.upload_ttl_hours * 3600);
        let cap = crate::photos::OpenUploads {
            uploads: self.max_open_uploads,
            bytes: self.max_open_upload_mb * 1024 * 1024,
        };
        let mut photos = match &self.photo_store {
            None => crate::photos::Photos::local(&data_dir.join("photos"), limits, ttl),
            Some(spec) => match spec.strip_prefix("s3://") {
                Some(location) => {
                    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
                    let s3 = crate::photos::S3 {
                        bucket: bucket.to_string(),
                        prefix: prefix.trim_matches('/').to_string(),
                        endpoint: self.s3_endpoint.clone(),
                        region: self.s3_region.clone(),
                        access_key_id: self.s3_access_key_id.clone(),
                        secret_access_key: self.s3_secret_access_key.clone(),
                    };
                    crate::photos::Photos::s3(&s3, limits, ttl)
                }
                None => {
                    let dir = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
                    crate::photos::Photos::local(&dir, limits, ttl)
                }
            },
        }?;
        photos.open_per_device = cap;
        Ok(photos)
    }
}

impl Config {
    /// A configuration for the given database, with defaults everywhere else (tests, tools).
    pub fn for_database(data_dir: PathBuf, database_url: String) -> Self {
        Config {
            data_dir,
            database_url: Some(database_url),
            timezone: "Asia/Shanghai".into(),
            db_pool_size: 8,
        }
    }

    /// The database URL, with the SQLite default filled in.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("gridpatrol.sqlite3").display()
            ),
        }
    }

    pub fn timezone(&self) -> Result<chrono_tz::Tz, StartupError> {
        self.timezone
            .parse()
            .map_err(|_| StartupError::Config(format!("unknown time zone {:?}", self.timezone)))
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: None,
            access_token_ttl_secs: 900,
            refresh_token_days: 60,
            max_json_bytes: 256 * 1024,
            max_geojson_bytes: 32 * 1024 * 1024,
            max_sync_bytes: 8 * 1024 * 1024,
            import_max_vertices: 1_000_000,
            import_max_ring_vertices: 250_000,
            workers: None,
            photo_store: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            max_photo_bytes: 20 * 1024 * 1024,
            max_photo_pixels: 50_000_000,
            upload_ttl_hours: 24,
            min_free_mb: 256,
            signin_per_client_per_minute: 20,
            signin_max_failures: 5,
            signin_account_max_failures: 50,
            password_concurrency: None,
            password_queue_ms: 1_000,
            body_timeout_secs: 10,
            body_min_bytes_per_sec: 1024,
            max_concurrent_syncs: None,
            sync_queue_ms: 2_000,
            db_jobs: None,
            max_open_uploads: 64,
            max_open_upload_mb: 1024,
            metrics_token: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Hides the password of a database URL (`postgres://user:secret@host` → `postgres://user:***@host`).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url()))
            .field("timezone", &self.timezone)
            .field("db_pool_size", &self.db_pool_size)
            .finish()
    }
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_days", &self.refresh_token_days)
            .field("max_json_bytes", &self.max_json_bytes)
            .field("max_geojson_bytes", &self.max_geojson_bytes)
            .field("max_sync_bytes", &self.max_sync_bytes)
            .field("import_max_vertices", &self.import_max_vertices)
            .field("import_max_ring_vertices", &self.import_max_ring_vertices)
            .field("workers", &self.workers)
            .field("photo_store", &self.photo_store)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let config = Config::for_database("d".into(), "postgres://gp:hunter2@db:5432/gp".into());
        let serve = ServeConfig {
            jwt_secret: Some("super-secret-signing-key-0123456789".into()),
            ..ServeConfig::default()
        };
        let text = format!("{config:?} {serve:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("postgres://gp:***@db:5432/gp"), "{text}");
    }

    #[test]
    fn sqlite_is_the_default_database() {
        let config = Config {
            data_dir: "/var/lib/gp".into(),
            database_url: None,
            timezone: "Asia/Shanghai".into(),
            db_pool_size: 4,
        };
        assert_eq!(
            config.database_url(),
            "sqlite:///var/lib/gp/gridpatrol.sqlite3"
        );
        assert!(config.timezone().is_ok());
    }
}
