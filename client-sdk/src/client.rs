//! The typed API an app calls: enroll, record patrols offline, list them with their sync state,
//! observe changes. No Automerge in sight: the documents and their schema stay inside.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::{ActorId, Automerge};
use serde::{Deserialize, Serialize};
use sync_protocol::client::{ClientState, DocState, Event};
use sync_protocol::schema::{self, DocKind, FixSource, PatrolStatus, ReviewState};
use sync_protocol::wire::{Cursor, Rejection};

use crate::clock::{Clock, SystemClock};
use crate::error::SdkError;
use crate::store::{self, Batch, Store, Write};
use crate::tls::Trust;

/// How a patrol is carried out (榕江: "工作方法采取'巡查、明查、暗查'").
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Method {
    /// 巡查: the routine walk of the grid.
    Routine,
    /// 明查: an announced inspection.
    Announced,
    /// 暗查: an unannounced inspection.
    Unannounced,
}

impl Method {
    fn schema(self) -> schema::Method {
        match self {
            Method::Routine => schema::Method::Routine,
            Method::Announced => schema::Method::Announced,
            Method::Unannounced => schema::Method::Unannounced,
        }
    }
}

/// The coordinate system of a position, as the platform's location SDK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Datum {
    /// Raw GNSS (Android `LocationManager`, iOS Core Location): WGS-84, equal to CGCS2000
    /// within a metre.
    Wgs84,
    /// 国测局 GCJ-02: Amap (高德) and Tencent location SDKs.
    Gcj02,
    /// Baidu BD-09.
    Bd09,
}

impl Datum {
    fn schema(self) -> schema::Datum {
        match self {
            Datum::Wgs84 => schema::Datum::Wgs84,
            Datum::Gcj02 => schema::Datum::Gcj02,
            Datum::Bd09 => schema::Datum::Bd09,
        }
    }
}

/// One GPS fix as the platform reports it.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct FixInput {
    /// The fix's own time (device clock), milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub lon: f64,
    pub lat: f64,
    pub datum: Datum,
    pub accuracy_m: Option<f32>,
    /// The platform flagged the location as mocked.
    pub mock: bool,
}

/// What an inspector did about a problem on the spot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ProblemDisposition {
    /// 制止: stopped on site.
    StoppedOnSite,
    /// 上报: escalated.
    Escalated,
}

/// A problem found on a patrol.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct NewProblemInput {
    pub category: String,
    pub description: String,
    pub lon: f64,
    pub lat: f64,
    pub datum: Datum,
    pub disposition: ProblemDisposition,
}

/// A grid the signed-in inspector patrols (cached for offline use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct GridInfo {
    pub code: String,
    pub name: String,
    pub level: String,
}

/// A key point (重点点位: a quarry, a livestock farm, an outfall) inside the inspector's grids,
/// cached for offline use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct KeyPoint {
    pub code: String,
    pub name: String,
    /// The middle of its extent (the point itself for a point with a radius).
    pub lon: f64,
    pub lat: f64,
    /// Its extent: [min lon, min lat, max lon, max lat].
    pub bbox: Vec<f64>,
}

/// A supervisor's verdict as the phone received it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReviewInfo {
    pub approved: bool,
    pub comment: String,
    pub at_ms: i64,
}

/// Where a patrol stands between the phone and the server.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum SyncState {
    /// Recorded on the phone only; never sent.
    LocalOnly,
    /// Sent, but no receipt yet (the response was lost, or changes came after the last receipt).
    Sent,
    /// The server's receipt covers everything recorded: stored on the server.
    Durable,
    /// Durable, and approved by a supervisor.
    Reviewed,
    /// A supervisor sent it back with a comment.
    Returned { comment: String },
    /// The server refused it; it stays on the phone. `code` is the server's stable code.
    Rejected { code: String, message: String },
}

/// A patrol as an app lists it.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PatrolSummary {
    pub id: String,
    pub grid: String,
    pub method: Method,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub submitted: bool,
    pub fix_count: u32,
    pub note_count: u32,
    pub photo_count: u32,
    pub problem_count: u32,
    pub review: Option<ReviewInfo>,
    pub sync: SyncState,
}

/// The device's enrollment: who it is and how it talks to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub user_id: i64,
    pub device_id: i64,
    pub actor: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// What the SDK keeps about each document besides its changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LocalState {
    /// Heads (hex) of the server's last receipt.
    pub acked: Vec<String>,
    /// The server's refusal: code, message, and the heads (hex) it refused.
    pub rejected: Option<(String, String, Vec<String>)>,
    pub resync: bool,
    /// A request carrying this document was sent.
    pub sent: bool,
    /// Device and monotonic clock when the patrol started on this phone.
    pub started_device_ms: i64,
    pub started_monotonic_ms: i64,
}

/// The device clock's measured error against the server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Skew {
    pub skew_ms: i64,
    pub measured_device_ms: i64,
}

pub(crate) struct Inner {
    pub session: Option<Session>,
    pub protocol: ClientState,
    pub docs: BTreeMap<String, Automerge>,
    pub local: BTreeMap<String, LocalState>,
    pub chunks: HashMap<String, usize>,
    pub grids: Vec<GridInfo>,
    pub key_points: Vec<KeyPoint>,
    pub skew: Option<Skew>,
    /// The jurisdiction's photo size (from `/v1/me`), until the app's own choice overrides it.
    pub photo_policy: Option<crate::photos::PhotoPolicy>,
}

type Callback = Arc<dyn Fn(&str) + Send + Sync>;

/// How [`Client::open_with`] reaches the server and reads time.
#[derive(Clone)]
pub struct Options {
    /// Where the time comes from (tests put a wrong clock here).
    pub clock: Arc<dyn Clock>,
    /// Which CAs an `https://` server's certificate may chain to.
    pub trust: Trust,
    /// Where attached photos are kept, and how they are sent.
    pub photos: crate::photos::PhotoOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock::default()),
            trust: Trust::PublicRoots,
            photos: crate::photos::PhotoOptions::default(),
        }
    }
}

/// The SDK: one per phone (per store).
pub struct Client {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) base_url: String,
    pub(crate) http: reqwest::Client,
    pub(crate) photo_options: crate::photos::PhotoOptions,
    pub(crate) inner: Mutex<Inner>,
    observers: Arc<Mutex<BTreeMap<u64, Callback>>>,
    next_observer: AtomicU64,
    /// One sync at a time (an app's explicit sync and a background one).
    pub(crate) sync_turn: tokio::sync::Mutex<()>,
}

/// Stops its callback when dropped.
pub struct Observer {
    id: u64,
    observers: Arc<Mutex<BTreeMap<u64, Callback>>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        lock(&self.observers).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) const META_SESSION: &str = "session";
pub(crate) const META_CURSOR: &str = "cursor";
pub(crate) const META_VERIFY: &str = "syncs_since_verify";
pub(crate) const META_GRIDS: &str = "grids";
pub(crate) const META_KEY_POINTS: &str = "key_points";
pub(crate) const META_SKEW: &str = "clock_skew";
pub(crate) const META_PHOTO_POLICY: &str = "photo_policy";
pub(crate) const META_ACTOR: &str = "actor";
/// `photo:<sha256>`: a photo attached here, waiting for its upload.
pub(crate) const META_PHOTO_PREFIX: &str = "photo:";

/// A document with this many stored chunks is saved whole once it is durable.
const COMPACT_AFTER: usize = 64;

impl LocalState {
    pub(crate) fn to_protocol(&self, kind: DocKind) -> DocState {
        let heads = |hex: &[String]| hex.iter().filter_map(|h| h.parse().ok()).collect();
        DocState {
            kind,
            acked: heads(&self.acked),
            rejected: self.rejected.as_ref().map(|(code, message, at)| {
                (
                    Rejection {
                        code: code.clone(),
                        message: message.clone(),
                    },
                    heads(at),
                )
            }),
            resync: self.resync,
        }
    }

    pub(crate) fn update_from(&mut self, state: &DocState) {
        let hex = |heads: &[automerge::ChangeHash]| heads.iter().map(|h| h.to_string()).collect();
        self.acked = hex(&state.acked);
        self.rejected = state
            .rejected
            .as_ref()
            .map(|(r, at)| (r.code.clone(), r.message.clone(), hex(at)));
        self.resync = state.resync;
    }
}

impl Inner {
    /// Everything the SDK keeps, read back from the store.
    fn load(store: &dyn Store) -> Result<Inner, SdkError> {
        let snapshot = store.snapshot()?;
        let mut inner = Inner {
            session: None,
            protocol: ClientState::default(),
            docs: BTreeMap::new(),
            local: BTreeMap::new(),
            chunks: HashMap::new(),
            grids: Vec::new(),
            key_points: Vec::new(),
            skew: None,
            photo_policy: None,
        };
        if let Some(bytes) = snapshot.meta.get(META_SESSION) {
            inner.session = Some(store::decode(bytes)?);
        }
        let actor = match snapshot.meta.get(META_ACTOR) {
            Some(hex) => ActorId::try_from(String::from_utf8_lossy(hex).as_ref()).map_err(|e| {
                SdkError::Storage {
                    message: format!("stored actor id: {e}"),
                }
            })?,
            None => {
                // Made once per phone and kept: the server binds it to the device at enrollment.
                let actor = ActorId::random();
                store.write(&Batch(vec![Write::Meta {
                    key: META_ACTOR.into(),
                    value: actor.to_hex_string().into_bytes(),
                }]))?;
                actor
            }
        };
        inner.protocol.actor = Some(actor);
        if let Some(bytes) = snapshot.meta.get(META_CURSOR) {
            inner.protocol.cursor = store::decode::<Cursor>(bytes)?;
        }
        if let Some(bytes) = snapshot.meta.get(META_VERIFY) {
            inner.protocol.syncs_since_verify = store::decode(bytes)?;
        }
        if let Some(bytes) = snapshot.meta.get(META_GRIDS) {
            inner.grids = store::decode(bytes)?;
        }
        if let Some(bytes) = snapshot.meta.get(META_KEY_POINTS) {
            inner.key_points = store::decode(bytes)?;
        }
        if let Some(bytes) = snapshot.meta.get(META_SKEW) {
            inner.skew = Some(store::decode(bytes)?);
        }
        if let Some(bytes) = snapshot.meta.get(META_PHOTO_POLICY) {
            inner.photo_policy = Some(store::decode(bytes)?);
        }
        for (id, stored) in snapshot.docs {
            let kind = DocKind::parse(&stored.kind).ok_or_else(|| SdkError::Storage {
                message: format!("document {id} has unknown kind {}", stored.kind),
            })?;
            let mut doc = Automerge::new();
            for chunk in &stored.chunks {
                doc.load_incremental(chunk).map_err(|e| SdkError::Storage {
                    message: format!("document {id} does not load: {e}"),
                })?;
            }
            let local: LocalState = match &stored.state {
                Some(bytes) => store::decode(bytes)?,
                None => LocalState::default(),
            };
            inner
                .protocol
                .docs
                .insert(id.clone(), local.to_protocol(kind));
            inner.chunks.insert(id.clone(), stored.chunks.len());
            inner.local.insert(id.clone(), local);
            inner.docs.insert(id, doc);
        }
        Ok(inner)
    }
}

impl Client {
    /// Opens the SDK on a store, for a server at `base_url` (e.g. `https://gridpatrol.example.cn`),
    /// trusting the public CAs.
    pub fn open(store: Arc<dyn Store>, base_url: &str) -> Result<Client, SdkError> {
        Self::open_with(store, base_url, Options::default())
    }

    /// As [`Client::open`], reading time from `clock`.
    pub fn open_with_clock(
        store: Arc<dyn Store>,
        base_url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Client, SdkError> {
        Self::open_with(
            store,
            base_url,
            Options {
                clock,
                ..Options::default()
            },
        )
    }

    /// As [`Client::open`], with every option spelt out.
    pub fn open_with(
        store: Arc<dyn Store>,
        base_url: &str,
        options: Options,
    ) -> Result<Client, SdkError> {
        let base_url = base_url.trim_end_matches('/');
        match reqwest::Url::parse(base_url) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.host().is_some() => {}
            _ => {
                return Err(SdkError::invalid(format!(
                    "the server address must be an https:// (or http://) URL, not {base_url:?}"
                )));
            }
        }
        let tls = crate::tls::client_config(&options.trust)?;
        let inner = Inner::load(store.as_ref())?;
        Ok(Client {
            store,
            clock: options.clock,
            base_url: base_url.to_string(),
            // No limit on a whole request: over 40 kbit/s the key points or a long answer take
            // minutes and keep moving. Instead: 30 s to connect, and 60 s for the answer to
            // begin after the request (what a request sends is kept under that: photo pieces
            // of 20 s) and between any two pieces of it, so that a stalled link is given up on
            // and one that trickles is not.
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .read_timeout(std::time::Duration::from_secs(60))
                .tls_backend_preconfigured(tls)
                .build()
                .map_err(|e| SdkError::Tls {
                    message: e.to_string(),
                })?,
            photo_options: options.photos,
            inner: Mutex::new(inner),
            observers: Arc::new(Mutex::new(BTreeMap::new())),
            next_observer: AtomicU64::new(1),
            sync_turn: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The phone's Automerge actor id (hex), which enrollment binds to the device.
    pub fn actor_id(&self) -> String {
        self.inner()
            .protocol
            .actor
            .as_ref()
            .map(ActorId::to_hex_string)
            .unwrap_or_default()
    }

    /// Whether the phone is enrolled.
    pub fn is_enrolled(&self) -> bool {
        self.inner().session.is_some()
    }

    /// The server's numbers for this phone and its inspector, once enrolled.
    pub fn device_id(&self) -> Option<i64> {
        self.inner().session.as_ref().map(|s| s.device_id)
    }

    pub fn user_id(&self) -> Option<i64> {
        self.inner().session.as_ref().map(|s| s.user_id)
    }

    /// The grids this inspector patrols, as last fetched (works offline).
    pub fn my_grids(&self) -> Vec<GridInfo> {
        self.inner().grids.clone()
    }

    /// The key points inside the inspector's grids, as last fetched (works offline).
    pub fn my_key_points(&self) -> Vec<KeyPoint> {
        self.inner().key_points.clone()
    }

    /// The device clock's error against the server's at the last sync, in milliseconds
    /// (positive: the device is behind). `None` before the first sync.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.inner().skew.map(|s| s.skew_ms)
    }

    /// Calls `callback` with a document id whenever a patrol or problem changes (recorded here,
    /// received, acknowledged, refused). Stops when the returned [`Observer`] is dropped.
    pub fn observe(&self, callback: impl Fn(&str) + Send + Sync + 'static) -> Observer {
        let id = self.next_observer.fetch_add(1, Ordering::Relaxed);
        lock(&self.observers).insert(id, Arc::new(callback));
        Observer {
            id,
            observers: Arc::clone(&self.observers),
        }
    }

    pub(crate) fn notify(&self, ids: &[String]) {
        // Called without any SDK lock held, so a callback may call back into the SDK.
        let callbacks: Vec<Callback> = lock(&self.observers).values().cloned().collect();
        for id in ids {
            for callback in &callbacks {
                callback(id);
            }
        }
    }

    fn session_ids(inner: &Inner) -> Result<(i64, i64), SdkError> {
        inner
            .session
            .as_ref()
            .map(|s| (s.user_id, s.device_id))
            .ok_or(SdkError::NotEnrolled)
    }

    /// Runs `edit` as one Automerge change on document `id` and stores the change, durably,
    /// before returning. Creates the document when `kind` is given and it does not exist.
    fn change(
        &self,
        inner: &mut Inner,
        id: &str,
        create: Option<DocKind>,
        edit: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
        ) -> Result<(), schema::SchemaError>,
        batch: &mut Batch,
    ) -> Result<(), SdkError> {
        let actor = inner.protocol.actor.clone().ok_or(SdkError::NotEnrolled)?;
        let kind = match (inner.protocol.docs.get(id), create) {
            (Some(state), None) => state.kind,
            (None, Some(kind)) => kind,
            (Some(_), Some(_)) => return Err(SdkError::invalid(format!("{id} exists"))),
            (None, None) => return Err(SdkError::invalid(format!("no document {id}"))),
        };
        let doc = inner
            .docs
            .entry(id.to_string())
            .or_insert_with(|| Automerge::new().with_actor(actor.clone()));
        doc.set_actor(actor);
        let mut tx = doc.transaction();
        if let Err(e) = edit(&mut tx) {
            tx.rollback();
            return Err(SdkError::invalid(format!("{id}: {e}")));
        }
        tx.commit();
        let chunk = doc
            .get_last_local_change()
            .map(|c| c.raw_bytes().to_vec())
            .ok_or_else(|| SdkError::invalid("nothing changed"))?;
        batch.push(Write::Append {
            id: id.to_string(),
            kind: kind.as_str().to_string(),
            chunk,
        });
        if create.is_some() {
            inner.protocol.track(id, kind);
            let local = LocalState {
                started_device_ms: self.clock.now_ms(),
                started_monotonic_ms: self.clock.monotonic_ms(),
                ..LocalState::default()
            };
            batch.push(Write::DocState {
                id: id.to_string(),
                state: store::encode(&local),
            });
            inner.local.insert(id.to_string(), local);
        }
        *inner.chunks.entry(id.to_string()).or_default() += 1;
        Ok(())
    }

    /// Writes `batch`; on failure reloads the in-memory state from the store, so that memory
    /// never holds what the store does not.
    fn commit(&self, inner: &mut MutexGuard<'_, Inner>, batch: Batch) -> Result<(), SdkError> {
        if let Err(error) = self.store.write(&batch) {
            **inner = Inner::load(self.store.as_ref())?;
            return Err(error);
        }
        Ok(())
    }

    /// One change to one document: stored, then observers told.
    fn change_one(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        id: &str,
        create: Option<DocKind>,
        edit: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
        ) -> Result<(), schema::SchemaError>,
    ) -> Result<(), SdkError> {
        let mut batch = Batch::default();
        self.change(&mut inner, id, create, edit, &mut batch)?;
        self.commit(&mut inner, batch)?;
        drop(inner);
        self.notify(&[id.to_string()]);
        Ok(())
    }

    fn patrol_view(inner: &Inner, id: &str) -> Result<schema::PatrolView, SdkError> {
        let doc = inner
            .docs
            .get(id)
            .ok_or_else(|| SdkError::invalid(format!("no patrol {id}")))?;
        schema::read_patrol(doc).map_err(|e| SdkError::invalid(format!("{id}: {e}")))
    }

    /// The patrol's identity, if it is still recording (checked on every fix: reads neither the
    /// track nor the notes).
    fn recording(inner: &Inner, id: &str) -> Result<schema::Identity, SdkError> {
        let doc = inner
            .docs
            .get(id)
            .ok_or_else(|| SdkError::invalid(format!("no patrol {id}")))?;
        let identity =
            schema::read_identity(doc).map_err(|e| SdkError::invalid(format!("{id}: {e}")))?;
        if identity.kind != DocKind::Patrol {
            return Err(SdkError::invalid(format!("{id} is not a patrol")));
        }
        let status =
            schema::read_status(doc).map_err(|e| SdkError::invalid(format!("{id}: {e}")))?;
        if status != PatrolStatus::Recording {
            return Err(SdkError::invalid(format!(
                "patrol {id} was submitted; it cannot change any more"
            )));
        }
        Ok(identity)
    }

    /// Starts a patrol in one of the inspector's grids. Returns its id.
    pub fn start_patrol(&self, grid: &str, method: Method) -> Result<String, SdkError> {
        let inner = self.inner();
        let (user, device) = Self::session_ids(&inner)?;
        if !inner.grids.iter().any(|g| g.code == grid) {
            return Err(SdkError::invalid(format!(
                "grid {grid} is not one of your grids"
            )));
        }
        let id = schema::new_id();
        let patrol = schema::NewPatrol {
            id: id.clone(),
            grid: grid.to_string(),
            inspector: user,
            device,
            method: method.schema(),
            started_at_ms: self.clock.now_ms(),
        };
        self.change_one(inner, &id, Some(DocKind::Patrol), |tx| {
            schema::create_patrol(tx, &patrol)
        })?;
        Ok(id)
    }

    /// Adds a GPS fix to a recording patrol, durably.
    pub fn add_fix(&self, patrol: &str, fix: FixInput) -> Result<(), SdkError> {
        if !(-180.0..=180.0).contains(&fix.lon) || !(-90.0..=90.0).contains(&fix.lat) {
            return Err(SdkError::invalid(format!(
                "({}, {}) is not a coordinate",
                fix.lon, fix.lat
            )));
        }
        let fix = schema::Fix {
            at_ms: fix.at_ms,
            lon: fix.lon,
            lat: fix.lat,
            datum: fix.datum.schema(),
            accuracy_m: fix.accuracy_m,
            source: FixSource::Gnss,
            mock: fix.mock,
        };
        self.edit_recording(patrol, |tx| schema::add_fixes(tx, &[fix]))
    }

    /// Adds a note to a recording patrol.
    pub fn add_note(&self, patrol: &str, text: &str) -> Result<(), SdkError> {
        if text.trim().is_empty() {
            return Err(SdkError::invalid("a note needs text"));
        }
        let note = schema::Note {
            at_ms: self.clock.now_ms(),
            text: text.to_string(),
        };
        self.edit_recording(patrol, |tx| schema::add_note(tx, &note))
    }

    fn edit_recording(
        &self,
        patrol: &str,
        edit: impl FnOnce(
            &mut automerge::transaction::Transaction<'_>,
        ) -> Result<(), schema::SchemaError>,
    ) -> Result<(), SdkError> {
        let inner = self.inner();
        Self::recording(&inner, patrol)?;
        self.change_one(inner, patrol, None, edit)
    }

    /// Attaches a photo to a recording patrol, by the path of the file the camera wrote. The
    /// photo is copied into the SDK's photo directory (downscaled first if the app asked, EXIF
    /// kept) and queued for upload; the patrol records its SHA-256, time, the position of the
    /// patrol's last fix and the caption. Returns the SHA-256 (hex).
    pub fn attach_photo(
        &self,
        patrol: &str,
        path: &std::path::Path,
        caption: &str,
    ) -> Result<String, SdkError> {
        {
            let inner = self.inner();
            Self::recording(&inner, patrol)?;
        }
        let policy = self.inner().photo_policy;
        let kept = crate::photos::keep(&self.photo_options, policy.as_ref(), path)?;
        let inner = self.inner();
        Self::recording(&inner, patrol)?;
        let position = Self::patrol_view(&inner, patrol)?
            .track
            .last()
            .map(|fix| (fix.lon, fix.lat));
        let photo = schema::PhotoRef {
            sha256: kept.sha256.clone(),
            taken_at_ms: self.clock.now_ms(),
            position,
            caption: caption.to_string(),
        };
        let queued = Write::Meta {
            key: format!("{META_PHOTO_PREFIX}{}", kept.sha256),
            value: store::encode(&crate::photos::QueuedPhoto::new(kept, patrol)),
        };
        let mut inner = inner;
        let mut batch = Batch(vec![queued]);
        self.change(
            &mut inner,
            patrol,
            None,
            |tx| schema::add_photo(tx, &photo),
            &mut batch,
        )?;
        self.commit(&mut inner, batch)?;
        drop(inner);
        self.notify(&[patrol.to_string()]);
        Ok(photo.sha256)
    }

    /// Records a problem found on a recording patrol. Returns the problem's id.
    pub fn record_problem(
        &self,
        patrol: &str,
        problem: NewProblemInput,
    ) -> Result<String, SdkError> {
        if problem.category.trim().is_empty() {
            return Err(SdkError::invalid("a problem needs a category"));
        }
        let mut inner = self.inner();
        let (user, device) = Self::session_ids(&inner)?;
        let identity = Self::recording(&inner, patrol)?;
        let id = schema::new_id();
        let new = schema::NewProblem {
            id: id.clone(),
            grid: identity.grid.clone(),
            inspector: user,
            device,
            patrol: patrol.to_string(),
            category: problem.category,
            description: problem.description,
            position: (problem.lon, problem.lat, problem.datum.schema()),
            disposition: match problem.disposition {
                ProblemDisposition::StoppedOnSite => schema::Disposition::StoppedOnSite,
                ProblemDisposition::Escalated => schema::Disposition::Escalated,
            },
            found_at_ms: self.clock.now_ms(),
        };
        // The problem and its mention in the patrol are stored together or not at all.
        let mut batch = Batch::default();
        self.change(
            &mut inner,
            &id,
            Some(DocKind::Problem),
            |tx| schema::create_problem(tx, &new),
            &mut batch,
        )?;
        self.change(
            &mut inner,
            patrol,
            None,
            |tx| schema::add_problem_ref(tx, &id),
            &mut batch,
        )?;
        self.commit(&mut inner, batch)?;
        drop(inner);
        self.notify(&[id.clone(), patrol.to_string()]);
        Ok(id)
    }

    /// Ends and submits a patrol: it can no longer change, and goes to the supervisor.
    pub fn submit(&self, patrol: &str) -> Result<(), SdkError> {
        let now = self.clock.now_ms();
        self.edit_recording(patrol, |tx| schema::submit(tx, now))
    }

    /// A supervisor's verdict on a patrol this device received (a leader's or supervisor's
    /// tablet): approved, or returned with a comment. The server accepts it only from a
    /// supervisor of a grid above the patrol's.
    pub fn review_patrol(
        &self,
        patrol: &str,
        approved: bool,
        comment: &str,
    ) -> Result<(), SdkError> {
        if !approved && comment.trim().is_empty() {
            return Err(SdkError::invalid("a returned patrol needs a comment"));
        }
        let inner = self.inner();
        let (user, _) = Self::session_ids(&inner)?;
        Self::patrol_view(&inner, patrol)?;
        let review = schema::Review {
            state: if approved {
                ReviewState::Accepted
            } else {
                ReviewState::Returned
            },
            comment: comment.to_string(),
            reviewer: user,
            at_ms: self.clock.now_ms(),
        };
        self.change_one(inner, patrol, None, |tx| schema::set_review(tx, &review))
    }

    /// Every patrol on the phone, newest first, with where it stands.
    pub fn patrols(&self) -> Vec<PatrolSummary> {
        let inner = self.inner();
        let mut list: Vec<PatrolSummary> = inner
            .protocol
            .docs
            .iter()
            .filter(|(_, state)| state.kind == DocKind::Patrol)
            .filter_map(|(id, _)| Self::summary(&inner, id).ok())
            .collect();
        list.sort_by_key(|p| std::cmp::Reverse(p.started_at_ms));
        list
    }

    /// One patrol.
    pub fn patrol(&self, id: &str) -> Result<PatrolSummary, SdkError> {
        Self::summary(&self.inner(), id)
    }

    fn summary(inner: &Inner, id: &str) -> Result<PatrolSummary, SdkError> {
        let view = Self::patrol_view(inner, id)?;
        let doc = &inner.docs[id];
        let state = &inner.protocol.docs[id];
        let local = inner.local.get(id).cloned().unwrap_or_default();
        let review = view.review.as_ref().map(|r| ReviewInfo {
            approved: r.state == ReviewState::Accepted,
            comment: r.comment.clone(),
            at_ms: r.at_ms,
        });
        // Durable: nothing of ours after the receipt. Usually the receipt names our heads, which
        // says so at once; otherwise look at the changes after it (Automerge rebuilds those).
        let durable = !state.acked.is_empty()
            && (doc.get_heads() == state.acked
                || doc
                    .get_changes(&state.acked)
                    .iter()
                    .all(|c| Some(c.actor_id()) != inner.protocol.actor.as_ref()));
        let sync = if let Some((rejection, _)) = &state.rejected {
            SyncState::Rejected {
                code: rejection.code.clone(),
                message: rejection.message.clone(),
            }
        } else if let Some(review) = review.as_ref().filter(|r| durable || !r.approved) {
            if review.approved {
                SyncState::Reviewed
            } else {
                SyncState::Returned {
                    comment: review.comment.clone(),
                }
            }
        } else if durable {
            SyncState::Durable
        } else if local.sent {
            SyncState::Sent
        } else {
            SyncState::LocalOnly
        };
        Ok(PatrolSummary {
            id: id.to_string(),
            grid: view.identity.grid.clone(),
            method: match view.method {
                schema::Method::Routine => Method::Routine,
                schema::Method::Announced => Method::Announced,
                schema::Method::Unannounced => Method::Unannounced,
            },
            started_at_ms: view.started_at_ms,
            ended_at_ms: view.ended_at_ms,
            submitted: view.status == PatrolStatus::Submitted,
            fix_count: view.track.len() as u32,
            note_count: view.notes.len() as u32,
            photo_count: view.photos.len() as u32,
            problem_count: view.problems.len() as u32,
            review,
            sync,
        })
    }

    /// Applies what a sync brought back, durably and at once: received changes, receipts, the
    /// cursor, the clock skew. Returns the ids of the documents that changed.
    pub(crate) fn absorb(
        &self,
        request: &sync_protocol::wire::SyncRequest,
        response: &sync_protocol::wire::SyncResponse,
        skew: Skew,
    ) -> Result<Vec<Event>, SdkError> {
        let mut inner = self.inner();
        let before: HashMap<String, Vec<automerge::ChangeHash>> = response
            .updates
            .iter()
            .map(|u| {
                let heads = inner
                    .docs
                    .get(&u.id)
                    .map(|d| d.get_heads())
                    .unwrap_or_default();
                (u.id.clone(), heads)
            })
            .collect();
        let Inner { protocol, docs, .. } = &mut *inner;
        let events = protocol
            .apply(request, response, docs)
            .map_err(|e| SdkError::Protocol {
                message: e.to_string(),
            })?;
        let mut batch = Batch::default();
        for update in &response.updates {
            let Some(doc) = inner.docs.get(&update.id) else {
                continue;
            };
            // What arrived (and applied) is stored as one chunk: the changes after our heads.
            let kind = update.kind.as_str().to_string();
            let known = before.get(&update.id).cloned().unwrap_or_default();
            let fresh = doc.save_after(&known);
            if !fresh.is_empty() {
                batch.push(Write::Append {
                    id: update.id.clone(),
                    kind,
                    chunk: fresh,
                });
                *inner.chunks.entry(update.id.clone()).or_default() += 1;
            }
        }
        let ids: Vec<String> = request
            .docs
            .iter()
            .map(|d| d.id.clone())
            .chain(response.updates.iter().map(|u| u.id.clone()))
            .collect();
        for id in &ids {
            let Some(state) = inner.protocol.docs.get(id).cloned() else {
                continue;
            };
            // (`sent` was stored by `mark_sent` before the request left.)
            let local = inner.local.entry(id.clone()).or_default();
            local.update_from(&state);
            let encoded = store::encode(local);
            batch.push(Write::DocState {
                id: id.clone(),
                state: encoded,
            });
        }
        inner.skew = Some(skew);
        batch.push(Write::Meta {
            key: META_CURSOR.into(),
            value: store::encode(&inner.protocol.cursor),
        });
        batch.push(Write::Meta {
            key: META_VERIFY.into(),
            value: store::encode(&inner.protocol.syncs_since_verify),
        });
        batch.push(Write::Meta {
            key: META_SKEW.into(),
            value: store::encode(&skew),
        });
        self.commit(&mut inner, batch)?;
        // Durable documents with many small chunks are saved whole (one chunk) again.
        let durable: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Durable { id } => Some(id.clone()),
                _ => None,
            })
            .filter(|id| inner.chunks.get(id).copied().unwrap_or(0) > COMPACT_AFTER)
            .collect();
        for id in durable {
            if let Some(doc) = inner.docs.get(&id) {
                let saved = doc.save();
                self.commit(
                    &mut inner,
                    Batch(vec![Write::Replace {
                        id: id.clone(),
                        chunk: saved,
                    }]),
                )?;
                inner.chunks.insert(id, 1);
            }
        }
        Ok(events)
    }

    /// Marks the documents of a request as sent, before it goes out.
    pub(crate) fn mark_sent(&self, ids: &[String]) -> Result<(), SdkError> {
        let mut inner = self.inner();
        let mut batch = Batch::default();
        for id in ids {
            let Some(local) = inner.local.get_mut(id) else {
                continue;
            };
            if local.sent {
                continue;
            }
            local.sent = true;
            let encoded = store::encode(local);
            batch.push(Write::DocState {
                id: id.clone(),
                state: encoded,
            });
        }
        if batch.0.is_empty() {
            return Ok(());
        }
        self.commit(&mut inner, batch)
    }
}
