//! A labelled evaluation corpus for the fraud signals (巡查走形式, issue 23): honest patrols, the
//! honest hard cases that must keep counting, and every kind of fraud the signals are meant to
//! catch, each recorded through the real SDK on an enrolled phone whose clock the corpus sets,
//! synced to a real server, and scored against the server's verdicts.
//!
//! [`plan`] makes the patrols from a seed (the same seed, the same corpus); [`run`] records,
//! syncs and fetches the verdicts; [`score`] counts them per kind and measures, for each rule,
//! the quantity it thresholds on the honest patrol closest to firing it and on the fraud
//! closest to escaping it. The measures are the corpus's own, computed from what the phones
//! sent, the way `server/src/compliance/verdict.rs` and `replay.rs` describe their tests; the
//! verdicts are the server's.
//!
//! Patrols that copy an earlier one (replays, reused photos, the same route or view again) are
//! recorded and synced after all the others, so that the server received their originals first.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use gridpatrol_sdk::clock::Clock;
use gridpatrol_sdk::store::MemoryStore;
use gridpatrol_sdk::{Client, Datum, FixInput, Method, Options, PhotoOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::camera::{self, Exposure, Shot};
use crate::track::{self, TrackOptions};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// China time, minutes east of UTC.
const CHINA_MIN: i32 = 480;
/// The mean radius `geo::Haversine` uses (as `track.rs`).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// What a corpus patrol is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    // Honest.
    Walk,
    PoorAccuracyAtBorder,
    Gcj02,
    Bd09,
    Motorbike,
    Tunnel,
    ClockHoursOff,
    ClockHoursOffGnssFixes,
    UtcPhone,
    UtcPhoneNoZone,
    WeekBoundary,
    GpsGlitch,
    SameRouteAgain,
    SameViewAgain,
    // Fraud.
    Teleport,
    ImpossibleSpeed,
    PhotosWeekEarlier,
    PhotosHoursEarlier,
    ReplayExact,
    ReplayPartial,
    ReplayNoisy,
    PhotoReused,
    PhotoNearDuplicate,
    MockLocation,
    DeskPatrol,
}

impl Kind {
    pub const ALL: [Kind; 25] = [
        Kind::Walk,
        Kind::PoorAccuracyAtBorder,
        Kind::Gcj02,
        Kind::Bd09,
        Kind::Motorbike,
        Kind::Tunnel,
        Kind::ClockHoursOff,
        Kind::ClockHoursOffGnssFixes,
        Kind::UtcPhone,
        Kind::UtcPhoneNoZone,
        Kind::WeekBoundary,
        Kind::GpsGlitch,
        Kind::SameRouteAgain,
        Kind::SameViewAgain,
        Kind::Teleport,
        Kind::ImpossibleSpeed,
        Kind::PhotosWeekEarlier,
        Kind::PhotosHoursEarlier,
        Kind::ReplayExact,
        Kind::ReplayPartial,
        Kind::ReplayNoisy,
        Kind::PhotoReused,
        Kind::PhotoNearDuplicate,
        Kind::MockLocation,
        Kind::DeskPatrol,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Kind::Walk => "walk",
            Kind::PoorAccuracyAtBorder => "poor_accuracy_at_border",
            Kind::Gcj02 => "gcj02_phone",
            Kind::Bd09 => "bd09_phone",
            Kind::Motorbike => "motorbike",
            Kind::Tunnel => "tunnel",
            Kind::ClockHoursOff => "clock_hours_off",
            Kind::ClockHoursOffGnssFixes => "clock_hours_off_gnss_fixes",
            Kind::UtcPhone => "utc_phone",
            Kind::UtcPhoneNoZone => "utc_phone_no_zone",
            Kind::WeekBoundary => "week_boundary",
            Kind::GpsGlitch => "gps_glitch",
            Kind::SameRouteAgain => "same_route_again",
            Kind::SameViewAgain => "same_view_again",
            Kind::Teleport => "teleport",
            Kind::ImpossibleSpeed => "impossible_speed",
            Kind::PhotosWeekEarlier => "photos_week_earlier",
            Kind::PhotosHoursEarlier => "photos_hours_earlier",
            Kind::ReplayExact => "replay_exact",
            Kind::ReplayPartial => "replay_partial",
            Kind::ReplayNoisy => "replay_noisy",
            Kind::PhotoReused => "photo_reused",
            Kind::PhotoNearDuplicate => "photo_near_duplicate",
            Kind::MockLocation => "mock_location",
            Kind::DeskPatrol => "desk_patrol",
        }
    }

    /// What the patrol is, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Walk => "a walk through the village, WGS-84, 5 m fixes",
            Kind::PoorAccuracyAtBorder => {
                "30–80 m fixes (poor ones 3–6× that), along the grid border and across it"
            }
            Kind::Gcj02 => "fixes in GCJ-02 (高德/腾讯 SDK)",
            Kind::Bd09 => "fixes in BD-09 (百度 SDK)",
            Kind::Motorbike => "25–90 km/h, a fix every 5 s",
            Kind::Tunnel => "motorbike, 6–15 min without fixes",
            Kind::ClockHoursOff => "phone clock 1–9 h off; fixes, stamps and EXIF by that clock",
            Kind::ClockHoursOffGnssFixes => {
                "phone clock 1–9 h off; fixes stamped with GNSS time, EXIF by the phone's clock"
            }
            Kind::UtcPhone => "phone set to UTC; EXIF in UTC with its zone (+00:00)",
            Kind::UtcPhoneNoZone => "phone set to UTC; EXIF in UTC, no zone written",
            Kind::WeekBoundary => "starts Sunday 23:10–23:45 China time, ends in the next week",
            Kind::GpsGlitch => {
                "1–3 fixes 150–900 m off; half also a cell fix 1–3 km off (accuracy as far)"
            }
            Kind::SameRouteAgain => {
                "an earlier patrol's route walked again 3–8 % faster or slower, GPS error drifting"
            }
            Kind::SameViewAgain => "the same view as an earlier patrol's photo, shot again",
            Kind::Teleport => "spoofed walk; 1–3 fixes from the real place 3–25 km away",
            Kind::ImpossibleSpeed => "2–8 min at 150–290 km/h",
            Kind::PhotosWeekEarlier => "every photo taken 2–10 days before",
            Kind::PhotosHoursEarlier => "every photo taken 1–6 h before the first fix",
            Kind::ReplayExact => "an earlier patrol's fixes, shifted 3–14 days",
            Kind::ReplayPartial => "40–70 % of an earlier patrol's fixes, then a walk of its own",
            Kind::ReplayNoisy => "an earlier patrol's fixes with 2–5 m (σ) of noise added",
            Kind::PhotoReused => "an earlier patrol's photo file, beside a fresh photo",
            Kind::PhotoNearDuplicate => {
                "an earlier patrol's photo re-encoded (quality 60), EXIF set to the patrol"
            }
            Kind::MockLocation => "fixes flagged as mock locations",
            Kind::DeskPatrol => "the phone never moves (3–25 m fixes)",
        }
    }

    pub fn honest(self) -> bool {
        matches!(
            self,
            Kind::Walk
                | Kind::PoorAccuracyAtBorder
                | Kind::Gcj02
                | Kind::Bd09
                | Kind::Motorbike
                | Kind::Tunnel
                | Kind::ClockHoursOff
                | Kind::ClockHoursOffGnssFixes
                | Kind::UtcPhone
                | Kind::UtcPhoneNoZone
                | Kind::WeekBoundary
                | Kind::GpsGlitch
                | Kind::SameRouteAgain
                | Kind::SameViewAgain
        )
    }

    /// The signal meant to catch a fraud.
    pub fn signal(self) -> Option<&'static str> {
        Some(match self {
            Kind::Teleport => "teleport",
            Kind::ImpossibleSpeed => "impossible_speed",
            Kind::PhotosWeekEarlier | Kind::PhotosHoursEarlier => "no_photo_in_patrol",
            Kind::ReplayExact | Kind::ReplayPartial | Kind::ReplayNoisy => "replayed_track",
            Kind::PhotoReused => "photo_reused",
            Kind::PhotoNearDuplicate => "photo_near_duplicate",
            Kind::MockLocation => "mock_location",
            Kind::DeskPatrol => "desk_patrol",
            _ => return None,
        })
    }

    /// A fraud whose signal is hard by default: the goal is that it does not count. The others
    /// (a near-duplicate photo: soft, since an honest photo of the same view looks the same)
    /// are meant to be shown to the supervisor.
    pub fn hard(self) -> bool {
        !self.honest() && self != Kind::PhotoNearDuplicate
    }

    /// Made from an earlier patrol, so recorded after it reached the server.
    fn derived(self) -> bool {
        matches!(
            self,
            Kind::SameRouteAgain
                | Kind::SameViewAgain
                | Kind::ReplayExact
                | Kind::ReplayPartial
                | Kind::ReplayNoisy
                | Kind::PhotoReused
                | Kind::PhotoNearDuplicate
        )
    }
}

/// A fix as the corpus knows it: its time as the phone stamps it, its position in WGS-84 (the
/// phone reports it in the patrol's datum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    pub at_ms: i64,
    pub lon: f64,
    pub lat: f64,
    pub accuracy_m: f32,
    pub mock: bool,
}

/// A photo attached to a patrol.
#[derive(Clone, Debug)]
pub struct Photo {
    /// Attached when this fix is recorded.
    pub at_fix: usize,
    pub bytes: Vec<u8>,
    pub scene: u64,
    pub noise: u64,
    /// The EXIF time as the server reads it (the written zone, else China time), Unix ms.
    pub read_ms: i64,
}

/// One labelled patrol.
#[derive(Clone, Debug)]
pub struct Planned {
    pub kind: Kind,
    /// Index into the inspectors (one village grid each).
    pub inspector: usize,
    pub datum: Datum,
    pub fixes: Vec<Fix>,
    /// The phone's clock minus the true time.
    pub clock_offset_ms: i64,
    /// The fixes' stamps minus the true time.
    pub stamp_offset_ms: i64,
    /// The phone's zone, and whether its camera writes it.
    pub zone_min: i32,
    pub writes_zone: bool,
    pub photos: Vec<Photo>,
    /// The earlier patrol (index in the plan) this one was made from.
    pub source: Option<usize>,
    /// Recorded and synced after every patrol of an earlier phase.
    pub phase: u8,
}

impl Planned {
    /// The phone's clock when the fix `i` is taken.
    fn device_ms(&self, i: usize) -> i64 {
        self.fixes[i].at_ms - self.stamp_offset_ms + self.clock_offset_ms
    }
}

/// How large a corpus to make.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Patrols of each kind.
    pub per_kind: usize,
    /// Inspectors (the first inspector of each of the first N village grids of the demo).
    pub inspectors: usize,
    pub seed: u64,
    /// Midnight UTC (08:00 China time) of the corpus's first day; its patrols take 30 days.
    pub start_ms: i64,
    /// Photo size, pixels.
    pub photo_width: u16,
    pub photo_height: u16,
}

/// The demo's village grids, in code order.
pub fn villages(count: usize) -> Result<Vec<track::Grid>, String> {
    let grids = track::load_grids(include_str!(
        "../../server/demo/rongjiang_522632_grids.geojson"
    ))?;
    let mut villages: Vec<track::Grid> =
        grids.into_iter().filter(|g| g.level == "village").collect();
    villages.sort_by(|a, b| a.code.cmp(&b.code));
    villages.truncate(count);
    Ok(villages)
}

/// Makes the corpus: `per_kind` patrols of every kind, deterministic in `plan.seed`.
pub fn plan(plan: &Plan, grids: &[track::Grid]) -> Result<Vec<Planned>, String> {
    if grids.is_empty() {
        return Err("no village grids".into());
    }
    let mut out: Vec<Planned> = Vec::new();
    let mut turn = 0usize;
    for phase in 0..2u8 {
        for (k, &kind) in Kind::ALL.iter().enumerate() {
            if kind.derived() != (phase == 1) {
                continue;
            }
            for n in 0..plan.per_kind {
                let mut rng = StdRng::seed_from_u64(
                    plan.seed ^ ((k as u64) << 40) ^ ((n as u64) << 8) ^ 0x9e37_79b9,
                );
                let planned = if kind.derived() {
                    // Sources: the plain honest patrols of phase 0, taken in turn.
                    let sources: Vec<usize> = out
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| {
                            matches!(p.kind, Kind::Walk | Kind::Gcj02 | Kind::Bd09)
                                && !p.photos.is_empty()
                        })
                        .map(|(i, _)| i)
                        .collect();
                    if sources.is_empty() {
                        return Err("no honest patrol to copy".into());
                    }
                    let source = sources[(n * 7 + k) % sources.len()];
                    derive(kind, source, &out, grids, plan, &mut rng)?
                } else {
                    let inspector = turn % grids.len().min(plan.inspectors.max(1));
                    turn += 1;
                    original(kind, inspector, &grids[inspector], plan, &mut rng)?
                };
                out.push(Planned { phase, ..planned });
            }
        }
    }
    Ok(out)
}

fn base(kind: Kind, inspector: usize) -> Planned {
    Planned {
        kind,
        inspector,
        datum: Datum::Wgs84,
        fixes: Vec::new(),
        clock_offset_ms: 0,
        stamp_offset_ms: 0,
        zone_min: CHINA_MIN,
        writes_zone: true,
        photos: Vec::new(),
        source: None,
        phase: 0,
    }
}

/// A patrol's start: a day of the first two weeks, 08:00–16:00 China time.
fn morning(plan: &Plan, rng: &mut StdRng) -> i64 {
    plan.start_ms + rng.random_range(0..14) * DAY_MS + rng.random_range(0..8 * 60) * MINUTE_MS
}

fn walked(grid: &track::Grid, options: &TrackOptions, rng: &mut StdRng) -> Vec<Fix> {
    track::walk(&grid.polygon, options, rng)
        .into_iter()
        .map(|f| Fix {
            at_ms: f.at_ms,
            lon: f.lon,
            lat: f.lat,
            accuracy_m: f.accuracy_m,
            mock: f.mock,
        })
        .collect()
}

fn track_options(start_ms: i64, rng: &mut StdRng) -> TrackOptions {
    TrackOptions {
        start_ms,
        duration_s: rng.random_range(25..70) * 60,
        ..TrackOptions::default()
    }
}

/// Moves a fix by metres east and north.
fn moved(f: &Fix, east_m: f64, north_m: f64) -> Fix {
    let lat = f.lat.to_radians();
    Fix {
        lon: f.lon + (east_m / (EARTH_RADIUS_M * lat.cos())).to_degrees(),
        lat: f.lat + (north_m / EARTH_RADIUS_M).to_degrees(),
        ..*f
    }
}

/// A standard normal draw, clipped at ±2.5 (as `track.rs`).
fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()).clamp(-2.5, 2.5)
}

/// Takes `count` photos at fixes of the patrol (not the first or last minute), with the phone's
/// clock and zone; `earlier_ms` moves the moment taken back.
fn photos(
    planned: &Planned,
    count: usize,
    earlier_ms: impl Fn(&mut StdRng) -> i64,
    plan: &Plan,
    rng: &mut StdRng,
) -> Result<Vec<Photo>, String> {
    let n = planned.fixes.len();
    let mut out = Vec::new();
    for _ in 0..count {
        let at_fix = if n > 12 {
            rng.random_range(6..n - 6)
        } else {
            n / 2
        };
        let taken = planned.device_ms(at_fix) - earlier_ms(rng);
        out.push(shoot(
            planned,
            at_fix,
            taken,
            rng.random(),
            rng.random(),
            85,
            plan,
        )?);
    }
    Ok(out)
}

/// A photo at fix `at_fix` of `planned`, taken when the phone's clock read `taken_device_ms`.
fn shoot(
    planned: &Planned,
    at_fix: usize,
    taken_device_ms: i64,
    scene: u64,
    noise: u64,
    quality: u8,
    plan: &Plan,
) -> Result<Photo, String> {
    let fix = planned.fixes[at_fix];
    let shot = Shot {
        at_ms: taken_device_ms,
        lon: fix.lon,
        lat: fix.lat,
        datum: "WGS-84",
        utc_offset_min: planned.zone_min,
        writes_offset: planned.writes_zone,
    };
    let exposure = Exposure {
        width: plan.photo_width,
        height: plan.photo_height,
        quality,
        scene,
        noise,
    };
    let read_zone = if planned.writes_zone {
        planned.zone_min
    } else {
        CHINA_MIN
    };
    Ok(Photo {
        at_fix,
        bytes: camera::expose(&shot, &exposure)?,
        scene,
        noise,
        read_ms: taken_device_ms + i64::from(planned.zone_min - read_zone) * MINUTE_MS,
    })
}

/// Photos of an honest patrol: one or two, at the time the phone's clock shows.
fn honest_photos(planned: &Planned, plan: &Plan, rng: &mut StdRng) -> Result<Vec<Photo>, String> {
    let count = rng.random_range(1..=2);
    photos(planned, count, |_| 0, plan, rng)
}

fn original(
    kind: Kind,
    inspector: usize,
    grid: &track::Grid,
    plan: &Plan,
    rng: &mut StdRng,
) -> Result<Planned, String> {
    let mut p = base(kind, inspector);
    let start = morning(plan, rng);
    let mut options = track_options(start, rng);
    match kind {
        Kind::PoorAccuracyAtBorder => {
            options.gps_noise_m = rng.random_range(30.0..80.0);
            options.stray_outside = true;
        }
        Kind::Gcj02 => p.datum = Datum::Gcj02,
        Kind::Bd09 => p.datum = Datum::Bd09,
        Kind::Motorbike => {
            options.walking_speed_mps = rng.random_range(7.0..25.0);
            options.every_s = 5;
        }
        Kind::Tunnel => {
            options.walking_speed_mps = rng.random_range(8.0..15.0);
            options.every_s = 5;
            options.duration_s = rng.random_range(40..70) * 60;
        }
        Kind::WeekBoundary => {
            // A Sunday of the first two weeks (1970-01-01 was a Thursday), 23:10–23:45 China
            // time: 15:10–15:45 UTC of the same date.
            let day = (0..14)
                .map(|d| plan.start_ms + d * DAY_MS)
                .find(|&t| (t.div_euclid(DAY_MS) + 4).rem_euclid(7) == 0)
                .unwrap_or(plan.start_ms);
            options.start_ms = day + 15 * HOUR_MS + rng.random_range(10..45) * MINUTE_MS;
            options.duration_s = rng.random_range(30..60) * 60;
        }
        Kind::MockLocation => options.mock_location = true,
        Kind::DeskPatrol => {
            options.desk = true;
            options.gps_noise_m = rng.random_range(3.0..25.0);
        }
        _ => {}
    }
    p.fixes = walked(grid, &options, rng);
    if p.fixes.len() < 20 {
        return Err(format!("{}: a track of {} fixes", grid.code, p.fixes.len()));
    }
    let n = p.fixes.len();
    match kind {
        Kind::Tunnel => {
            let gap = rng.random_range(6..=15) * MINUTE_MS;
            let from = p.fixes[n / 3].at_ms + rng.random_range(0..10) * MINUTE_MS;
            p.fixes.retain(|f| f.at_ms <= from || f.at_ms > from + gap);
        }
        Kind::ClockHoursOff | Kind::ClockHoursOffGnssFixes => {
            let sign = if rng.random_bool(0.5) { 1 } else { -1 };
            p.clock_offset_ms =
                sign * (rng.random_range(1..9) * HOUR_MS + rng.random_range(0..60) * MINUTE_MS);
            if kind == Kind::ClockHoursOff {
                p.stamp_offset_ms = p.clock_offset_ms;
                for f in &mut p.fixes {
                    f.at_ms += p.clock_offset_ms;
                }
            }
        }
        Kind::UtcPhone | Kind::UtcPhoneNoZone => {
            p.zone_min = 0;
            p.writes_zone = kind == Kind::UtcPhone;
        }
        Kind::GpsGlitch => {
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(2..n - 2);
                let (d, bearing) = (
                    rng.random_range(150.0..900.0),
                    rng.random_range(0.0..std::f64::consts::TAU),
                );
                p.fixes[i] = moved(&p.fixes[i], d * bearing.sin(), d * bearing.cos());
            }
            if rng.random_bool(0.5) {
                // The phone falls back to a cell-tower fix for a moment, and says how poor it is.
                let i = rng.random_range(2..n - 2);
                let (d, bearing) = (
                    rng.random_range(1000.0..3000.0),
                    rng.random_range(0.0..std::f64::consts::TAU),
                );
                p.fixes[i] = Fix {
                    accuracy_m: (d * rng.random_range(0.8..1.5)) as f32,
                    ..moved(&p.fixes[i], d * bearing.sin(), d * bearing.cos())
                };
            }
        }
        Kind::Teleport => {
            let (d, bearing) = (
                rng.random_range(3000.0..25_000.0),
                rng.random_range(0.0..std::f64::consts::TAU),
            );
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(2..n - 2);
                p.fixes[i] = Fix {
                    accuracy_m: rng.random_range(5.0..20.0),
                    ..moved(&p.fixes[i], d * bearing.sin(), d * bearing.cos())
                };
            }
        }
        Kind::ImpossibleSpeed => {
            let kmh = rng.random_range(150.0..290.0);
            let minutes = rng.random_range(2.0..8.0);
            let from = rng.random_range(n / 4..n / 2);
            let t0 = p.fixes[from].at_ms;
            let bearing: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            for f in &mut p.fixes[from..] {
                let s = ((f.at_ms - t0) as f64 / 1000.0).min(minutes * 60.0);
                let d = kmh / 3.6 * s;
                *f = moved(f, d * bearing.sin(), d * bearing.cos());
            }
        }
        _ => {}
    }
    p.photos = match kind {
        Kind::PhotosWeekEarlier => {
            let count = rng.random_range(1..=2);
            photos(
                &p,
                count,
                |r| r.random_range(2 * DAY_MS..10 * DAY_MS),
                plan,
                rng,
            )?
        }
        Kind::PhotosHoursEarlier => {
            let first = p.device_ms(0);
            let mut shots = Vec::new();
            for _ in 0..rng.random_range(1..=2) {
                let at_fix = rng.random_range(6..n - 6);
                let taken = first - rng.random_range(HOUR_MS..6 * HOUR_MS);
                shots.push(shoot(
                    &p,
                    at_fix,
                    taken,
                    rng.random(),
                    rng.random(),
                    85,
                    plan,
                )?);
            }
            shots
        }
        _ => honest_photos(&p, plan, rng)?,
    };
    Ok(p)
}

/// A patrol made from the earlier patrol `source`.
fn derive(
    kind: Kind,
    source: usize,
    earlier: &[Planned],
    grids: &[track::Grid],
    plan: &Plan,
    rng: &mut StdRng,
) -> Result<Planned, String> {
    let from = &earlier[source];
    let grid = &grids[from.inspector];
    let mut p = Planned {
        source: Some(source),
        ..base(kind, from.inspector)
    };
    // 3–14 days later, within two hours of the same time of day.
    let shift = rng.random_range(3..=14) * DAY_MS + rng.random_range(-120..=120) * MINUTE_MS;
    let copied = |f: &Fix| Fix {
        at_ms: f.at_ms + shift,
        ..*f
    };
    match kind {
        Kind::ReplayExact => p.fixes = from.fixes.iter().map(copied).collect(),
        Kind::ReplayNoisy => {
            let sigma = rng.random_range(2.0..5.0);
            p.fixes = from
                .fixes
                .iter()
                .map(|f| {
                    let (e, n) = (sigma * normal(rng), sigma * normal(rng));
                    Fix {
                        accuracy_m: rng.random_range(4.0..7.0),
                        ..moved(&copied(f), e, n)
                    }
                })
                .collect();
        }
        Kind::ReplayPartial => {
            let n = from.fixes.len();
            let take = (n as f64 * rng.random_range(0.4..0.7)) as usize;
            let begin = rng.random_range(0..=n - take);
            p.fixes = from.fixes[begin..begin + take].iter().map(copied).collect();
            // Then a walk of its own from where the copy ends.
            let Some(&last) = p.fixes.last() else {
                return Err("an empty copy".into());
            };
            let options = TrackOptions {
                start_ms: last.at_ms + 10_000,
                duration_s: rng.random_range(15..30) * 60,
                ..TrackOptions::default()
            };
            let own = walked(grid, &options, rng);
            if let Some(first) = own.first().copied() {
                let (east, north) = metres(&first, &last);
                p.fixes
                    .extend(own.iter().map(|f| moved(f, east, north)).skip(1));
            }
        }
        Kind::SameRouteAgain => {
            // The route of `from` walked again: its path (the fixes smoothed over ±30 s), time
            // stretched by 3–8 % either way, a step to the side that wanders (the other side of
            // the lane: σ 2 m), and GPS error that drifts from fix to fix as a phone's does
            // (AR(1), ρ 0.9 between fixes 10 s apart) rather than jumping independently.
            let path = smoothed(&from.fixes, 3);
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let pace = 1.0 + sign * rng.random_range(0.03..0.08);
            let (t0, t1) = (path[0].at_ms, path[path.len() - 1].at_ms);
            let start = t0 + shift;
            let span = ((t1 - t0) as f64 * pace) as i64;
            let (mut side, mut error) = ((0.0, 0.0), (0.0, 0.0));
            let mut t = 0;
            while t <= span {
                let here = along(&path, t0 + (t as f64 / pace) as i64);
                let accuracy: f32 = rng.random_range(4.0..6.5);
                let sigma = f64::from(accuracy) / 1.51;
                let wander = 2.0 * (1.0 - 0.95_f64 * 0.95).sqrt();
                side = (
                    0.95 * side.0 + wander * normal(rng),
                    0.95 * side.1 + wander * normal(rng),
                );
                let fresh = sigma * (1.0 - 0.9_f64 * 0.9).sqrt();
                error = (
                    0.9 * error.0 + fresh * normal(rng),
                    0.9 * error.1 + fresh * normal(rng),
                );
                p.fixes.push(Fix {
                    at_ms: start + t,
                    accuracy_m: accuracy,
                    mock: false,
                    ..moved(&here, side.0 + error.0, side.1 + error.1)
                });
                t += 10_000;
            }
        }
        _ => {
            let start = morning(plan, rng) + 14 * DAY_MS;
            let options = track_options(start, rng);
            p.fixes = walked(grid, &options, rng);
        }
    }
    if p.fixes.len() < 20 {
        return Err(format!("{}: a track of {} fixes", grid.code, p.fixes.len()));
    }
    let old = &from.photos[0];
    p.photos = match kind {
        Kind::PhotoReused => {
            let mut fresh = photos(&p, 1, |_| 0, plan, rng)?;
            fresh.push(Photo {
                at_fix: p.fixes.len() / 2,
                ..old.clone()
            });
            fresh
        }
        Kind::PhotoNearDuplicate | Kind::SameViewAgain => {
            let at_fix = p.fixes.len() / 2;
            let taken = p.device_ms(at_fix);
            // The fraud re-encodes the very picture; the honest inspector shoots the view again.
            let (noise, quality) = if kind == Kind::PhotoNearDuplicate {
                (old.noise, 60)
            } else {
                (rng.random(), 85)
            };
            vec![shoot(&p, at_fix, taken, old.scene, noise, quality, plan)?]
        }
        _ => honest_photos(&p, plan, rng)?,
    };
    Ok(p)
}

/// Metres east and north from `a` to `b`.
fn metres(a: &Fix, b: &Fix) -> (f64, f64) {
    let lat = a.lat.to_radians();
    (
        (b.lon - a.lon).to_radians() * EARTH_RADIUS_M * lat.cos(),
        (b.lat - a.lat).to_radians() * EARTH_RADIUS_M,
    )
}

fn apart(a: &Fix, b: &Fix) -> f64 {
    let (e, n) = metres(a, b);
    e.hypot(n)
}

/// Each fix moved to the mean position of the fixes within `k` of it: the path without most
/// of its noise.
fn smoothed(fixes: &[Fix], k: usize) -> Vec<Fix> {
    (0..fixes.len())
        .map(|i| {
            let near = &fixes[i.saturating_sub(k)..(i + k + 1).min(fixes.len())];
            let n = near.len() as f64;
            Fix {
                lon: near.iter().map(|f| f.lon).sum::<f64>() / n,
                lat: near.iter().map(|f| f.lat).sum::<f64>() / n,
                ..fixes[i]
            }
        })
        .collect()
}

/// Where a track is at `at_ms`, between its fixes.
fn along(fixes: &[Fix], at_ms: i64) -> Fix {
    let i = fixes.partition_point(|f| f.at_ms <= at_ms);
    if i == 0 {
        return fixes[0];
    }
    if i >= fixes.len() {
        return fixes[fixes.len() - 1];
    }
    let (a, b) = (fixes[i - 1], fixes[i]);
    let share = (at_ms - a.at_ms) as f64 / (b.at_ms - a.at_ms).max(1) as f64;
    let (e, n) = metres(&a, &b);
    moved(&a, e * share, n * share)
}

/// The position as the phone reports it in `datum`.
fn reported(fix: &Fix, datum: Datum) -> (f64, f64) {
    use gcoord::{CoordSystem, Coordinate, transform};
    let to = match datum {
        Datum::Wgs84 => return (fix.lon, fix.lat),
        Datum::Gcj02 => CoordSystem::GCJ02,
        Datum::Bd09 => CoordSystem::BD09,
    };
    transform(Coordinate::new(fix.lon, fix.lat), CoordSystem::WGS84, to)
        .map_or((fix.lon, fix.lat), |c| (c.lng, c.lat))
}

// ---------------------------------------------------------------------------------------------
// Recording, syncing, verdicts.

/// Where the corpus runs.
#[derive(Clone, Debug)]
pub struct Server {
    pub url: String,
    /// The administrator who hands out enrollment codes and reads verdicts.
    pub admin: String,
    pub password: String,
}

/// The phone's clock, set by the corpus.
struct SetClock(AtomicI64);

impl Clock for SetClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    fn monotonic_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Phone {
    grid: String,
    client: Client,
    clock: Arc<SetClock>,
    camera: std::path::PathBuf,
}

/// What the server said of one patrol.
#[derive(Clone, Debug)]
pub struct Judged {
    pub id: String,
    pub counted: bool,
    /// Every flag raised: (signal, hard).
    pub flags: Vec<(String, bool)>,
    /// The checks that failed, by code.
    pub failed: Vec<String>,
}

async fn json(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, serde_json::Value), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

async fn phones(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    grids: &[track::Grid],
    dir: &std::path::Path,
) -> Result<Vec<Phone>, String> {
    let (_, users) = json(
        http.get(format!("{}/v1/users?role=inspector", server.url))
            .bearer_auth(token),
    )
    .await?;
    let mut phones = Vec::new();
    for grid in grids {
        let username = format!("inspector-{}-1", grid.code);
        let id = users
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["username"] == username)
            .and_then(|u| u["id"].as_i64())
            .ok_or_else(|| format!("no inspector {username} on the server (run serve --demo)"))?;
        let code = crate::api::enrollment_code(http, &server.url, token, id).await?;
        let clock = Arc::new(SetClock(AtomicI64::new(0)));
        let camera = dir.join("camera").join(&username);
        std::fs::create_dir_all(&camera).map_err(|e| e.to_string())?;
        let client = Client::open_with(
            Arc::new(MemoryStore::new()),
            &server.url,
            Options {
                clock: clock.clone(),
                photos: PhotoOptions {
                    dir: Some(dir.join(format!("{username}.photos"))),
                    ..PhotoOptions::default()
                },
                ..Options::default()
            },
        )
        .map_err(|e| e.to_string())?;
        client
            .enroll(&code, &format!("{username} 的手机"))
            .await
            .map_err(|e| format!("{username}: {e}"))?;
        phones.push(Phone {
            grid: grid.code.clone(),
            client,
            clock,
            camera,
        });
    }
    Ok(phones)
}

/// Records one patrol on its phone, the phone's clock set as the patrol says; returns its id.
fn record(phone: &Phone, planned: &Planned, index: usize) -> Result<String, String> {
    let err = |e: gridpatrol_sdk::SdkError| format!("patrol {index}: {e}");
    phone
        .clock
        .0
        .store(planned.device_ms(0) - 30_000, Ordering::Relaxed);
    let id = phone
        .client
        .start_patrol(&phone.grid, Method::Routine)
        .map_err(err)?;
    for (i, fix) in planned.fixes.iter().enumerate() {
        phone.clock.0.store(planned.device_ms(i), Ordering::Relaxed);
        let (lon, lat) = reported(fix, planned.datum);
        phone
            .client
            .add_fix(
                &id,
                FixInput {
                    at_ms: fix.at_ms,
                    lon,
                    lat,
                    datum: planned.datum,
                    accuracy_m: Some(fix.accuracy_m),
                    mock: fix.mock,
                },
            )
            .map_err(err)?;
        for (k, photo) in planned.photos.iter().enumerate() {
            if photo.at_fix == i {
                let file = phone.camera.join(format!("IMG_{index}_{k}.jpg"));
                std::fs::write(&file, &photo.bytes).map_err(|e| e.to_string())?;
                phone
                    .client
                    .attach_photo(&id, &file, "巡查照片")
                    .map_err(err)?;
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    let last = planned.fixes.len() - 1;
    phone
        .clock
        .0
        .store(planned.device_ms(last) + 30_000, Ordering::Relaxed);
    phone.client.submit(&id).map_err(err)?;
    Ok(id)
}

async fn sync(phone: &Phone) -> Result<(), String> {
    let backoff = gridpatrol_sdk::Backoff {
        base: std::time::Duration::from_millis(250),
        cap: std::time::Duration::from_secs(4),
    };
    let report = phone
        .client
        .sync_with_retry(8, backoff)
        .await
        .map_err(|e| format!("{}: {e}", phone.grid))?;
    if report.rejected > 0 || report.photos_refused > 0 {
        return Err(format!(
            "{}: the server refused {} documents and {} photos",
            phone.grid, report.rejected, report.photos_refused
        ));
    }
    Ok(())
}

/// Every patrol's verdict, once judged; asked again until two rounds a few seconds apart agree
/// (a photo's perceptual hash is made after it arrives, and judges its patrols again).
async fn verdicts(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    ids: &[String],
) -> Result<Vec<Judged>, String> {
    let mut last: Option<Vec<Judged>> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let mut round = Vec::with_capacity(ids.len());
        for id in ids {
            loop {
                let (status, body) = json(
                    http.get(format!("{}/v1/patrols/{id}/verdict", server.url))
                        .bearer_auth(token),
                )
                .await?;
                if status.is_success() {
                    round.push(judged(id, &body));
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("no verdict for {id}: {status} {body}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        if last.as_ref().is_some_and(|last| {
            last.iter()
                .zip(&round)
                .all(|(a, b)| a.counted == b.counted && a.flags == b.flags)
        }) {
            return Ok(round);
        }
        last = Some(round);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
}

fn judged(id: &str, body: &serde_json::Value) -> Judged {
    let list = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    let mut flags: Vec<(String, bool)> = list("flags")
        .iter()
        .map(|f| {
            (
                f["signal"].as_str().unwrap_or("?").to_string(),
                f["hard"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    flags.sort();
    Judged {
        id: id.to_string(),
        counted: body["counted"].as_bool().unwrap_or(false),
        flags,
        failed: list("reasons")
            .iter()
            .filter(|r| r["passed"] == false)
            .map(|r| r["code"].as_str().unwrap_or("?").to_string())
            .collect(),
    }
}

/// Records the corpus on phones enrolled at `server`, syncs it (the copies after their
/// originals) and returns every patrol's verdict, in the plan's order.
pub async fn run(
    server: &Server,
    grids: &[track::Grid],
    corpus: &[Planned],
) -> Result<Vec<Judged>, String> {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let token = crate::api::sign_in(&http, &server.url, &server.admin, &server.password).await?;
    let dir = std::env::temp_dir().join(format!(
        "patrol-corpus-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    ));
    let used = corpus.iter().map(|p| p.inspector + 1).max().unwrap_or(0);
    let phones = phones(&http, server, &token, &grids[..used.min(grids.len())], &dir).await?;
    let mut ids = vec![String::new(); corpus.len()];
    for phase in 0..2u8 {
        for (i, planned) in corpus.iter().enumerate() {
            if planned.phase == phase {
                ids[i] = record(&phones[planned.inspector], planned, i)?;
            }
        }
        for phone in &phones {
            sync(phone).await?;
        }
    }
    let judged = verdicts(&http, server, &token, &ids).await;
    let _ = std::fs::remove_dir_all(&dir);
    judged
}

// ---------------------------------------------------------------------------------------------
// Scoring.

/// One kind's figures.
#[derive(Clone, Debug)]
pub struct KindScore {
    pub kind: Kind,
    pub patrols: usize,
    pub not_counted: usize,
    /// Fraud: patrols on which its own signal was raised.
    pub own_signal: usize,
    /// Every signal raised, and on how many patrols.
    pub signals: BTreeMap<String, usize>,
}

impl KindScore {
    /// Fraud: the share not counted (or, for a soft-signal fraud, flagged); honest: counted.
    pub fn rate(&self) -> f64 {
        let hits = if self.kind.honest() {
            self.patrols - self.not_counted
        } else if self.kind.hard() {
            self.not_counted
        } else {
            self.own_signal
        };
        hits as f64 / self.patrols.max(1) as f64
    }
}

/// A measured value and the kind of the patrol it was measured on.
pub type Closest = Option<(f64, Kind)>;

/// One rule's margin: the quantity it thresholds, on the honest patrol nearest to firing it and
/// on the fraud nearest to escaping it.
#[derive(Clone, Debug)]
pub struct Margin {
    pub signal: &'static str,
    pub quantity: &'static str,
    pub fires: &'static str,
    /// The rule fires at or beyond this value (below it when `fires_below`).
    pub threshold: f64,
    pub fires_below: bool,
    pub honest: Closest,
    pub fraud: Closest,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub kinds: Vec<KindScore>,
    pub margins: Vec<Margin>,
    /// Honest patrols that did not count, and why.
    pub honest_failures: Vec<String>,
    /// Hard frauds that counted.
    pub missed: Vec<String>,
}

/// Local metres around a fix (for the measures).
fn xy(origin: &Fix, f: &Fix) -> (f64, f64) {
    metres(origin, f)
}

fn unexplained(a: &Fix, b: &Fix) -> f64 {
    (apart(a, b) - f64::from(a.accuracy_m) - f64::from(b.accuracy_m)).max(0.0)
}

fn leap(a: &Fix, b: &Fix) -> bool {
    let seconds = (b.at_ms - a.at_ms) as f64 / 1000.0;
    let moved = unexplained(a, b);
    moved >= 1000.0 && (seconds <= 0.0 || moved / seconds * 3.6 > 300.0)
}

/// The largest jump between consecutive fixes faster than 300 km/h, beyond their accuracy (m).
fn jump_m(fixes: &[Fix]) -> f64 {
    fixes
        .windows(2)
        .filter(|w| {
            let seconds = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            seconds <= 0.0 || unexplained(&w[0], &w[1]) / seconds * 3.6 > 300.0
        })
        .map(|w| unexplained(&w[0], &w[1]))
        .fold(0.0, f64::max)
}

/// The fastest stretch of at least 60 s without a teleport in it, beyond accuracy (km/h).
fn sustained_kmh(fixes: &[Fix]) -> f64 {
    let mut fastest = 0.0_f64;
    let mut j = 0;
    for i in 0..fixes.len() {
        j = j.max(i + 1);
        while j < fixes.len() && fixes[j].at_ms - fixes[i].at_ms < 60_000 {
            j += 1;
        }
        if j >= fixes.len() {
            break;
        }
        if (i..j).any(|k| leap(&fixes[k], &fixes[k + 1])) {
            continue;
        }
        let seconds = (fixes[j].at_ms - fixes[i].at_ms) as f64 / 1000.0;
        fastest = fastest.max(unexplained(&fixes[i], &fixes[j]) / seconds * 3.6);
    }
    fastest
}

/// The farthest fix from the track's centre over the desk radius (max(30 m, 2.5 median
/// accuracies)).
fn desk_ratio(fixes: &[Fix]) -> f64 {
    let origin = fixes[0];
    let points: Vec<(f64, f64)> = fixes.iter().map(|f| xy(&origin, f)).collect();
    let n = points.len() as f64;
    let (cx, cy) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let farthest = points
        .iter()
        .map(|p| (p.0 - cx).hypot(p.1 - cy))
        .fold(0.0, f64::max);
    let mut accuracies: Vec<f64> = fixes.iter().map(|f| f64::from(f.accuracy_m)).collect();
    accuracies.sort_by(f64::total_cmp);
    farthest / (2.5 * accuracies[accuracies.len() / 2]).max(30.0)
}

/// Minutes between the patrol's span of fixes and its photo nearest to it (0 when inside).
fn photo_offset_min(p: &Planned) -> Option<f64> {
    let (first, last) = (p.fixes[0].at_ms, p.fixes[p.fixes.len() - 1].at_ms);
    p.photos
        .iter()
        .map(|photo| {
            let off = if photo.read_ms < first {
                first - photo.read_ms
            } else {
                (photo.read_ms - last).max(0)
            };
            off as f64 / 60_000.0
        })
        .min_by(f64::total_cmp)
}

/// The longest run (minutes) of this patrol's fixes that lie within 15 m of an earlier
/// patrol's fixes at one time shift of at least 30 minutes (the shift most pairs of fixes
/// within 15 m share, in 2-second bins, as `replay.rs` finds it).
fn replay_run_min(this: &[Fix], earlier: &[Fix]) -> f64 {
    const TOLERANCE_M: f64 = 15.0;
    let mut bins: HashMap<i64, u32> = HashMap::new();
    let origin = this[0];
    let a: Vec<(f64, f64)> = this.iter().map(|f| xy(&origin, f)).collect();
    let b: Vec<(f64, f64)> = earlier.iter().map(|f| xy(&origin, f)).collect();
    for (i, p) in a.iter().enumerate() {
        for (j, q) in b.iter().enumerate() {
            if (p.0 - q.0).abs() <= TOLERANCE_M && (p.1 - q.1).abs() <= TOLERANCE_M {
                let shift = this[i].at_ms - earlier[j].at_ms;
                if shift.abs() >= 30 * MINUTE_MS {
                    *bins.entry(shift.div_euclid(2000)).or_default() += 1;
                }
            }
        }
    }
    let mut best: Vec<(i64, u32)> = bins.into_iter().collect();
    best.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let mut longest = 0.0_f64;
    for &(bin, _) in best.iter().take(5) {
        let shift = bin * 2000 + 1000;
        let mut run_start: Option<i64> = None;
        for (i, f) in this.iter().enumerate() {
            let want = f.at_ms - shift;
            let k = earlier.partition_point(|e| e.at_ms < want - 1500);
            let hit = earlier[k..]
                .iter()
                .take_while(|e| e.at_ms <= want + 1500)
                .any(|e| {
                    let q = xy(&origin, e);
                    (a[i].0 - q.0).hypot(a[i].1 - q.1) <= TOLERANCE_M
                });
            if hit {
                let start = *run_start.get_or_insert(f.at_ms);
                longest = longest.max((f.at_ms - start) as f64 / 60_000.0);
            } else {
                run_start = None;
            }
        }
    }
    longest
}

/// Scores the verdicts of `corpus` (in its order).
pub fn score(corpus: &[Planned], judged: &[Judged]) -> Report {
    let mut kinds: BTreeMap<Kind, KindScore> = BTreeMap::new();
    let mut honest_failures = Vec::new();
    let mut missed = Vec::new();
    for (planned, verdict) in corpus.iter().zip(judged) {
        let entry = kinds.entry(planned.kind).or_insert_with(|| KindScore {
            kind: planned.kind,
            patrols: 0,
            not_counted: 0,
            own_signal: 0,
            signals: BTreeMap::new(),
        });
        entry.patrols += 1;
        entry.not_counted += usize::from(!verdict.counted);
        let mut raised: Vec<&str> = verdict.flags.iter().map(|(s, _)| s.as_str()).collect();
        raised.dedup();
        for signal in &raised {
            *entry.signals.entry(signal.to_string()).or_default() += 1;
        }
        if planned.kind.signal().is_some_and(|s| raised.contains(&s)) {
            entry.own_signal += 1;
        }
        let why = || {
            let hard: Vec<&str> = verdict
                .flags
                .iter()
                .filter(|(_, hard)| *hard)
                .map(|(s, _)| s.as_str())
                .collect();
            format!(
                "{} {}: failed checks {:?}, hard signals {:?}",
                planned.kind.code(),
                verdict.id,
                verdict.failed,
                hard
            )
        };
        if planned.kind.honest() && !verdict.counted {
            honest_failures.push(why());
        }
        if planned.kind.hard() && verdict.counted {
            missed.push(why());
        }
    }
    Report {
        kinds: kinds.into_values().collect(),
        margins: margins(corpus),
        honest_failures,
        missed,
    }
}

/// The closest honest value (largest when the rule fires above its threshold) and the closest
/// fraud value of `kinds` (smallest), or the other way round when `fires_below`.
fn closest(
    values: &[(Kind, f64)],
    frauds: &[Kind],
    fires_below: bool,
    honest_too: impl Fn(Kind) -> bool,
) -> (Closest, Closest) {
    let pick = |keep: &dyn Fn(Kind) -> bool, largest: bool| {
        values
            .iter()
            .filter(|(k, _)| keep(*k))
            .map(|&(k, v)| (v, k))
            .reduce(|a, b| {
                if (b.0 > a.0) == largest && b.0 != a.0 {
                    b
                } else {
                    a
                }
            })
    };
    (
        pick(&|k: Kind| k.honest() && honest_too(k), !fires_below),
        pick(&|k: Kind| frauds.contains(&k), fires_below),
    )
}

fn margins(corpus: &[Planned]) -> Vec<Margin> {
    let all = |f: &dyn Fn(&Planned) -> Option<f64>| -> Vec<(Kind, f64)> {
        corpus
            .iter()
            .filter_map(|p| Some((p.kind, f(p)?)))
            .collect()
    };
    let mut out = Vec::new();
    let (honest, fraud) = closest(
        &all(&|p| Some(jump_m(&p.fixes))),
        &[Kind::Teleport],
        false,
        |_| true,
    );
    out.push(Margin {
        signal: "teleport",
        quantity: "largest jump between consecutive fixes, beyond their accuracy, faster than 300 km/h (m)",
        fires: "≥ 1000",
        threshold: 999.999,
        fires_below: false,
        honest,
        fraud,
    });
    let (honest, fraud) = closest(
        &all(&|p| Some(sustained_kmh(&p.fixes))),
        &[Kind::ImpossibleSpeed],
        false,
        |_| true,
    );
    out.push(Margin {
        signal: "impossible_speed",
        quantity: "fastest stretch of ≥ 60 s, beyond accuracy (km/h)",
        fires: "> 120",
        threshold: 120.0,
        fires_below: false,
        honest,
        fraud,
    });
    let (honest, fraud) = closest(
        &all(&|p| Some(desk_ratio(&p.fixes))),
        &[Kind::DeskPatrol],
        true,
        |_| true,
    );
    out.push(Margin {
        signal: "desk_patrol",
        quantity: "farthest fix from the centre ÷ max(30 m, 2.5 × median accuracy)",
        fires: "≤ 1",
        threshold: 1.0,
        fires_below: true,
        honest,
        fraud,
    });
    let (honest, fraud) = closest(
        &all(&photo_offset_min),
        &[Kind::PhotosWeekEarlier, Kind::PhotosHoursEarlier],
        false,
        |_| true,
    );
    out.push(Margin {
        signal: "no_photo_in_patrol",
        quantity: "the nearest photo's EXIF time outside the fixes' span, as the server reads it (min)",
        fires: "> 30",
        threshold: 30.0,
        fires_below: false,
        honest,
        fraud,
    });
    // Replays: each patrol against the earlier patrols of its grid.
    let replay: Vec<(Kind, f64)> = corpus
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let longest = corpus
                .iter()
                .enumerate()
                .filter(|&(j, q)| {
                    q.inspector == p.inspector
                        && (q.phase < p.phase || (q.phase == p.phase && j < i))
                })
                .map(|(_, q)| replay_run_min(&p.fixes, &q.fixes))
                .fold(0.0, f64::max);
            (p.kind, longest)
        })
        .collect();
    let (honest, fraud) = closest(
        &replay,
        &[Kind::ReplayExact, Kind::ReplayPartial, Kind::ReplayNoisy],
        false,
        |_| true,
    );
    out.push(Margin {
        signal: "replayed_track",
        quantity: "longest run of fixes within 15 m of an earlier patrol's at one time shift ≥ 30 min (min)",
        fires: "≥ 10 (and ≥ 20 fixes, ≥ 300 m)",
        threshold: 9.999,
        fires_below: false,
        honest,
        fraud,
    });
    // Photos: the same file, and the nearest perceptual hash, in an earlier patrol.
    let limits = gridpatrol_photo::Limits::default();
    let hashes: Vec<Vec<(u64, Vec<u8>)>> = corpus
        .iter()
        .map(|p| {
            p.photos
                .iter()
                .filter_map(|photo| {
                    let hash = gridpatrol_photo::perceptual_hash(&photo.bytes, &limits).ok()?;
                    Some((hash, photo.bytes.clone()))
                })
                .collect()
        })
        .collect();
    let before = |i: usize, j: usize| {
        corpus[j].phase < corpus[i].phase || (corpus[j].phase == corpus[i].phase && j < i)
    };
    let nearest: Vec<(Kind, f64)> = corpus
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let near = (0..corpus.len())
                .filter(|&j| before(i, j))
                .flat_map(|j| hashes[j].iter())
                .flat_map(|(h, bytes)| {
                    hashes[i]
                        .iter()
                        .filter(move |(_, mine)| mine != bytes)
                        .map(move |(mine, _)| gridpatrol_photo::hamming(*mine, *h))
                })
                .min()
                .unwrap_or(64);
            (p.kind, f64::from(near))
        })
        .collect();
    let (honest, fraud) = closest(&nearest, &[Kind::PhotoNearDuplicate], true, |k| {
        k != Kind::SameViewAgain
    });
    out.push(Margin {
        signal: "photo_near_duplicate",
        quantity: "fewest perceptual-hash bits to a photo of an earlier patrol, not the same file (honest: but `same_view_again`)",
        fires: "≤ 8",
        threshold: 8.0,
        fires_below: true,
        honest,
        fraud,
    });
    let identical: Vec<(Kind, f64)> = corpus
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let same = (0..corpus.len()).filter(|&j| before(i, j)).any(|j| {
                hashes[j]
                    .iter()
                    .any(|(_, b)| hashes[i].iter().any(|(_, mine)| mine == b))
            });
            (p.kind, f64::from(u8::from(same)))
        })
        .collect();
    let (honest, fraud) = closest(&identical, &[Kind::PhotoReused], false, |_| true);
    out.push(Margin {
        signal: "photo_reused",
        quantity: "a photo file (SHA-256) of an earlier patrol: 1 yes, 0 no",
        fires: "= 1",
        threshold: 0.5,
        fires_below: false,
        honest,
        fraud,
    });
    let mock: Vec<(Kind, f64)> = corpus
        .iter()
        .map(|p| {
            let n = p.fixes.iter().filter(|f| f.mock).count();
            (p.kind, n as f64 / p.fixes.len() as f64)
        })
        .collect();
    let (honest, fraud) = closest(&mock, &[Kind::MockLocation], false, |_| true);
    out.push(Margin {
        signal: "mock_location",
        quantity: "share of fixes the platform flags as mock",
        fires: "> 0",
        threshold: 0.0,
        fires_below: false,
        honest,
        fraud,
    });
    out
}

impl Margin {
    /// Whether the rule fires at `value`.
    pub fn fires(&self, value: f64) -> bool {
        if self.fires_below {
            value <= self.threshold
        } else {
            value > self.threshold
        }
    }
}

impl Report {
    /// Hard-fraud kinds whose recall is below `recall`.
    pub fn short_recall(&self, recall: f64) -> Vec<(Kind, f64)> {
        self.kinds
            .iter()
            .filter(|k| k.kind.hard() && k.rate() < recall)
            .map(|k| (k.kind, k.rate()))
            .collect()
    }

    /// Honest patrols not counted, and honest patrols.
    pub fn honest_false_fail(&self) -> (usize, usize) {
        let honest = self.kinds.iter().filter(|k| k.kind.honest());
        honest.fold((0, 0), |(f, n), k| (f + k.not_counted, n + k.patrols))
    }

    /// The report as Markdown: per kind, the goals, the margins, and what failed.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| kind | what | patrols | not counted | recall / pass rate | own signal raised | signals raised (patrols) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for label in [true, false] {
            for k in self.kinds.iter().filter(|k| k.kind.honest() == label) {
                let what = if k.kind.honest() {
                    "honest"
                } else if k.kind.hard() {
                    "fraud (hard)"
                } else {
                    "fraud (soft signal)"
                };
                let signals: Vec<String> =
                    k.signals.iter().map(|(s, n)| format!("{s} {n}")).collect();
                let own = match k.kind.signal() {
                    Some(s) => format!("{s}: {}/{}", k.own_signal, k.patrols),
                    None => "–".into(),
                };
                let _ = writeln!(
                    out,
                    "| `{}` ({}) | {what} | {} | {} | {:.2} | {own} | {} |",
                    k.kind.code(),
                    k.kind.describe(),
                    k.patrols,
                    k.not_counted,
                    k.rate(),
                    if signals.is_empty() {
                        "–".into()
                    } else {
                        signals.join(", ")
                    }
                );
            }
        }
        let (failed, honest) = self.honest_false_fail();
        let hard: Vec<&KindScore> = self.kinds.iter().filter(|k| k.kind.hard()).collect();
        let caught: usize = hard.iter().map(|k| k.not_counted).sum();
        let frauds: usize = hard.iter().map(|k| k.patrols).sum();
        let lowest = hard
            .iter()
            .map(|k| (k.rate(), k.kind.code()))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let _ = writeln!(
            out,
            "\nHard-fraud recall: {caught}/{frauds} ({:.3}); lowest kind: {}. Honest false-fail: {failed}/{honest} ({:.1} %).",
            caught as f64 / frauds.max(1) as f64,
            lowest.map_or("–".into(), |(r, k)| format!("`{k}` {r:.2}")),
            100.0 * failed as f64 / honest.max(1) as f64
        );
        let _ = writeln!(
            out,
            "\n| signal | quantity | fires when | closest honest | closest fraud |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let show = |v: &Option<(f64, Kind)>| match v {
            Some((value, kind)) => format!("{value:.1} (`{}`)", kind.code()),
            None => "–".into(),
        };
        for m in &self.margins {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                m.signal,
                m.quantity,
                m.fires,
                show(&m.honest),
                show(&m.fraud)
            );
        }
        if !self.honest_failures.is_empty() {
            let _ = writeln!(out, "\nHonest patrols not counted:\n");
            for line in &self.honest_failures {
                let _ = writeln!(out, "- {line}");
            }
        }
        if !self.missed.is_empty() {
            let _ = writeln!(out, "\nHard frauds counted:\n");
            for line in &self.missed {
                let _ = writeln!(out, "- {line}");
            }
        }
        out
    }
}
