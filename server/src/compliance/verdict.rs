//! A patrol's verdict: counted or not, with every reason, and the fraud signals (巡查走形式) it
//! shows. Pure: a patrol, its grid and the rules in, a verdict out, so the weekly record can be
//! recomputed from scratch and give the same answer.
//!
//! Each reason and signal has a stable code, the figures it was judged on, and a Chinese message
//! a supervisor can read out: "轨迹点在网格内占 62%（要求 ≥ 60%）".

use geo::{BoundingRect, Distance, Euclidean, MultiPolygon, Point, Rect};
use serde::{Deserialize, Serialize};
use sync_protocol::schema::{Fix, PatrolStatus, PatrolView};
use utoipa::ToSchema;

use super::coords::{LocalFrame, metres, to_wgs84};
use crate::grids::prepared::PreparedShape;

/// What makes a patrol count, and which signals are how serious. A jurisdiction's policy file
/// sets these; the defaults are this module's own, conservative choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PatrolRules {
    /// Share of fixes inside the grid (a fix whose accuracy circle touches the grid is inside).
    pub min_inside_share: f64,
    pub min_duration_minutes: f64,
    pub min_fixes: u32,
    /// Length of the track, metres (0: not checked).
    pub min_distance_m: f64,
    pub min_photos: u32,
    /// Faster than this, sustained for `sustained_speed_seconds` or more (beyond what the fixes'
    /// accuracy explains), is `impossible_speed`: no vehicle an inspector uses goes so fast.
    pub max_speed_kmh: f64,
    /// How long a stretch above `max_speed_kmh` must last to count: shorter ones are GPS glitches.
    pub sustained_speed_seconds: f64,
    /// Two consecutive fixes at least this far apart (beyond their accuracy) ...
    pub teleport_distance_m: f64,
    /// ... and faster than this between them are a `teleport` (a spoofer leaking the real place).
    pub teleport_speed_kmh: f64,
    /// A patrol whose fixes all stay this close to their centre never moved ("desk patrol").
    pub desk_radius_m: f64,
    /// A stretch without fixes longer than this is a `track_gap` (soft: tunnels and valleys
    /// happen).
    pub max_gap_minutes: f64,
    /// A photo taken (EXIF time) more than this before the start or after the end.
    pub photo_time_slack_minutes: f64,
    /// A photo taken (EXIF position) farther than this from every fix of the track.
    pub photo_distance_m: f64,
    /// The phone's clock ahead of the server's receive time by more than this.
    pub max_clock_ahead_minutes: f64,
    /// `replayed_track`: an earlier patrol's fixes within this many metres of this one's, point
    /// for point at one time shift (the noise a copy may have had added) ...
    pub replay_tolerance_m: f64,
    /// ... for at least this many fixes ...
    pub replay_min_fixes: u32,
    /// ... over at least this many minutes ...
    pub replay_min_minutes: f64,
    /// ... going at least this far (standing at the same office on two days is no copy) ...
    pub replay_min_distance_m: f64,
    /// ... shifted by at least this much (less: two inspectors walking together) ...
    pub replay_min_shift_minutes: f64,
    /// ... from a patrol received at most this many days before.
    pub replay_lookback_days: f64,
    /// Signals that stop a patrol from counting; the others are shown to the supervisor.
    pub hard_signals: Vec<Signal>,
}

impl Default for PatrolRules {
    fn default() -> Self {
        PatrolRules {
            min_inside_share: 0.6,
            min_duration_minutes: 20.0,
            min_fixes: 10,
            min_distance_m: 0.0,
            min_photos: 1,
            max_speed_kmh: 120.0,
            sustained_speed_seconds: 60.0,
            teleport_distance_m: 1000.0,
            teleport_speed_kmh: 300.0,
            desk_radius_m: 30.0,
            max_gap_minutes: 5.0,
            photo_time_slack_minutes: 30.0,
            photo_distance_m: 1000.0,
            max_clock_ahead_minutes: 10.0,
            replay_tolerance_m: 15.0,
            replay_min_fixes: 20,
            replay_min_minutes: 10.0,
            replay_min_distance_m: 300.0,
            replay_min_shift_minutes: 30.0,
            replay_lookback_days: 90.0,
            hard_signals: Signal::HARD_BY_DEFAULT.to_vec(),
        }
    }
}

/// A fraud signal (巡查走形式).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    MockLocation,
    /// Consecutive fixes kilometres apart within seconds.
    Teleport,
    /// Sustained faster than any vehicle an inspector uses.
    ImpossibleSpeed,
    DeskPatrol,
    /// A stretch without fixes (`long_gap` in policy files before 2026-12).
    #[serde(alias = "long_gap")]
    TrackGap,
    /// Some photos taken outside the patrol's time.
    PhotoTimeOutside,
    /// Every dated photo taken outside the patrol's time: none belongs to this patrol.
    NoPhotoInPatrol,
    PhotoFarFromTrack,
    /// The very same photo file (the same SHA-256) in an earlier patrol.
    PhotoReused,
    /// A picture that looks the same (perceptual hash within 8 bits) in an earlier patrol: a
    /// re-encoded copy, or an honest photo of the same view (key points are photographed every
    /// fortnight), so soft by default.
    PhotoNearDuplicate,
    ClockAhead,
    /// An earlier patrol's track, point for point after a time shift, whole or in part.
    ReplayedTrack,
}

impl Signal {
    /// Hard unless a policy says otherwise (GridPatrol defaults; docs/POLICY.md).
    pub const HARD_BY_DEFAULT: [Signal; 7] = [
        Signal::MockLocation,
        Signal::Teleport,
        Signal::ImpossibleSpeed,
        Signal::DeskPatrol,
        Signal::NoPhotoInPatrol,
        Signal::PhotoReused,
        Signal::ReplayedTrack,
    ];
    pub fn code(self) -> &'static str {
        match self {
            Signal::MockLocation => "mock_location",
            Signal::Teleport => "teleport",
            Signal::ImpossibleSpeed => "impossible_speed",
            Signal::DeskPatrol => "desk_patrol",
            Signal::TrackGap => "track_gap",
            Signal::PhotoTimeOutside => "photo_time_outside",
            Signal::NoPhotoInPatrol => "no_photo_in_patrol",
            Signal::PhotoFarFromTrack => "photo_far_from_track",
            Signal::PhotoReused => "photo_reused",
            Signal::PhotoNearDuplicate => "photo_near_duplicate",
            Signal::ClockAhead => "clock_ahead",
            Signal::ReplayedTrack => "replayed_track",
        }
    }
}

/// A photo as the verdict sees it: what the server read from its EXIF, and whether it was seen
/// before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhotoEvidence {
    pub sha256: String,
    /// The bytes have arrived and passed the checks.
    pub received: bool,
    /// EXIF time taken, as Unix ms (the camera's local time read in the jurisdiction's zone).
    pub taken_at_ms: Option<i64>,
    /// EXIF position, WGS-84.
    pub position: Option<(f64, f64)>,
    /// An earlier patrol with the same photo file or one that looks the same.
    pub reused_from: Option<Reuse>,
}

/// Where a reused photo was seen before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reuse {
    /// The earlier patrol (its whole id).
    pub patrol: String,
    /// Its inspector's display name.
    pub inspector: String,
    /// Its day, in the jurisdiction's time zone (YYYY-MM-DD).
    pub date: String,
    /// Perceptual-hash bits apart: 0 with `identical` for the very same file.
    pub distance: u32,
    /// The same file, byte for byte (the same SHA-256).
    pub identical: bool,
}

/// A key point (重点监控点位) of the patrol's grid.
pub struct KeyPointRef<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub shape: &'a MultiPolygon<f64>,
}

/// Whether the patrol came to a key point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyPointVisit {
    pub code: String,
    pub name: String,
    pub visited: bool,
    pub message: String,
}

/// Everything a verdict is made from besides the patrol itself.
pub struct Context<'a> {
    /// The key points of the grid; a fix within `visit_radius_m` (plus its accuracy) visits one.
    pub key_points: &'a [KeyPointRef<'a>],
    pub visit_radius_m: f64,
    /// The grid's outline, WGS-84.
    pub grid: &'a MultiPolygon<f64>,
    pub rules: &'a PatrolRules,
    pub photos: &'a [PhotoEvidence],
    /// The server's receive time of the patrol's last change (trusted time), Unix ms.
    pub received_at_ms: Option<i64>,
    /// An earlier patrol whose track this one's replays.
    pub replayed: Option<Replayed>,
}

/// An earlier patrol whose track a patrol's replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replayed {
    /// The earlier patrol, its inspector and day (as for a reused photo).
    pub earlier: Reuse,
    #[serde(flatten)]
    pub found: super::replay::ReplayMatch,
}

/// One check of the rules: passed or not, with the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reason {
    /// `inside_share`, `duration`, `fixes`, `distance`, `photos`, `submitted`.
    pub code: String,
    pub passed: bool,
    /// What was measured and what was required.
    pub value: f64,
    pub required: f64,
    pub message: String,
}

/// A fraud signal found on the patrol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flag {
    pub signal: Signal,
    /// Hard: the patrol does not count. Soft: shown to the supervisor.
    pub hard: bool,
    pub message: String,
    /// The evidence, for a screen to show: for a teleport the two fixes (`from`, `to`: lon, lat,
    /// time), `distance_m` and `seconds`; for a sustained speed the stretch; for a reused photo
    /// the photo and the earlier patrol ([`Reuse`]).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub evidence: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub counted: bool,
    pub reasons: Vec<Reason>,
    pub flags: Vec<Flag>,
    /// The grid's key points, visited or not.
    #[serde(default)]
    pub key_points: Vec<KeyPointVisit>,
}

/// A fix in WGS-84 and in the local metre frame.
struct Point2 {
    at_ms: i64,
    lon: f64,
    lat: f64,
    x: f64,
    y: f64,
    accuracy_m: f64,
    mock: bool,
    /// The phone said the fix is coarser than [`COARSE_M`] (a cell-tower or Wi-Fi position).
    coarse: bool,
}

/// Beyond this claimed accuracy a fix says where the phone was only roughly: it counts for no
/// more than this anywhere (a claim of kilometres must not explain a spoofer's jumps away), and it
/// is left out of the teleport and speed checks, which it can only mislead (a tower fix 2 km off
/// that honestly says so is no jump).
const COARSE_M: f64 = 500.0;

/// How far a phone lying still scatters its fixes, in its accuracies (median): the desk
/// circle is at least this wide.
const DESK_SCATTER_PER_ACCURACY: f64 = 2.5;

/// Judges a patrol.
pub fn judge(patrol: &PatrolView, context: &Context<'_>) -> Verdict {
    let rules = context.rules;
    let fixes = wgs84_track(&patrol.track);
    let mut reasons = Vec::new();
    let mut flags = Vec::new();
    let submitted = patrol.status == PatrolStatus::Submitted;
    reasons.push(Reason {
        code: "submitted".into(),
        passed: submitted,
        value: f64::from(u8::from(submitted)),
        required: 1.0,
        message: if submitted {
            "巡查已提交".into()
        } else {
            "巡查尚未提交（仍在记录中）".into()
        },
    });

    // Inside the grid, accuracy in the patrol's favour.
    let frame = fixes
        .first()
        .map(|f| LocalFrame::around(f.lon, f.lat))
        .unwrap_or_else(|| LocalFrame::around(0.0, 0.0));
    let grid_m = Reach::new(project_grid(context.grid, &frame));
    let fixes: Vec<Point2> = fixes
        .into_iter()
        .map(|mut f| {
            (f.x, f.y) = frame.project(f.lon, f.lat);
            f
        })
        .collect();
    let inside = fixes
        .iter()
        .filter(|f| grid_m.within(f.x, f.y, f.accuracy_m))
        .count();
    let share = if fixes.is_empty() {
        0.0
    } else {
        inside as f64 / fixes.len() as f64
    };
    reasons.push(Reason {
        code: "inside_share".into(),
        passed: share >= rules.min_inside_share && !fixes.is_empty(),
        value: share,
        required: rules.min_inside_share,
        message: format!(
            "轨迹点在网格内占 {:.0}%（要求 ≥ {:.0}%）",
            share * 100.0,
            rules.min_inside_share * 100.0
        ),
    });

    // Duration is the time the fixes cover, not the phone's start and end stamps (which an app
    // can set to anything): a patrol is as long as its track.
    let (first_ms, last_ms) = match (fixes.first(), fixes.last()) {
        (Some(first), Some(last)) => (first.at_ms, last.at_ms),
        _ => (patrol.started_at_ms, patrol.started_at_ms),
    };
    let minutes = (last_ms - first_ms).max(0) as f64 / 60_000.0;
    reasons.push(Reason {
        code: "duration".into(),
        passed: minutes >= rules.min_duration_minutes,
        value: minutes,
        required: rules.min_duration_minutes,
        message: format!(
            "巡查时长 {minutes:.0} 分钟（要求 ≥ {:.0} 分钟）",
            rules.min_duration_minutes
        ),
    });
    reasons.push(Reason {
        code: "fixes".into(),
        passed: fixes.len() as u32 >= rules.min_fixes,
        value: fixes.len() as f64,
        required: f64::from(rules.min_fixes),
        message: format!("轨迹点 {} 个（要求 ≥ {} 个）", fixes.len(), rules.min_fixes),
    });
    if rules.min_distance_m > 0.0 {
        let length: f64 = fixes
            .windows(2)
            .map(|w| metres((w[0].lon, w[0].lat), (w[1].lon, w[1].lat)))
            .sum();
        reasons.push(Reason {
            code: "distance".into(),
            passed: length >= rules.min_distance_m,
            value: length,
            required: rules.min_distance_m,
            message: format!(
                "巡查路程 {length:.0} 米（要求 ≥ {:.0} 米）",
                rules.min_distance_m
            ),
        });
    }
    let photos = context.photos.iter().filter(|p| p.received).count() as u32;
    let referenced = patrol.photos.len() as u32;
    reasons.push(Reason {
        code: "photos".into(),
        passed: photos >= rules.min_photos,
        value: f64::from(photos),
        required: f64::from(rules.min_photos),
        message: if referenced > photos {
            format!(
                "照片 {photos} 张已上传（另有 {} 张未到）（要求 ≥ {} 张）",
                referenced - photos,
                rules.min_photos
            )
        } else {
            format!("照片 {photos} 张（要求 ≥ {} 张）", rules.min_photos)
        },
    });

    // Fraud signals.
    let hard = |signal: Signal| rules.hard_signals.contains(&signal);
    let mocked = fixes.iter().filter(|f| f.mock).count();
    if mocked > 0 {
        flags.push(Flag {
            signal: Signal::MockLocation,
            hard: hard(Signal::MockLocation),
            message: format!("{mocked} 个轨迹点来自模拟定位（虚拟定位软件）"),
            evidence: serde_json::json!({"fixes": mocked}),
        });
    }
    flags.extend(speed_flags(&fixes, rules));
    if fixes.len() >= 2 && minutes >= rules.min_duration_minutes.min(10.0) {
        let (cx, cy) = (
            fixes.iter().map(|f| f.x).sum::<f64>() / fixes.len() as f64,
            fixes.iter().map(|f| f.y).sum::<f64>() / fixes.len() as f64,
        );
        let farthest = fixes
            .iter()
            .map(|f| ((f.x - cx).powi(2) + (f.y - cy).powi(2)).sqrt())
            .fold(0.0, f64::max);
        // Poor accuracy widens the circle: a phone with 50 m fixes that sits still wobbles more.
        // Accuracy is a 68 % radius, and a still phone's fixes scatter to about 2.3 times it
        // (the labelled corpus's desk patrols with 15–25 m fixes went 1.4 times it and escaped
        // a circle of one accuracy).
        let mut accuracies: Vec<f64> = fixes.iter().map(|f| f.accuracy_m).collect();
        accuracies.sort_by(f64::total_cmp);
        let radius = rules
            .desk_radius_m
            .max(DESK_SCATTER_PER_ACCURACY * accuracies[accuracies.len() / 2]);
        if farthest <= radius {
            flags.push(Flag {
                signal: Signal::DeskPatrol,
                hard: hard(Signal::DeskPatrol),
                message: format!(
                    "{minutes:.0} 分钟内所有轨迹点都在 {farthest:.0} 米范围内，未见移动"
                ),
                evidence: serde_json::json!({"radius_m": farthest, "minutes": minutes}),
            });
        }
    }
    let gap = fixes
        .windows(2)
        .map(|w| (w[1].at_ms - w[0].at_ms) as f64 / 60_000.0)
        .fold(0.0, f64::max);
    if gap > rules.max_gap_minutes {
        flags.push(Flag {
            signal: Signal::TrackGap,
            hard: hard(Signal::TrackGap),
            message: format!(
                "轨迹中断 {gap:.0} 分钟（超过 {:.0} 分钟；隧道、山谷可能无信号）",
                rules.max_gap_minutes
            ),
            evidence: serde_json::json!({"minutes": gap}),
        });
    }
    flags.extend(photo_flags(&fixes, context, first_ms, last_ms));
    if let Some(replayed) = &context.replayed {
        let shift_h = replayed.found.shift_ms as f64 / 3_600_000.0;
        flags.push(Flag {
            signal: Signal::ReplayedTrack,
            hard: hard(Signal::ReplayedTrack),
            message: format!(
                "轨迹与 {} 在 {} 的巡查 {} 的轨迹逐点重合：{} 个轨迹点、{:.0} 分钟，时间整体平移 {shift_h:.1} 小时（中位偏差 {:.0} 米）",
                replayed.earlier.inspector,
                replayed.earlier.date,
                replayed.earlier.patrol,
                replayed.found.matched,
                replayed.found.minutes,
                replayed.found.median_offset_m
            ),
            evidence: serde_json::to_value(replayed).unwrap_or_default(),
        });
    }
    if let (Some(received), Some(last)) = (context.received_at_ms, fixes.last()) {
        let end = patrol.ended_at_ms.unwrap_or(patrol.started_at_ms);
        let ahead = (last.at_ms.max(end) - received) as f64 / 60_000.0;
        if ahead > rules.max_clock_ahead_minutes {
            flags.push(Flag {
                signal: Signal::ClockAhead,
                hard: hard(Signal::ClockAhead),
                message: format!("手机时间比服务器接收时间快 {ahead:.0} 分钟"),
                evidence: serde_json::json!({"minutes": ahead}),
            });
        }
    }

    let key_points = context
        .key_points
        .iter()
        .map(|point| {
            let shape = Reach::new(project_grid(point.shape, &frame));
            let visited = fixes
                .iter()
                .any(|f| shape.within(f.x, f.y, context.visit_radius_m + f.accuracy_m));
            KeyPointVisit {
                code: point.code.to_string(),
                name: point.name.to_string(),
                visited,
                message: if visited {
                    format!("重点点位 {} 已巡查", point.name)
                } else {
                    format!("重点点位 {} 未到达", point.name)
                },
            }
        })
        .collect();
    let counted = reasons.iter().all(|r| r.passed) && !flags.iter().any(|f| f.hard);
    Verdict {
        counted,
        reasons,
        flags,
        key_points,
    }
}

fn fix_json(f: &Point2) -> serde_json::Value {
    serde_json::json!({"lon": f.lon, "lat": f.lat, "at_ms": f.at_ms, "accuracy_m": f.accuracy_m})
}

/// Metres between two fixes beyond what their accuracy explains.
fn unexplained(a: &Point2, b: &Point2) -> f64 {
    let apart = ((b.x - a.x).powi(2) + (b.y - a.y).powi(2)).sqrt();
    (apart - a.accuracy_m - b.accuracy_m).max(0.0)
}

fn is_teleport(a: &Point2, b: &Point2, rules: &PatrolRules) -> bool {
    let seconds = (b.at_ms - a.at_ms) as f64 / 1000.0;
    let moved = unexplained(a, b);
    moved >= rules.teleport_distance_m
        && (seconds <= 0.0 || moved / seconds * 3.6 > rules.teleport_speed_kmh)
}

/// `teleport` (consecutive fixes kilometres apart within seconds) and `impossible_speed` (a
/// stretch of at least `sustained_speed_seconds` covered faster than `max_speed_kmh`). A single
/// wild fix between good ones moves neither: a glitch hundreds of metres off and back is short
/// and near, and over a minute its start and end are where the walk was.
fn speed_flags(all: &[Point2], rules: &PatrolRules) -> Vec<Flag> {
    let fixes: Vec<&Point2> = all.iter().filter(|f| !f.coarse).collect();
    let hard = |signal: Signal| rules.hard_signals.contains(&signal);
    let mut flags = Vec::new();
    let mut teleports = 0;
    let mut worst: Option<(usize, f64, f64)> = None;
    for (i, w) in fixes.windows(2).enumerate() {
        let seconds = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
        let moved = unexplained(w[0], w[1]);
        if is_teleport(w[0], w[1], rules) {
            teleports += 1;
            if worst.is_none_or(|(_, m, _)| moved > m) {
                worst = Some((i, moved, seconds));
            }
        }
    }
    if let Some((i, moved, seconds)) = worst {
        flags.push(Flag {
            signal: Signal::Teleport,
            hard: hard(Signal::Teleport),
            message: format!(
                "轨迹瞬移 {teleports} 处：{:.1} 公里只用了 {seconds:.0} 秒（不可能到达）",
                moved / 1000.0
            ),
            evidence: serde_json::json!({
                "from": fix_json(fixes[i]), "to": fix_json(fixes[i + 1]),
                "distance_m": moved, "seconds": seconds, "count": teleports,
            }),
        });
    }
    // Sustained speed: from each fix, the first fix at least the window later; what lies between
    // their accuracy circles over the time between them.
    let window_ms = (rules.sustained_speed_seconds * 1000.0) as i64;
    let mut fastest: Option<(usize, usize, f64)> = None;
    let mut j = 0;
    for i in 0..fixes.len() {
        j = j.max(i + 1);
        while j < fixes.len() && fixes[j].at_ms - fixes[i].at_ms < window_ms {
            j += 1;
        }
        if j >= fixes.len() {
            break;
        }
        let seconds = (fixes[j].at_ms - fixes[i].at_ms) as f64 / 1000.0;
        let kmh = unexplained(fixes[i], fixes[j]) / seconds * 3.6;
        // A teleport inside the stretch is its own signal, not a speed.
        let leap = (i..j).any(|k| is_teleport(fixes[k], fixes[k + 1], rules));
        if kmh > rules.max_speed_kmh && !leap && fastest.is_none_or(|(_, _, k)| kmh > k) {
            fastest = Some((i, j, kmh));
        }
    }
    if let Some((i, j, kmh)) = fastest {
        let seconds = (fixes[j].at_ms - fixes[i].at_ms) as f64 / 1000.0;
        flags.push(Flag {
            signal: Signal::ImpossibleSpeed,
            hard: hard(Signal::ImpossibleSpeed),
            message: format!(
                "轨迹有 {seconds:.0} 秒以 {kmh:.0} 公里/小时移动（超过 {:.0} 公里/小时，任何巡查交通工具都达不到）",
                rules.max_speed_kmh
            ),
            evidence: serde_json::json!({
                "from": fix_json(fixes[i]), "to": fix_json(fixes[j]),
                "kmh": kmh, "seconds": seconds,
            }),
        });
    }
    flags
}

/// The photo signals: taken outside the time the fixes cover (some: soft; every dated one:
/// `no_photo_in_patrol`), far from the track, reused from an earlier patrol.
fn photo_flags(fixes: &[Point2], context: &Context<'_>, first_ms: i64, last_ms: i64) -> Vec<Flag> {
    let rules = context.rules;
    let hard = |signal: Signal| rules.hard_signals.contains(&signal);
    let mut flags = Vec::new();
    let slack = (rules.photo_time_slack_minutes * 60_000.0) as i64;
    let dated: Vec<&PhotoEvidence> = context
        .photos
        .iter()
        .filter(|p| p.taken_at_ms.is_some())
        .collect();
    let outside: Vec<&PhotoEvidence> = dated
        .iter()
        .copied()
        .filter(|p| {
            p.taken_at_ms
                .is_some_and(|t| t < first_ms - slack || t > last_ms + slack)
        })
        .collect();
    let days_off = |p: &PhotoEvidence| {
        let t = p.taken_at_ms.unwrap_or(first_ms);
        let off = if t < first_ms {
            first_ms - t
        } else {
            t - last_ms
        };
        off as f64 / 3_600_000.0
    };
    if !dated.is_empty() && outside.len() == dated.len() {
        let nearest = outside
            .iter()
            .map(|p| days_off(p))
            .fold(f64::INFINITY, f64::min);
        flags.push(Flag {
            signal: Signal::NoPhotoInPatrol,
            hard: hard(Signal::NoPhotoInPatrol),
            message: format!(
                "{} 张照片的拍摄时间都不在巡查时段内（最近的一张相差 {nearest:.1} 小时）：没有一张照片属于这次巡查",
                outside.len()
            ),
            evidence: serde_json::json!({
                "photos": outside.iter().map(|p| serde_json::json!({"sha256": p.sha256, "taken_at_ms": p.taken_at_ms})).collect::<Vec<_>>(),
                "patrol_from_ms": first_ms, "patrol_to_ms": last_ms,
            }),
        });
    } else {
        for photo in outside {
            flags.push(Flag {
                signal: Signal::PhotoTimeOutside,
                hard: hard(Signal::PhotoTimeOutside),
                message: format!(
                    "照片 {} 的拍摄时间不在巡查时段内（相差 {:.1} 小时）",
                    short(&photo.sha256),
                    days_off(photo)
                ),
                evidence: serde_json::json!({"sha256": photo.sha256, "taken_at_ms": photo.taken_at_ms,
                    "patrol_from_ms": first_ms, "patrol_to_ms": last_ms}),
            });
        }
    }
    for photo in context.photos {
        if let Some(position) = photo.position
            && !fixes.is_empty()
        {
            let nearest = fixes
                .iter()
                .map(|f| metres(position, (f.lon, f.lat)))
                .fold(f64::INFINITY, f64::min);
            if nearest > rules.photo_distance_m {
                flags.push(Flag {
                    signal: Signal::PhotoFarFromTrack,
                    hard: hard(Signal::PhotoFarFromTrack),
                    message: format!(
                        "照片 {} 的拍摄地点距轨迹 {nearest:.0} 米",
                        short(&photo.sha256)
                    ),
                    evidence: serde_json::json!({"sha256": photo.sha256, "lon": position.0,
                        "lat": position.1, "distance_m": nearest}),
                });
            }
        }
        if let Some(reuse) = &photo.reused_from {
            let (signal, how) = if reuse.identical {
                (Signal::PhotoReused, "是同一个文件".to_string())
            } else {
                (
                    Signal::PhotoNearDuplicate,
                    format!("极相似（差 {} 位）", reuse.distance),
                )
            };
            flags.push(Flag {
                signal,
                hard: hard(signal),
                message: format!(
                    "照片 {} 与 {} 在 {} 的巡查 {} 中的照片{how}",
                    short(&photo.sha256),
                    reuse.inspector,
                    reuse.date,
                    reuse.patrol
                ),
                evidence: serde_json::json!({"sha256": photo.sha256, "earlier": reuse}),
            });
        }
    }
    flags
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// Each fix of a track in WGS-84 with whether it counts as inside the grid, by the same test as
/// [`judge`] (its accuracy circle touching the grid): (lon, lat, time, inside). For drawing.
pub fn fixes_inside(track: &[Fix], grid: &MultiPolygon<f64>) -> Vec<(f64, f64, i64, bool)> {
    let fixes = wgs84_track(track);
    let Some(first) = fixes.first() else {
        return Vec::new();
    };
    let frame = LocalFrame::around(first.lon, first.lat);
    let grid_m = Reach::new(project_grid(grid, &frame));
    fixes
        .iter()
        .map(|f| {
            let (x, y) = frame.project(f.lon, f.lat);
            let inside = grid_m.within(x, y, f.accuracy_m);
            (f.lon, f.lat, f.at_ms, inside)
        })
        .collect()
}

fn wgs84_track(track: &[Fix]) -> Vec<Point2> {
    track
        .iter()
        .filter_map(|fix| {
            let (lon, lat) = to_wgs84(fix.lon, fix.lat, fix.datum)?;
            Some(Point2 {
                at_ms: fix.at_ms,
                lon,
                lat,
                x: 0.0,
                y: 0.0,
                // A fix without an accuracy gets none in its favour.
                accuracy_m: fix.accuracy_m.map_or(0.0, f64::from).clamp(0.0, COARSE_M),
                mock: fix.mock,
                coarse: fix.accuracy_m.is_some_and(|a| f64::from(a) > COARSE_M),
            })
        })
        .collect()
}

/// A shape in metres, asked for many points whether they lie within some distance of it. The
/// answer is `geo`'s distance (zero inside) compared with the distance, found the cheap way for
/// most points: a point in the shape is answered by the prepared crossing test (a few edges), a
/// point beyond the shape's box by more than the distance by the box; only the rest pay for the
/// distance to every edge. Judging a patrol asks this for each of its hundreds of fixes.
struct Reach {
    shape: MultiPolygon<f64>,
    prepared: PreparedShape,
    bounds: Option<Rect<f64>>,
}

impl Reach {
    fn new(shape: MultiPolygon<f64>) -> Reach {
        Reach {
            prepared: PreparedShape::new(&shape),
            bounds: shape.bounding_rect(),
            shape,
        }
    }

    /// The point (x, y) lies within `distance` metres of the shape, or in it.
    fn within(&self, x: f64, y: f64, distance: f64) -> bool {
        // No point is within a negative or NaN distance (as `geo`'s distance, never negative,
        // compared with it says); and nothing is near an empty shape.
        let Some(bounds) = self.bounds.filter(|_| distance >= 0.0) else {
            return false;
        };
        if x < bounds.min().x - distance
            || x > bounds.max().x + distance
            || y < bounds.min().y - distance
            || y > bounds.max().y + distance
        {
            return false;
        }
        self.prepared.contains(x, y)
            || Euclidean.distance(&self.shape, &Point::new(x, y)) <= distance
    }
}

fn project_grid(grid: &MultiPolygon<f64>, frame: &LocalFrame) -> MultiPolygon<f64> {
    use geo::MapCoords;
    grid.map_coords(|c| {
        let (x, y) = frame.project(c.x, c.y);
        geo::Coord { x, y }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::schema::{Datum, DocKind, FixSource, Identity, Method, PhotoRef};

    const START: i64 = 1_795_395_600_000; // 2026-11-23 09:00 China time

    /// `Reach::within` answers as `geo`'s distance to the shape does (zero inside), for points
    /// inside, outside, in a hole, beyond the box, and for odd distances.
    #[test]
    fn reach_answers_as_the_distance_does() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let star: Vec<(f64, f64)> = (0..41)
            .map(|i| {
                let a = std::f64::consts::TAU * f64::from(i % 40) / 40.0;
                let r = if i % 2 == 0 { 500.0 } else { 220.0 };
                (r * a.cos(), r * a.sin())
            })
            .collect();
        let hole = vec![
            (-50.0, -50.0),
            (50.0, -50.0),
            (50.0, 50.0),
            (-50.0, 50.0),
            (-50.0, -50.0),
        ];
        let shape = MultiPolygon::new(vec![
            geo::Polygon::new(star.into(), vec![hole.into()]),
            geo::Polygon::new(
                vec![(900.0, 0.0), (950.0, 0.0), (950.0, 40.0), (900.0, 0.0)].into(),
                vec![],
            ),
        ]);
        let reach = Reach::new(shape.clone());
        let mut rng = StdRng::seed_from_u64(7);
        let (mut near, mut far) = (0, 0);
        for _ in 0..20_000 {
            let (x, y) = (
                rng.random_range(-700.0..1100.0),
                rng.random_range(-700.0..700.0),
            );
            let distance = match rng.random_range(0..10) {
                0 => f64::NAN,
                1 => -3.0,
                2 => 0.0,
                _ => rng.random_range(0.0..120.0),
            };
            let expected = Euclidean.distance(&shape, &Point::new(x, y)) <= distance;
            assert_eq!(
                reach.within(x, y, distance),
                expected,
                "({x}, {y}) within {distance}"
            );
            if expected { near += 1 } else { far += 1 }
        }
        assert!(near > 2_000 && far > 2_000, "{near} near, {far} far");
        assert!(!Reach::new(MultiPolygon::new(vec![])).within(0.0, 0.0, 10.0));
    }

    /// A square village of about 1 km a side around (108.52, 25.93).
    fn grid() -> MultiPolygon<f64> {
        let (w, s, e, n) = (108.515, 25.925, 108.525, 25.935);
        MultiPolygon::new(vec![geo::Polygon::new(
            geo::LineString::from(vec![(w, s), (e, s), (e, n), (w, n), (w, s)]),
            vec![],
        )])
    }

    fn fix(minute: i64, lon: f64, lat: f64) -> Fix {
        Fix {
            at_ms: START + minute * 60_000,
            lon,
            lat,
            datum: Datum::Wgs84,
            accuracy_m: Some(8.0),
            source: FixSource::Gnss,
            mock: false,
        }
    }

    /// A walk of 40 minutes, a fix a minute, west to east across the village and a little beyond.
    fn walk() -> Vec<Fix> {
        (0..=40)
            .map(|m| fix(m, 108.516 + 0.00025 * m as f64, 25.93))
            .collect()
    }

    fn patrol(track: Vec<Fix>, photos: usize) -> PatrolView {
        PatrolView {
            identity: Identity {
                kind: DocKind::Patrol,
                id: "p".into(),
                grid: "522632100001".into(),
                inspector: 1,
                device: 1,
            },
            method: Method::Routine,
            started_at_ms: START,
            ended_at_ms: Some(START + 40 * 60_000),
            status: PatrolStatus::Submitted,
            track,
            notes: vec![],
            photos: (0..photos)
                .map(|i| PhotoRef {
                    sha256: format!("{i:064x}"),
                    taken_at_ms: START + 600_000,
                    position: None,
                    caption: String::new(),
                })
                .collect(),
            problems: vec![],
            review: None,
        }
    }

    fn photo(n: usize) -> PhotoEvidence {
        PhotoEvidence {
            sha256: format!("{n:064x}"),
            received: true,
            taken_at_ms: Some(START + 10 * 60_000),
            position: Some((108.52, 25.93)),
            reused_from: None,
        }
    }

    fn judged(patrol: &PatrolView, photos: &[PhotoEvidence]) -> Verdict {
        let grid = grid();
        let rules = PatrolRules::default();
        judge(
            patrol,
            &Context {
                key_points: &[],
                visit_radius_m: 100.0,
                grid: &grid,
                rules: &rules,
                photos,
                received_at_ms: Some(START + 41 * 60_000),
                replayed: None,
            },
        )
    }

    fn reason<'a>(verdict: &'a Verdict, code: &str) -> &'a Reason {
        verdict
            .reasons
            .iter()
            .find(|r| r.code == code)
            .unwrap_or_else(|| panic!("no {code} in {verdict:?}"))
    }

    fn signals(verdict: &Verdict) -> Vec<(Signal, bool)> {
        verdict.flags.iter().map(|f| (f.signal, f.hard)).collect()
    }

    #[test]
    fn an_honest_patrol_counts_and_says_why() {
        let verdict = judged(&patrol(walk(), 1), &[photo(0)]);
        assert!(verdict.counted, "{verdict:?}");
        assert!(verdict.flags.is_empty(), "{verdict:?}");
        let inside = reason(&verdict, "inside_share");
        // 0.516 → 0.526: the last 4 minutes are east of 0.525, a few metres' accuracy aside.
        assert!((0.85..0.95).contains(&inside.value), "{inside:?}");
        assert!(
            inside.message.starts_with("轨迹点在网格内占"),
            "{}",
            inside.message
        );
        assert_eq!(reason(&verdict, "duration").value, 40.0);
        assert_eq!(
            reason(&verdict, "photos").message,
            "照片 1 张（要求 ≥ 1 张）"
        );
    }

    #[test]
    fn an_honest_gcj02_patrol_counts_once_converted() {
        // The same walk as a Chinese map SDK reports it: shifted a few hundred metres.
        let shifted: Vec<Fix> = walk()
            .into_iter()
            .map(|mut f| {
                let c = gcoord::transform(
                    gcoord::Coordinate::new(f.lon, f.lat),
                    gcoord::CoordSystem::WGS84,
                    gcoord::CoordSystem::GCJ02,
                )
                .expect("forward");
                (f.lon, f.lat, f.datum) = (c.lng, c.lat, Datum::Gcj02);
                f
            })
            .collect();
        let verdict = judged(&patrol(shifted.clone(), 1), &[photo(0)]);
        assert!(verdict.counted, "{verdict:?}");
        // Read as if it were WGS-84, the same fixes fall short: the conversion is what saves it.
        let unconverted: Vec<Fix> = shifted
            .into_iter()
            .map(|mut f| {
                f.datum = Datum::Wgs84;
                f
            })
            .collect();
        let wrong = judged(&patrol(unconverted, 1), &[photo(0)]);
        assert!(
            reason(&wrong, "inside_share").value < reason(&verdict, "inside_share").value,
            "{wrong:?}"
        );
    }

    #[test]
    fn accuracy_counts_in_the_patrols_favour() {
        // Walking along the northern edge, 20 m outside it, with 30 m accuracy: inside.
        let edge = 25.935 + 20.0 / 111_000.0;
        let mut track: Vec<Fix> = (0..=40)
            .map(|m| fix(m, 108.516 + 0.0002 * m as f64, edge))
            .collect();
        for f in &mut track {
            f.accuracy_m = Some(30.0);
        }
        let verdict = judged(&patrol(track.clone(), 1), &[photo(0)]);
        assert_eq!(reason(&verdict, "inside_share").value, 1.0);
        // With 5 m accuracy the same fixes are outside.
        for f in &mut track {
            f.accuracy_m = Some(5.0);
        }
        let verdict = judged(&patrol(track, 1), &[photo(0)]);
        assert_eq!(reason(&verdict, "inside_share").value, 0.0);
        assert!(!verdict.counted);
    }

    #[test]
    fn mock_locations_and_desk_patrols_do_not_count() {
        let mut track = walk();
        track[5].mock = true;
        let verdict = judged(&patrol(track, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::MockLocation, true)]);
        assert!(!verdict.counted);

        // 40 minutes at the village office, wobbling by a few metres.
        let desk: Vec<Fix> = (0..=40)
            .map(|m| fix(m, 108.52 + 0.00003 * (m % 3) as f64, 25.93))
            .collect();
        let verdict = judged(&patrol(desk, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::DeskPatrol, true)]);
        assert!(!verdict.counted);

        // Indoors with 20 m fixes the phone scatters its fixes 40 m around the desk: still a
        // desk. The same walk with 80 m fixes is a walk.
        let indoors: Vec<Fix> = (0..=40)
            .map(|m| {
                let (east, north) = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][m % 4];
                let mut f = fix(m as i64, 108.52 + 0.0004 * east, 25.93 + 0.00036 * north);
                f.accuracy_m = Some(20.0);
                f
            })
            .collect();
        let verdict = judged(&patrol(indoors, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::DeskPatrol, true)]);
        let mut poor = walk();
        for f in &mut poor {
            f.accuracy_m = Some(80.0);
        }
        let verdict = judged(&patrol(poor, 1), &[photo(0)]);
        assert!(verdict.counted, "{verdict:?}");
    }

    #[test]
    fn honest_troubles_are_soft() {
        // A tunnel: 25 minutes without fixes.
        let tunnel: Vec<Fix> = walk()
            .into_iter()
            .filter(|f| !(START + 10 * 60_000..START + 35 * 60_000).contains(&f.at_ms))
            .collect();
        let verdict = judged(&patrol(tunnel, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::TrackGap, false)]);
        // 5 minutes without fixes is not yet a gap; 6 is (soft).
        let short_gap: Vec<Fix> = walk()
            .into_iter()
            .filter(|f| !(START + 11 * 60_000..START + 15 * 60_000).contains(&f.at_ms))
            .collect();
        assert!(judged(&patrol(short_gap, 1), &[photo(0)]).flags.is_empty());
        let gap: Vec<Fix> = walk()
            .into_iter()
            .filter(|f| !(START + 11 * 60_000..START + 16 * 60_000).contains(&f.at_ms))
            .collect();
        assert_eq!(
            signals(&judged(&patrol(gap, 1), &[photo(0)])),
            vec![(Signal::TrackGap, false)]
        );
        // Poor accuracy with noise (a valley): no jump, no flag.
        let noisy: Vec<Fix> = walk()
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                f.accuracy_m = Some(80.0);
                f.lat += if i % 2 == 0 { 0.0006 } else { -0.0006 };
                f
            })
            .collect();
        let verdict = judged(&patrol(noisy, 1), &[photo(0)]);
        assert!(verdict.flags.is_empty(), "{verdict:?}");
        assert!(verdict.counted);
        // One fix 500 m off for a moment (multipath near a cliff): harmless.
        let mut glitch = walk();
        glitch[20].lat += 0.0045;
        let verdict = judged(&patrol(glitch, 1), &[photo(0)]);
        assert!(verdict.flags.is_empty(), "{verdict:?}");
        assert!(verdict.counted);
        // A cell-tower fix 2.5 km off that honestly says it is good to 3 km (found by the
        // labelled corpus, kind `gps_glitch`): no teleport. A spoofer cannot use the same claim
        // for its jumps: a coarse fix counts for no more than 500 m anywhere else.
        let mut tower = walk();
        tower[20].lat += 0.0225;
        tower[20].accuracy_m = Some(3_000.0);
        let verdict = judged(&patrol(tower, 1), &[photo(0)]);
        assert!(verdict.flags.is_empty(), "{verdict:?}");
        assert!(verdict.counted);
        // The same jump from a fix claiming 400 m: 2 km unexplained in a minute, and back.
        let mut leak = walk();
        leak[20].lat += 0.0225;
        leak[20].accuracy_m = Some(400.0);
        let verdict = judged(&patrol(leak, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::ImpossibleSpeed, true)]);
        assert!(!verdict.counted);
    }

    /// Issue 23: teleports and sustained impossible speeds counted with a soft flag.
    #[test]
    fn teleports_and_impossible_speeds_do_not_count() {
        // A spoofer leaking the real position: 10 km away and back within a minute each.
        let mut leak = walk();
        leak[20].lon += 0.1;
        let verdict = judged(&patrol(leak, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::Teleport, true)]);
        assert!(!verdict.counted);
        let flag = &verdict.flags[0];
        assert!(
            flag.message.contains("公里只用了 60 秒"),
            "{}",
            flag.message
        );
        assert_eq!(flag.evidence["seconds"], 60.0);
        assert!(flag.evidence["distance_m"].as_f64().expect("m") > 9_000.0);
        assert_eq!(flag.evidence["from"]["at_ms"], START + 19 * 60_000);
        // Three minutes at 200 km/h on a track a fix a minute: no vehicle an inspector uses.
        let mut fast = walk();
        for (k, f) in fast.iter_mut().enumerate().skip(21) {
            f.lon += 0.0333 * (k.min(24) - 20) as f64;
        }
        let verdict = judged(&patrol(fast, 1), &[photo(0)]);
        assert_eq!(signals(&verdict), vec![(Signal::ImpossibleSpeed, true)]);
        assert!(!verdict.counted);
        // A motorbike at 60 km/h for ten minutes counts.
        let ride: Vec<Fix> = (0..=40)
            .map(|m| {
                let lon = 108.516 + 0.00025 * m.min(30) as f64 + 0.01 * (m - 30).max(0) as f64;
                fix(m, lon.min(108.524), 25.93)
            })
            .collect();
        assert!(judged(&patrol(ride, 1), &[photo(0)]).flags.is_empty());
    }

    #[test]
    fn photos_that_disagree_with_the_patrol_are_shown() {
        let late = PhotoEvidence {
            taken_at_ms: Some(START - 86_400_000),
            ..photo(0)
        };
        let far = PhotoEvidence {
            position: Some((108.60, 25.93)),
            ..photo(1)
        };
        let lookalike = PhotoEvidence {
            reused_from: Some(Reuse {
                patrol: "019a1e81-d000-7000-8000-000000000002".into(),
                inspector: "李娜".into(),
                date: "2026-11-09".into(),
                distance: 5,
                identical: false,
            }),
            ..photo(2)
        };
        let verdict = judged(&patrol(walk(), 3), &[late, far, lookalike]);
        assert_eq!(
            signals(&verdict),
            vec![
                (Signal::PhotoTimeOutside, false),
                (Signal::PhotoFarFromTrack, false),
                (Signal::PhotoNearDuplicate, false),
            ]
        );
        assert!(verdict.flags[2].message.contains("李娜"));
        assert!(verdict.counted, "soft signals do not fail a patrol");
    }

    /// Issue 23: a patrol whose every photo was taken a week earlier counted; a reused photo
    /// named its patrol by an ambiguous prefix.
    #[test]
    fn photos_from_elsewhere_fail_the_patrol_and_name_their_source() {
        let week_ago = |n| PhotoEvidence {
            taken_at_ms: Some(START - 7 * 86_400_000 + n as i64 * 60_000),
            ..photo(n)
        };
        let verdict = judged(&patrol(walk(), 2), &[week_ago(0), week_ago(1)]);
        assert_eq!(signals(&verdict), vec![(Signal::NoPhotoInPatrol, true)]);
        assert!(!verdict.counted);
        assert!(
            verdict.flags[0]
                .message
                .contains("没有一张照片属于这次巡查")
        );
        // A photo without an EXIF time says nothing either way.
        let undated = PhotoEvidence {
            taken_at_ms: None,
            ..photo(1)
        };
        let verdict = judged(&patrol(walk(), 2), &[week_ago(0), undated]);
        assert_eq!(signals(&verdict), vec![(Signal::NoPhotoInPatrol, true)]);

        let earlier = "019a1e81-d000-7000-8000-000000000001".to_string();
        let reused = PhotoEvidence {
            reused_from: Some(Reuse {
                patrol: earlier.clone(),
                inspector: "王芳".into(),
                date: "2026-11-16".into(),
                distance: 0,
                identical: true,
            }),
            ..photo(0)
        };
        let verdict = judged(&patrol(walk(), 1), &[reused]);
        assert_eq!(signals(&verdict), vec![(Signal::PhotoReused, true)]);
        assert!(!verdict.counted);
        let message = &verdict.flags[0].message;
        assert!(
            message.contains(&earlier)
                && message.contains("王芳")
                && message.contains("2026-11-16")
                && message.contains("同一个文件"),
            "{message}"
        );
        assert_eq!(verdict.flags[0].evidence["earlier"]["patrol"], earlier);
    }

    /// Issue 23: the duration came from the phone's start and submit stamps.
    #[test]
    fn duration_is_the_time_the_fixes_cover() {
        let mut stamped = patrol(walk().into_iter().take(11).collect(), 1);
        stamped.ended_at_ms = Some(START + 90 * 60_000);
        let verdict = judged(&stamped, &[photo(0)]);
        assert_eq!(reason(&verdict, "duration").value, 10.0);
        assert!(!verdict.counted);
    }

    #[test]
    fn short_unsubmitted_or_photoless_patrols_do_not_count_with_reasons() {
        let mut short = patrol(walk().into_iter().take(10).collect(), 1);
        short.ended_at_ms = Some(START + 9 * 60_000);
        let verdict = judged(&short, &[photo(0)]);
        assert!(!verdict.counted);
        let duration = reason(&verdict, "duration");
        assert!(!duration.passed);
        assert_eq!(duration.message, "巡查时长 9 分钟（要求 ≥ 20 分钟）");

        let mut recording = patrol(walk(), 1);
        recording.status = PatrolStatus::Recording;
        assert!(!judged(&recording, &[photo(0)]).counted);

        // The photo is referenced but its bytes have not arrived.
        let waiting = PhotoEvidence {
            received: false,
            ..photo(0)
        };
        let verdict = judged(&patrol(walk(), 1), &[waiting]);
        assert!(!verdict.counted);
        assert_eq!(
            reason(&verdict, "photos").message,
            "照片 0 张已上传（另有 1 张未到）（要求 ≥ 1 张）"
        );
    }

    #[test]
    fn key_points_on_the_way_are_visited_others_not() {
        let near = MultiPolygon::new(vec![geo::Polygon::new(
            geo::LineString::from(vec![
                (108.5200, 25.9302),
                (108.5202, 25.9302),
                (108.5202, 25.9304),
                (108.5200, 25.9304),
                (108.5200, 25.9302),
            ]),
            vec![],
        )]);
        let far = MultiPolygon::new(vec![geo::Polygon::new(
            geo::LineString::from(vec![
                (108.5200, 25.9340),
                (108.5202, 25.9340),
                (108.5202, 25.9342),
                (108.5200, 25.9342),
                (108.5200, 25.9340),
            ]),
            vec![],
        )]);
        let points = [
            KeyPointRef {
                code: "522632-K001",
                name: "水源地",
                shape: &near,
            },
            KeyPointRef {
                code: "522632-K002",
                name: "养殖场",
                shape: &far,
            },
        ];
        let grid = grid();
        let rules = PatrolRules::default();
        let verdict = judge(
            &patrol(walk(), 1),
            &Context {
                key_points: &points,
                visit_radius_m: 100.0,
                grid: &grid,
                rules: &rules,
                photos: &[photo(0)],
                received_at_ms: None,
                replayed: None,
            },
        );
        let visits: Vec<(&str, bool)> = verdict
            .key_points
            .iter()
            .map(|k| (k.code.as_str(), k.visited))
            .collect();
        assert_eq!(visits, vec![("522632-K001", true), ("522632-K002", false)]);
        assert_eq!(verdict.key_points[0].message, "重点点位 水源地 已巡查");
    }

    #[test]
    fn a_clock_ahead_of_the_server_is_shown() {
        let grid = grid();
        let rules = PatrolRules::default();
        let verdict = judge(
            &patrol(walk(), 1),
            &Context {
                key_points: &[],
                visit_radius_m: 100.0,
                grid: &grid,
                rules: &rules,
                photos: &[photo(0)],
                // Received 30 minutes before the phone says the patrol ended.
                received_at_ms: Some(START + 10 * 60_000),
                replayed: None,
            },
        );
        assert_eq!(signals(&verdict), vec![(Signal::ClockAhead, false)]);
    }
}
