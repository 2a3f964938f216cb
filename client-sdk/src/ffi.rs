//! The surface the Kotlin, Swift and Python bindings see (UniFFI). Every call is synchronous for
//! the foreign side: local calls return at once, and network calls (`enroll`, `sync`) run on a
//! runtime the SDK owns, so the app needs no Rust executor. Call them off the UI thread.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::store::{MemoryStore, SqliteStore, Store};
use crate::{
    Backoff, Client, FixInput, GridInfo, KeyPoint, Method, NewProblemInput, Observer, Options,
    PatrolSummary, PhotoOptions, PhotoStatus, SdkError, SyncReport, Trust,
};

/// How to open the SDK, beyond the store and the server's address.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct OpenOptions {
    /// Trust only these root certificates (PEM) for the server: the deployment's own CA.
    /// `None`: the public CAs built into the SDK.
    #[uniffi(default)]
    pub trusted_roots_pem: Option<String>,
    /// Downscale photos to this long edge (pixels) when attaching them, keeping their EXIF.
    #[uniffi(default)]
    pub photo_long_edge: Option<u32>,
    /// Delete the SDK's copy of a photo once the server holds it.
    #[uniffi(default)]
    pub delete_photos_after_upload: bool,
}

impl OpenOptions {
    fn into_options(self, photo_dir: PathBuf) -> Options {
        Options {
            trust: match self.trusted_roots_pem {
                Some(pem) => Trust::OnlyPem(pem),
                None => Trust::PublicRoots,
            },
            photos: PhotoOptions {
                dir: Some(photo_dir),
                long_edge: self.photo_long_edge,
                delete_after_upload: self.delete_photos_after_upload,
            },
            ..Options::default()
        }
    }
}

/// The phone's clocks, supplied by the app: a test that sets the time (a phone hours off, a
/// patrol across midnight), or an app with a time source of its own. The SDK stamps patrols,
/// notes, photos and problems with `now_ms`, and measures this clock's error against the
/// server's at every sync (`clock_skew_ms`). Both are called from the SDK's threads.
#[uniffi::export(foreign)]
pub trait DeviceClock: Send + Sync {
    /// The device's wall clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A clock that only moves forward (e.g. milliseconds since boot).
    fn monotonic_ms(&self) -> i64;
}

/// The app's [`DeviceClock`] as the SDK's [`crate::clock::Clock`].
struct AppClock(Arc<dyn DeviceClock>);

impl crate::clock::Clock for AppClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
    fn monotonic_ms(&self) -> i64 {
        self.0.monotonic_ms()
    }
}

/// Told of every patrol or problem that changed (recorded, received, acknowledged, refused).
#[uniffi::export(foreign)]
pub trait PatrolObserver: Send + Sync {
    fn on_change(&self, id: String);
}

/// Keeps an observer registered; `cancel()` (or letting it go) stops it.
#[derive(uniffi::Object)]
pub struct Subscription {
    observer: Mutex<Option<Observer>>,
}

#[uniffi::export]
impl Subscription {
    pub fn cancel(&self) {
        self.observer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// The SDK for an app: one per phone.
#[derive(uniffi::Object)]
pub struct GridPatrol {
    client: Arc<Client>,
    runtime: tokio::runtime::Runtime,
    /// The app said the network is up.
    online: std::sync::atomic::AtomicBool,
    /// A background sync is running (at most one at a time).
    syncing: Arc<std::sync::atomic::AtomicBool>,
    /// What the last background sync came to, for `last_background_sync`.
    last_background: Arc<Mutex<Option<Result<SyncReport, SdkError>>>>,
}

/// A fresh directory under the system's temporary directory, for an in-memory SDK's photos.
fn temporary_photo_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "gridpatrol-sdk-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime, SdkError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gridpatrol-sdk")
        .enable_all()
        .build()
        .map_err(|e| SdkError::Storage {
            message: format!("cannot start the SDK's runtime: {e}"),
        })
}

#[uniffi::export]
impl GridPatrol {
    /// Opens the SDK with its store at `db_path` (a file in the app's private storage), for
    /// the server at `server_url`.
    /// Attached photos are copied next to it, into `<db_path>.photos/`.
    #[uniffi::constructor]
    pub fn open(db_path: String, server_url: String) -> Result<Arc<GridPatrol>, SdkError> {
        Self::open_with(db_path, server_url, OpenOptions::default())
    }

    /// As `open`, with options: the deployment's own CA, photo downscaling, deleting photos
    /// once uploaded.
    #[uniffi::constructor]
    pub fn open_with(
        db_path: String,
        server_url: String,
        options: OpenOptions,
    ) -> Result<Arc<GridPatrol>, SdkError> {
        let path = std::path::Path::new(&db_path);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path)?);
        let photos = PathBuf::from(format!("{db_path}.photos"));
        Self::with_store(store, &server_url, options.into_options(photos))
    }

    /// As `open_with`, reading time from the app's `clock` instead of the system's.
    #[uniffi::constructor]
    pub fn open_with_clock(
        db_path: String,
        server_url: String,
        options: OpenOptions,
        clock: Arc<dyn DeviceClock>,
    ) -> Result<Arc<GridPatrol>, SdkError> {
        let path = std::path::Path::new(&db_path);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path)?);
        let photos = PathBuf::from(format!("{db_path}.photos"));
        let options = Options {
            clock: Arc::new(AppClock(clock)),
            ..options.into_options(photos)
        };
        Self::with_store(store, &server_url, options)
    }

    /// An SDK that keeps nothing between runs (tests, demos); photos are copied to a fresh
    /// directory under the system's temporary directory.
    #[uniffi::constructor]
    pub fn in_memory(server_url: String) -> Result<Arc<GridPatrol>, SdkError> {
        Self::with_store(
            Arc::new(MemoryStore::new()),
            &server_url,
            OpenOptions::default().into_options(temporary_photo_dir()),
        )
    }

    /// As `in_memory`, reading time from the app's `clock`.
    #[uniffi::constructor]
    pub fn in_memory_with_clock(
        server_url: String,
        clock: Arc<dyn DeviceClock>,
    ) -> Result<Arc<GridPatrol>, SdkError> {
        let options = Options {
            clock: Arc::new(AppClock(clock)),
            ..OpenOptions::default().into_options(temporary_photo_dir())
        };
        Self::with_store(Arc::new(MemoryStore::new()), &server_url, options)
    }

    /// Every photo attached on this phone and where its upload stands.
    pub fn photos(&self) -> Result<Vec<PhotoStatus>, SdkError> {
        self.client.photos()
    }

    /// Bytes of photos still to upload.
    pub fn pending_photo_bytes(&self) -> Result<u64, SdkError> {
        self.client.pending_photo_bytes()
    }

    pub fn enroll(&self, code: String, device_name: String) -> Result<(), SdkError> {
        self.runtime
            .block_on(self.client.enroll(&code, &device_name))
    }

    pub fn is_enrolled(&self) -> bool {
        self.client.is_enrolled()
    }

    pub fn my_grids(&self) -> Vec<GridInfo> {
        self.client.my_grids()
    }

    pub fn my_key_points(&self) -> Vec<KeyPoint> {
        self.client.my_key_points()
    }

    pub fn start_patrol(&self, grid: String, method: Method) -> Result<String, SdkError> {
        self.client.start_patrol(&grid, method)
    }

    pub fn add_fix(&self, patrol: String, fix: FixInput) -> Result<(), SdkError> {
        self.client.add_fix(&patrol, fix)
    }

    pub fn add_note(&self, patrol: String, text: String) -> Result<(), SdkError> {
        self.client.add_note(&patrol, &text)
    }

    /// Attaches the photo at `path` (as the camera wrote it); returns its SHA-256.
    pub fn attach_photo(
        &self,
        patrol: String,
        path: String,
        caption: String,
    ) -> Result<String, SdkError> {
        self.client
            .attach_photo(&patrol, std::path::Path::new(&path), &caption)
    }

    pub fn record_problem(
        &self,
        patrol: String,
        problem: NewProblemInput,
    ) -> Result<String, SdkError> {
        self.client.record_problem(&patrol, problem)
    }

    /// Ends and submits the patrol; with a network, it is sent in the background at once.
    pub fn submit(self: Arc<Self>, patrol: String) -> Result<(), SdkError> {
        self.client.submit(&patrol)?;
        if self.online.load(std::sync::atomic::Ordering::Relaxed) {
            self.background_sync();
        }
        Ok(())
    }

    /// The platform's connectivity callback: when the network comes up, the SDK syncs in the
    /// background (retrying with backoff), and it syncs submitted patrols at once while it is up.
    pub fn set_network_available(self: Arc<Self>, available: bool) {
        self.online
            .store(available, std::sync::atomic::Ordering::Relaxed);
        if available {
            self.background_sync();
        }
    }

    /// Whether a background sync is running.
    pub fn is_syncing(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What the last background sync came to (`None` before the first one ended).
    pub fn last_background_sync(&self) -> Option<SyncReport> {
        self.last_background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .and_then(Result::ok)
    }

    /// The error of the last background sync, if it failed (e.g. `DeviceRevoked`).
    pub fn last_background_error(&self) -> Option<String> {
        self.last_background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .and_then(Result::err)
            .map(|e| format!("{}: {e}", e.code()))
    }

    pub fn review_patrol(
        &self,
        patrol: String,
        approved: bool,
        comment: String,
    ) -> Result<(), SdkError> {
        self.client.review_patrol(&patrol, approved, &comment)
    }

    pub fn patrols(&self) -> Vec<PatrolSummary> {
        self.client.patrols()
    }

    pub fn patrol(&self, id: String) -> Result<PatrolSummary, SdkError> {
        self.client.patrol(&id)
    }

    /// One sync now (one round trip in the common case).
    pub fn sync(&self) -> Result<SyncReport, SdkError> {
        self.runtime.block_on(self.client.sync())
    }

    /// Syncs, retrying network failures up to `attempts` times with backoff and jitter (call
    /// when the platform says the network is back).
    pub fn sync_with_retry(&self, attempts: u32) -> Result<SyncReport, SdkError> {
        self.runtime
            .block_on(self.client.sync_with_retry(attempts, Backoff::default()))
    }

    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.client.clock_skew_ms()
    }

    pub fn observe(&self, observer: Arc<dyn PatrolObserver>) -> Arc<Subscription> {
        let registered = self
            .client
            .observe(move |id| observer.on_change(id.to_string()));
        Arc::new(Subscription {
            observer: Mutex::new(Some(registered)),
        })
    }
}

/// The network calls as `suspend` functions (Kotlin), `async` (Swift) and coroutines (Python
/// asyncio): they run on the SDK's runtime, and the app's event loop only awaits them.
#[uniffi::export]
impl GridPatrol {
    pub async fn enroll_async(&self, code: String, device_name: String) -> Result<(), SdkError> {
        let client = Arc::clone(&self.client);
        self.runtime
            .spawn(async move { client.enroll(&code, &device_name).await })
            .await
            .map_err(task_failed)?
    }

    pub async fn sync_async(&self) -> Result<SyncReport, SdkError> {
        let client = Arc::clone(&self.client);
        self.runtime
            .spawn(async move { client.sync().await })
            .await
            .map_err(task_failed)?
    }
}

fn task_failed(error: tokio::task::JoinError) -> SdkError {
    SdkError::Protocol {
        message: format!("the SDK's task failed: {error}"),
    }
}

impl GridPatrol {
    /// Starts a background sync unless one is running.
    fn background_sync(&self) {
        use std::sync::atomic::Ordering;
        if self
            .syncing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let client = Arc::clone(&self.client);
        let syncing = Arc::clone(&self.syncing);
        let last = Arc::clone(&self.last_background);
        self.runtime.spawn(async move {
            let result = client.sync_with_retry(8, Backoff::default()).await;
            if let Err(error) = &result {
                tracing::info!(%error, "background sync failed");
            }
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            syncing.store(false, Ordering::Release);
        });
    }

    fn with_store(
        store: Arc<dyn Store>,
        server_url: &str,
        options: Options,
    ) -> Result<Arc<GridPatrol>, SdkError> {
        let runtime = runtime()?;
        // The HTTP client is made inside the runtime, where its connection pool will live.
        let client = {
            let _entered = runtime.enter();
            Client::open_with(store, server_url, options)?
        };
        Ok(Arc::new(GridPatrol {
            client: Arc::new(client),
            runtime,
            online: std::sync::atomic::AtomicBool::new(false),
            syncing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            last_background: Arc::new(Mutex::new(None)),
        }))
    }
}
