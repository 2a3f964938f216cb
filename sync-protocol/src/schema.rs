//! The Automerge documents: one per patrol (巡查记录) and one per problem (问题).
//!
//! Every document is a map at its root with `schema`, `kind`, `id`, `grid`, `inspector` and
//! `device` (its identity, written once, by its first change) and a body. The README documents every
//! field; this module writes and reads them so that no caller touches raw Automerge.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

/// Version of the document layout; every document carries it as `schema`.
pub const SCHEMA_VERSION: i64 = 1;

/// Root keys.
pub mod field {
    pub const SCHEMA: &str = "schema";
    pub const KIND: &str = "kind";
    pub const ID: &str = "id";
    pub const GRID: &str = "grid";
    pub const INSPECTOR: &str = "inspector";
    pub const DEVICE: &str = "device";
    // patrol body
    pub const METHOD: &str = "method";
    pub const STARTED_AT: &str = "started_at";
    pub const ENDED_AT: &str = "ended_at";
    pub const STATUS: &str = "status";
    pub const TRACK: &str = "track";
    pub const NOTES: &str = "notes";
    pub const PHOTOS: &str = "photos";
    pub const PROBLEMS: &str = "problems";
    // written by supervisors only
    pub const REVIEW: &str = "review";
    // problem body
    pub const PATROL: &str = "patrol";
    pub const CATEGORY: &str = "category";
    pub const DESCRIPTION: &str = "description";
    pub const POSITION: &str = "position";
    pub const DISPOSITION: &str = "disposition";
    pub const FOUND_AT: &str = "found_at";
}

/// The identity of a document: written by its first change, never changed afterwards.
pub const IDENTITY_FIELDS: [&str; 6] = [
    field::SCHEMA,
    field::KIND,
    field::ID,
    field::GRID,
    field::INSPECTOR,
    field::DEVICE,
];

/// What kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// 巡查记录
    Patrol,
    /// 问题
    Problem,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Patrol => "patrol",
            DocKind::Problem => "problem",
        }
    }
    pub fn parse(text: &str) -> Option<DocKind> {
        match text {
            "patrol" => Some(DocKind::Patrol),
            "problem" => Some(DocKind::Problem),
            _ => None,
        }
    }
    /// Root keys the document's author (the inspector) may write after creation.
    pub fn body_fields(self) -> &'static [&'static str] {
        match self {
            DocKind::Patrol => &[
                field::METHOD,
                field::STARTED_AT,
                field::ENDED_AT,
                field::STATUS,
                field::TRACK,
                field::NOTES,
                field::PHOTOS,
                field::PROBLEMS,
            ],
            DocKind::Problem => &[
                field::PATROL,
                field::CATEGORY,
                field::DESCRIPTION,
                field::POSITION,
                field::PHOTOS,
                field::DISPOSITION,
                field::FOUND_AT,
            ],
        }
    }
    /// Root keys only a supervisor of an ancestor grid may write.
    pub fn review_fields(self) -> &'static [&'static str] {
        match self {
            DocKind::Patrol => &[field::REVIEW],
            DocKind::Problem => &[],
        }
    }
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(
    /// How the patrol was done (榕江: "工作方法采取'巡查、明查、暗查'").
    Method {
        /// 巡查: a routine patrol.
        Routine = "routine",
        /// 明查: an announced inspection.
        Announced = "announced",
        /// 暗查: an unannounced (covert) inspection.
        Unannounced = "unannounced",
    }
);

text_enum!(
    PatrolStatus {
        /// Being recorded on the phone.
        Recording = "recording",
        /// Ended and submitted by the inspector.
        Submitted = "submitted",
    }
);

text_enum!(
    ReviewState {
        /// 通过: counted as reviewed.
        Accepted = "accepted",
        /// 退回: sent back with a comment.
        Returned = "returned",
    }
);

text_enum!(
    /// What the inspector did on site (problem documents).
    Disposition {
        /// 制止: stopped on site.
        StoppedOnSite = "stopped_on_site",
        /// 上报: reported up.
        Escalated = "escalated",
    }
);

/// Coordinate system of a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datum {
    /// Raw GNSS, equal to CGCS2000 within a metre.
    Wgs84 = 0,
    /// 国测局 GCJ-02, from most Chinese location SDKs and base maps.
    Gcj02 = 1,
    /// Baidu BD-09.
    Bd09 = 2,
}

/// Where a fix came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixSource {
    Gnss = 0,
    Network = 1,
    Fused = 2,
    Other = 3,
}

/// One GPS fix of a patrol's track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Device clock, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub lon: f64,
    pub lat: f64,
    pub datum: Datum,
    /// Horizontal accuracy in metres (68 %), when the platform gives one.
    pub accuracy_m: Option<f32>,
    pub source: FixSource,
    /// The platform said the location was mocked (Android `isMock`).
    pub mock: bool,
}

/// Length of a fix in the track list: see the README's byte layout.
pub const FIX_BYTES: usize = 16;
const FIX_LAYOUT_V1: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("field {0:?} is missing or has the wrong type")]
    Field(&'static str),
    #[error("document kind is {found:?}, expected {expected:?}")]
    Kind {
        expected: &'static str,
        found: String,
    },
    #[error("schema version {0} is newer than this software understands ({SCHEMA_VERSION})")]
    Version(i64),
    #[error("a track fix is malformed: {0}")]
    Fix(&'static str),
    #[error("a value is out of range: {0}")]
    Range(&'static str),
    #[error("automerge: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for SchemaError {
    fn from(error: automerge::AutomergeError) -> Self {
        SchemaError::Automerge(error.to_string())
    }
}

impl Fix {
    /// Packs the fix relative to the patrol's start (16 bytes, little-endian).
    pub fn encode(&self, started_at_ms: i64) -> Result<[u8; FIX_BYTES], SchemaError> {
        let offset = i32::try_from(self.at_ms - started_at_ms)
            .map_err(|_| SchemaError::Range("a fix more than 24 days from the patrol's start"))?;
        if !(-180.0..=180.0).contains(&self.lon) || !(-90.0..=90.0).contains(&self.lat) {
            return Err(SchemaError::Range("lon/lat outside -180..180 / -90..90"));
        }
        let e7 = |v: f64| (v * 1e7).round() as i32;
        let accuracy = match self.accuracy_m {
            Some(a) if a.is_finite() && a >= 0.0 => ((a * 10.0).round() as u32).min(0xFFFE) as u16,
            _ => 0xFFFF,
        };
        let flags = (self.datum as u8) | (u8::from(self.mock) << 2) | ((self.source as u8) << 3);
        let mut out = [0u8; FIX_BYTES];
        out[0] = FIX_LAYOUT_V1;
        out[1..5].copy_from_slice(&offset.to_le_bytes());
        out[5..9].copy_from_slice(&e7(self.lon).to_le_bytes());
        out[9..13].copy_from_slice(&e7(self.lat).to_le_bytes());
        out[13..15].copy_from_slice(&accuracy.to_le_bytes());
        out[15] = flags;
        Ok(out)
    }

    pub fn decode(bytes: &[u8], started_at_ms: i64) -> Result<Fix, SchemaError> {
        if bytes.len() != FIX_BYTES {
            return Err(SchemaError::Fix("a fix is 16 bytes"));
        }
        if bytes[0] != FIX_LAYOUT_V1 {
            return Err(SchemaError::Fix("unknown fix layout"));
        }
        let i32_at =
            |i: usize| i32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let accuracy = u16::from_le_bytes([bytes[13], bytes[14]]);
        let flags = bytes[15];
        let datum = match flags & 0b11 {
            0 => Datum::Wgs84,
            1 => Datum::Gcj02,
            2 => Datum::Bd09,
            _ => return Err(SchemaError::Fix("unknown datum")),
        };
        let source = match (flags >> 3) & 0b111 {
            0 => FixSource::Gnss,
            1 => FixSource::Network,
            2 => FixSource::Fused,
            3 => FixSource::Other,
            _ => return Err(SchemaError::Fix("unknown source")),
        };
        if flags >> 6 != 0 {
            return Err(SchemaError::Fix("reserved flag bits are set"));
        }
        let lon = f64::from(i32_at(5)) / 1e7;
        let lat = f64::from(i32_at(9)) / 1e7;
        if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
            return Err(SchemaError::Fix("lon/lat out of range"));
        }
        Ok(Fix {
            at_ms: started_at_ms + i64::from(i32_at(1)),
            lon,
            lat,
            datum,
            accuracy_m: (accuracy != 0xFFFF).then(|| f32::from(accuracy) / 10.0),
            source,
            mock: flags & 0b100 != 0,
        })
    }
}

/// A note typed during a patrol.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub at_ms: i64,
    pub text: String,
}

/// A photo attached to a patrol; the bytes travel separately, addressed by their SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoRef {
    /// SHA-256 of the photo's bytes, 64 lower-case hex digits.
    pub sha256: String,
    pub taken_at_ms: i64,
    /// Where the phone was, in the datum of the track.
    pub position: Option<(f64, f64)>,
    pub caption: String,
}

/// A supervisor's verdict on a patrol.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub state: ReviewState,
    pub comment: String,
    /// The reviewer's user id.
    pub reviewer: i64,
    pub at_ms: i64,
}

/// What a new patrol document starts with.
#[derive(Debug, Clone)]
pub struct NewPatrol {
    /// UUIDv7, made on the phone.
    pub id: String,
    /// The grid's code (e.g. a village's 12-digit 统计用区划代码).
    pub grid: String,
    pub inspector: i64,
    pub device: i64,
    pub method: Method,
    pub started_at_ms: i64,
}

fn get_scalar(doc: &impl ReadDoc, obj: &ObjId, key: &'static str) -> Option<ScalarValue> {
    match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => Some(s.into_owned()),
        _ => None,
    }
}

fn get_str(doc: &impl ReadDoc, obj: &ObjId, key: &'static str) -> Result<String, SchemaError> {
    match get_scalar(doc, obj, key) {
        Some(ScalarValue::Str(s)) => Ok(s.to_string()),
        _ => Err(SchemaError::Field(key)),
    }
}

fn get_int(doc: &impl ReadDoc, obj: &ObjId, key: &'static str) -> Result<i64, SchemaError> {
    match get_scalar(doc, obj, key) {
        Some(ScalarValue::Int(i)) => Ok(i),
        Some(ScalarValue::Uint(u)) => i64::try_from(u).map_err(|_| SchemaError::Field(key)),
        Some(ScalarValue::Timestamp(t)) => Ok(t),
        _ => Err(SchemaError::Field(key)),
    }
}

fn get_f64(doc: &impl ReadDoc, obj: &ObjId, key: &'static str) -> Option<f64> {
    match get_scalar(doc, obj, key) {
        Some(ScalarValue::F64(f)) => Some(f),
        Some(ScalarValue::Int(i)) => Some(i as f64),
        _ => None,
    }
}

fn get_obj(doc: &impl ReadDoc, key: &'static str) -> Result<ObjId, SchemaError> {
    match doc.get(ROOT, key) {
        Ok(Some((Value::Object(_), id))) => Ok(id),
        _ => Err(SchemaError::Field(key)),
    }
}

fn write_identity(
    doc: &mut impl Doc,
    kind: DocKind,
    id: &str,
    grid: &str,
    inspector: i64,
    device: i64,
) -> Result<(), SchemaError> {
    doc.put(ROOT, field::SCHEMA, SCHEMA_VERSION)?;
    doc.put(ROOT, field::KIND, kind.as_str())?;
    doc.put(ROOT, field::ID, id)?;
    doc.put(ROOT, field::GRID, grid)?;
    doc.put(ROOT, field::INSPECTOR, inspector)?;
    doc.put(ROOT, field::DEVICE, device)?;
    Ok(())
}

/// A document being written: an [`AutoCommit`], where each schema function makes one change, or
/// an open [`automerge::transaction::Transaction`] on an [`automerge::Automerge`] (what the SDK
/// keeps), which its caller commits.
pub trait Doc: Transactable + ReadDoc {
    /// Ends the schema function's change.
    fn finish(&mut self);
}

impl Doc for AutoCommit {
    fn finish(&mut self) {
        self.commit();
    }
}

impl Doc for automerge::transaction::Transaction<'_> {
    fn finish(&mut self) {}
}

/// Writes a new patrol as one change (the document must be empty).
pub fn create_patrol(doc: &mut impl Doc, patrol: &NewPatrol) -> Result<(), SchemaError> {
    write_identity(
        doc,
        DocKind::Patrol,
        &patrol.id,
        &patrol.grid,
        patrol.inspector,
        patrol.device,
    )?;
    doc.put(ROOT, field::METHOD, patrol.method.as_str())?;
    doc.put(
        ROOT,
        field::STARTED_AT,
        ScalarValue::Timestamp(patrol.started_at_ms),
    )?;
    doc.put(ROOT, field::STATUS, PatrolStatus::Recording.as_str())?;
    doc.put_object(ROOT, field::TRACK, ObjType::List)?;
    doc.put_object(ROOT, field::NOTES, ObjType::List)?;
    doc.put_object(ROOT, field::PHOTOS, ObjType::List)?;
    doc.put_object(ROOT, field::PROBLEMS, ObjType::List)?;
    doc.finish();
    Ok(())
}

/// Appends fixes to the track as one change.
pub fn add_fixes(doc: &mut impl Doc, fixes: &[Fix]) -> Result<(), SchemaError> {
    let started = get_int(doc, &ROOT, field::STARTED_AT)?;
    let track = get_obj(doc, field::TRACK)?;
    for fix in fixes {
        let len = doc.length(&track);
        doc.insert(
            &track,
            len,
            ScalarValue::Bytes(fix.encode(started)?.to_vec()),
        )?;
    }
    doc.finish();
    Ok(())
}

pub fn add_note(doc: &mut impl Doc, note: &Note) -> Result<(), SchemaError> {
    let notes = get_obj(doc, field::NOTES)?;
    let len = doc.length(&notes);
    let item = doc.insert_object(&notes, len, ObjType::Map)?;
    doc.put(&item, "at", ScalarValue::Timestamp(note.at_ms))?;
    doc.put(&item, "text", note.text.as_str())?;
    doc.finish();
    Ok(())
}

pub fn add_photo(doc: &mut impl Doc, photo: &PhotoRef) -> Result<(), SchemaError> {
    let photos = get_obj(doc, field::PHOTOS)?;
    let len = doc.length(&photos);
    let item = doc.insert_object(&photos, len, ObjType::Map)?;
    doc.put(&item, "sha256", photo.sha256.as_str())?;
    doc.put(&item, "taken_at", ScalarValue::Timestamp(photo.taken_at_ms))?;
    if let Some((lon, lat)) = photo.position {
        doc.put(&item, "lon", lon)?;
        doc.put(&item, "lat", lat)?;
    }
    doc.put(&item, "caption", photo.caption.as_str())?;
    doc.finish();
    Ok(())
}

/// Records that a problem document was found on this patrol.
pub fn add_problem_ref(doc: &mut impl Doc, problem_id: &str) -> Result<(), SchemaError> {
    let problems = get_obj(doc, field::PROBLEMS)?;
    let len = doc.length(&problems);
    doc.insert(&problems, len, problem_id)?;
    doc.finish();
    Ok(())
}

/// Ends and submits the patrol.
pub fn submit(doc: &mut impl Doc, ended_at_ms: i64) -> Result<(), SchemaError> {
    doc.put(ROOT, field::ENDED_AT, ScalarValue::Timestamp(ended_at_ms))?;
    doc.put(ROOT, field::STATUS, PatrolStatus::Submitted.as_str())?;
    doc.finish();
    Ok(())
}

/// A supervisor's verdict, replacing any earlier one.
pub fn set_review(doc: &mut impl Doc, review: &Review) -> Result<(), SchemaError> {
    let map = doc.put_object(ROOT, field::REVIEW, ObjType::Map)?;
    doc.put(&map, "state", review.state.as_str())?;
    doc.put(&map, "comment", review.comment.as_str())?;
    doc.put(&map, "reviewer", review.reviewer)?;
    doc.put(&map, "at", ScalarValue::Timestamp(review.at_ms))?;
    doc.finish();
    Ok(())
}

/// The identity every document carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: DocKind,
    pub id: String,
    pub grid: String,
    pub inspector: i64,
    pub device: i64,
}

pub fn read_identity(doc: &impl ReadDoc) -> Result<Identity, SchemaError> {
    let version = get_int(doc, &ROOT, field::SCHEMA)?;
    if version > SCHEMA_VERSION || version < 1 {
        return Err(SchemaError::Version(version));
    }
    let kind_text = get_str(doc, &ROOT, field::KIND)?;
    let kind = DocKind::parse(&kind_text).ok_or(SchemaError::Field(field::KIND))?;
    Ok(Identity {
        kind,
        id: get_str(doc, &ROOT, field::ID)?,
        grid: get_str(doc, &ROOT, field::GRID)?,
        inspector: get_int(doc, &ROOT, field::INSPECTOR)?,
        device: get_int(doc, &ROOT, field::DEVICE)?,
    })
}

/// A patrol's status alone, without reading its track (the SDK asks on every recorded fix).
pub fn read_status(doc: &impl ReadDoc) -> Result<PatrolStatus, SchemaError> {
    let text = get_str(doc, &ROOT, field::STATUS)?;
    PatrolStatus::parse(&text).ok_or(SchemaError::Field(field::STATUS))
}

/// A patrol as the server projects it and the SDK shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PatrolView {
    pub identity: Identity,
    pub method: Method,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub status: PatrolStatus,
    pub track: Vec<Fix>,
    pub notes: Vec<Note>,
    pub photos: Vec<PhotoRef>,
    pub problems: Vec<String>,
    pub review: Option<Review>,
}

/// Every element of a list, in one pass (indexing element by element costs a walk each).
fn list_items(doc: &impl ReadDoc, list: &ObjId) -> Vec<(Value<'static>, ObjId)> {
    doc.list_range(list, ..)
        .map(|item| {
            let id = item.id();
            (item.value.into_value(), id)
        })
        .collect()
}

/// Reads and checks a patrol document; any field of the wrong type is an error.
pub fn read_patrol(doc: &impl ReadDoc) -> Result<PatrolView, SchemaError> {
    let identity = read_identity(doc)?;
    if identity.kind != DocKind::Patrol {
        return Err(SchemaError::Kind {
            expected: "patrol",
            found: identity.kind.as_str().into(),
        });
    }
    let method = Method::parse(&get_str(doc, &ROOT, field::METHOD)?)
        .ok_or(SchemaError::Field(field::METHOD))?;
    let status = PatrolStatus::parse(&get_str(doc, &ROOT, field::STATUS)?)
        .ok_or(SchemaError::Field(field::STATUS))?;
    let started_at_ms = get_int(doc, &ROOT, field::STARTED_AT)?;
    let ended_at_ms = get_int(doc, &ROOT, field::ENDED_AT).ok();
    let mut track = Vec::new();
    for (value, _) in list_items(doc, &get_obj(doc, field::TRACK)?) {
        match value {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Bytes(b) => track.push(Fix::decode(b, started_at_ms)?),
                _ => return Err(SchemaError::Fix("a fix must be bytes")),
            },
            _ => return Err(SchemaError::Fix("a fix must be bytes")),
        }
    }
    let mut notes = Vec::new();
    for (_, id) in list_items(doc, &get_obj(doc, field::NOTES)?) {
        notes.push(Note {
            at_ms: get_int(doc, &id, "at")?,
            text: get_str(doc, &id, "text")?,
        });
    }
    let mut photos = Vec::new();
    for (_, id) in list_items(doc, &get_obj(doc, field::PHOTOS)?) {
        let sha256 = get_str(doc, &id, "sha256")?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(SchemaError::Field("photos[].sha256"));
        }
        photos.push(PhotoRef {
            sha256,
            taken_at_ms: get_int(doc, &id, "taken_at")?,
            position: get_f64(doc, &id, "lon").zip(get_f64(doc, &id, "lat")),
            caption: get_str(doc, &id, "caption").unwrap_or_default(),
        });
    }
    let mut problems = Vec::new();
    for (value, _) in list_items(doc, &get_obj(doc, field::PROBLEMS)?) {
        match value {
            Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Str(t) => problems.push(t.to_string()),
                _ => return Err(SchemaError::Field(field::PROBLEMS)),
            },
            _ => return Err(SchemaError::Field(field::PROBLEMS)),
        }
    }
    let review = match doc.get(ROOT, field::REVIEW) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(Review {
            state: ReviewState::parse(&get_str(doc, &id, "state")?)
                .ok_or(SchemaError::Field("review.state"))?,
            comment: get_str(doc, &id, "comment").unwrap_or_default(),
            reviewer: get_int(doc, &id, "reviewer")?,
            at_ms: get_int(doc, &id, "at")?,
        }),
        Ok(None) => None,
        _ => return Err(SchemaError::Field(field::REVIEW)),
    };
    Ok(PatrolView {
        identity,
        method,
        started_at_ms,
        ended_at_ms,
        status,
        track,
        notes,
        photos,
        problems,
        review,
    })
}

/// What a new problem document starts with.
#[derive(Debug, Clone)]
pub struct NewProblem {
    pub id: String,
    pub grid: String,
    pub inspector: i64,
    pub device: i64,
    /// The patrol it was found on.
    pub patrol: String,
    /// e.g. 大气污染 / 水污染 / 固体废物 …, as the jurisdiction lists them.
    pub category: String,
    pub description: String,
    /// lon, lat and datum where it was found.
    pub position: (f64, f64, Datum),
    pub disposition: Disposition,
    pub found_at_ms: i64,
}

pub fn create_problem(doc: &mut impl Doc, problem: &NewProblem) -> Result<(), SchemaError> {
    write_identity(
        doc,
        DocKind::Problem,
        &problem.id,
        &problem.grid,
        problem.inspector,
        problem.device,
    )?;
    doc.put(ROOT, field::PATROL, problem.patrol.as_str())?;
    doc.put(ROOT, field::CATEGORY, problem.category.as_str())?;
    doc.put(ROOT, field::DESCRIPTION, problem.description.as_str())?;
    let position = doc.put_object(ROOT, field::POSITION, ObjType::Map)?;
    doc.put(&position, "lon", problem.position.0)?;
    doc.put(&position, "lat", problem.position.1)?;
    doc.put(&position, "datum", problem.position.2 as i64)?;
    doc.put_object(ROOT, field::PHOTOS, ObjType::List)?;
    doc.put(ROOT, field::DISPOSITION, problem.disposition.as_str())?;
    doc.put(
        ROOT,
        field::FOUND_AT,
        ScalarValue::Timestamp(problem.found_at_ms),
    )?;
    doc.finish();
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProblemView {
    pub identity: Identity,
    pub patrol: String,
    pub category: String,
    pub description: String,
    pub lon: f64,
    pub lat: f64,
    pub disposition: Disposition,
    pub found_at_ms: i64,
}

pub fn read_problem(doc: &impl ReadDoc) -> Result<ProblemView, SchemaError> {
    let identity = read_identity(doc)?;
    if identity.kind != DocKind::Problem {
        return Err(SchemaError::Kind {
            expected: "problem",
            found: identity.kind.as_str().into(),
        });
    }
    let position = get_obj(doc, field::POSITION)?;
    Ok(ProblemView {
        identity,
        patrol: get_str(doc, &ROOT, field::PATROL)?,
        category: get_str(doc, &ROOT, field::CATEGORY)?,
        description: get_str(doc, &ROOT, field::DESCRIPTION)?,
        lon: get_f64(doc, &position, "lon").ok_or(SchemaError::Field("position.lon"))?,
        lat: get_f64(doc, &position, "lat").ok_or(SchemaError::Field("position.lat"))?,
        disposition: Disposition::parse(&get_str(doc, &ROOT, field::DISPOSITION)?)
            .ok_or(SchemaError::Field(field::DISPOSITION))?,
        found_at_ms: get_int(doc, &ROOT, field::FOUND_AT)?,
    })
}

/// A new document id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_patrol(fixes: usize, notes: usize, photos: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        let started = 1_795_000_000_000;
        create_patrol(
            &mut doc,
            &NewPatrol {
                id: new_id(),
                grid: "522632100001".into(),
                inspector: 7,
                device: 3,
                method: Method::Routine,
                started_at_ms: started,
            },
        )
        .expect("create");
        for i in 0..fixes {
            let t = i as f64;
            add_fixes(
                &mut doc,
                &[Fix {
                    at_ms: started + 10_000 * i as i64,
                    lon: 108.52 + 0.0001 * (t / 7.0).sin() + 0.00002 * t,
                    lat: 25.93 + 0.0001 * (t / 5.0).cos(),
                    datum: Datum::Gcj02,
                    accuracy_m: Some(4.0 + (i % 7) as f32),
                    source: FixSource::Fused,
                    mock: false,
                }],
            )
            .expect("fix");
        }
        for i in 0..notes {
            add_note(
                &mut doc,
                &Note {
                    at_ms: started + 60_000 * i as i64,
                    text: "河道边发现少量生活垃圾，已通知保洁员清理".into(),
                },
            )
            .expect("note");
        }
        for i in 0..photos {
            add_photo(
                &mut doc,
                &PhotoRef {
                    sha256: format!("{:064x}", i + 1),
                    taken_at_ms: started + 120_000,
                    position: Some((108.52, 25.93)),
                    caption: "垃圾堆放点".into(),
                },
            )
            .expect("photo");
        }
        submit(&mut doc, started + 45 * 60_000).expect("submit");
        doc
    }

    #[test]
    fn fixes_round_trip_through_16_bytes() {
        let fix = Fix {
            at_ms: 1_795_000_123_456,
            lon: 108.523_456_7,
            lat: -25.930_000_1,
            datum: Datum::Bd09,
            accuracy_m: Some(12.3),
            source: FixSource::Network,
            mock: true,
        };
        let bytes = fix.encode(1_795_000_000_000).expect("encode");
        let back = Fix::decode(&bytes, 1_795_000_000_000).expect("decode");
        assert_eq!(back.at_ms, fix.at_ms);
        assert!((back.lon - fix.lon).abs() < 1e-7 && (back.lat - fix.lat).abs() < 1e-7);
        assert_eq!(
            (back.datum, back.source, back.mock),
            (Datum::Bd09, FixSource::Network, true)
        );
        assert_eq!(back.accuracy_m, Some(12.3));
        let no_accuracy = Fix {
            accuracy_m: None,
            ..fix
        };
        let bytes = no_accuracy.encode(1_795_000_000_000).expect("encode");
        assert_eq!(
            Fix::decode(&bytes, 1_795_000_000_000)
                .expect("decode")
                .accuracy_m,
            None
        );
        let mut bad = bytes;
        bad[15] |= 0b1100_0000;
        assert!(Fix::decode(&bad, 0).is_err());
        assert!(Fix::decode(&bytes[..15], 0).is_err());
        assert!(Fix { lon: 200.0, ..fix }.encode(0).is_err());
    }

    #[test]
    fn a_patrol_reads_back_as_written() {
        let mut doc = sample_patrol(5, 2, 1);
        let mut review_doc = doc.fork();
        set_review(
            &mut review_doc,
            &Review {
                state: ReviewState::Returned,
                comment: "照片不清楚，请补拍".into(),
                reviewer: 2,
                at_ms: 1_795_100_000_000,
            },
        )
        .expect("review");
        doc.merge(&mut review_doc).expect("merge");
        let view = read_patrol(&doc).expect("read");
        assert_eq!(view.identity.grid, "522632100001");
        assert_eq!(view.track.len(), 5);
        assert_eq!(view.notes.len(), 2);
        assert_eq!(view.photos[0].sha256.len(), 64);
        assert_eq!(view.status, PatrolStatus::Submitted);
        assert_eq!(
            view.review.as_ref().map(|r| r.state),
            Some(ReviewState::Returned)
        );
        assert!(read_problem(&doc).is_err(), "a patrol is not a problem");
    }

    #[test]
    fn documents_stay_small() {
        // Issue 4: a 45-minute patrol with a fix every 10 s, 3 notes and 2 photos well under 16 KiB;
        // a 4-hour patrol under 64 KiB. Each fix is its own change, as the SDK records them.
        let mut short = sample_patrol(270, 3, 2);
        let short_len = short.save().len();
        assert!(
            short_len < 16 * 1024,
            "45-minute patrol saves to {short_len} bytes"
        );
        let mut long = sample_patrol(1440, 3, 2);
        let long_len = long.save().len();
        assert!(
            long_len < 64 * 1024,
            "4-hour patrol saves to {long_len} bytes"
        );
        eprintln!("saved sizes: 45 min {short_len} B, 4 h {long_len} B");
    }

    #[test]
    fn problems_read_back() {
        let mut doc = AutoCommit::new();
        create_problem(
            &mut doc,
            &NewProblem {
                id: new_id(),
                grid: "522632100001".into(),
                inspector: 7,
                device: 3,
                patrol: new_id(),
                category: "固体废物".into(),
                description: "河边倾倒建筑垃圾".into(),
                position: (108.52, 25.93, Datum::Gcj02),
                disposition: Disposition::Escalated,
                found_at_ms: 1_795_000_000_000,
            },
        )
        .expect("create");
        let view = read_problem(&doc).expect("read");
        assert_eq!(view.disposition, Disposition::Escalated);
        assert_eq!(view.category, "固体废物");
    }
}
