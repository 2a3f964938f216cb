//! Believable GPS tracks of a 网格员 (village grid inspector) walking a patrol through a grid.
//!
//! Compliance checks are only as good as the tracks they were tried on, so these tracks carry the
//! things real phones do: noise with an honest accuracy, the odd poor fix, pauses, a walk along a
//! boundary river that steps outside, GCJ-02 coordinates from Chinese map SDKs, mock-location flags
//! and the "desk patrol" where the phone never moves. Everything is drawn from the caller's RNG, so a
//! seed reproduces a track exactly.

use geo::{Area, BoundingRect, Closest, ClosestPoint, Contains, Coord, InteriorPoint, Line, Point};
use rand::Rng;
use std::f64::consts::TAU;

/// The mean radius `geo::Haversine` uses, so distances measured with geo match the steps taken here.
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Phones report accuracy as the radius holding 68 % of fixes; for a circular Gaussian that radius
/// is 1.51 times the per-axis standard deviation.
const ACCURACY_PER_SIGMA: f64 = 1.51;
/// Share of fixes taken under trees, beside buildings or in valleys, with a much larger error.
const POOR_FIX_SHARE: f64 = 0.05;

/// The datum a fix is reported in. Phones using a Chinese map SDK (高德, 腾讯) report GCJ-02, which is
/// WGS-84 shifted by several hundred metres; a check that ignores the datum misplaces the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datum {
    Wgs84,
    Gcj02,
}

/// One position as the phone reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    pub at_ms: i64,
    pub lon: f64,
    pub lat: f64,
    pub datum: Datum,
    /// Radius in metres within which the true position lies with 68 % probability (Android's meaning).
    pub accuracy_m: f32,
    /// Android's `isMock`: set when a fake-GPS app supplied the fix. The path is otherwise the same,
    /// so a check has to rely on the flag rather than the shape.
    pub mock: bool,
}

/// How a simulated patrol goes.
#[derive(Clone, Debug)]
pub struct TrackOptions {
    pub start_ms: i64,
    pub duration_s: u32,
    /// Seconds between fixes; 0 is taken as 1.
    pub every_s: u32,
    pub walking_speed_mps: f64,
    /// Typical accuracy of a good fix in metres; 0 gives exact positions.
    pub gps_noise_m: f64,
    pub gcj02: bool,
    /// Start near the boundary and, a third of the way in, walk out across it and back, as an
    /// inspector following a boundary river does. Patrols shorter than that walk never stray.
    pub stray_outside: bool,
    pub mock_location: bool,
    /// 坐班巡查: the phone stays on a desk, fixes only jitter around one point.
    pub desk: bool,
}

impl Default for TrackOptions {
    /// A 45-minute morning patrol, 2026-11-23 08:30 China time, one fix every 10 s.
    fn default() -> Self {
        Self {
            start_ms: 1_795_393_800_000,
            duration_s: 45 * 60,
            every_s: 10,
            walking_speed_mps: 1.2,
            gps_noise_m: 5.0,
            gcj02: false,
            stray_outside: false,
            mock_location: false,
            desk: false,
        }
    }
}

/// A grid (网格) from a boundary file.
#[derive(Clone, Debug)]
pub struct Grid {
    pub code: String,
    pub name: String,
    pub level: String,
    pub polygon: geo::Polygon<f64>,
}

/// Simulates a patrol through `polygon` (WGS-84 lon/lat) and returns the phone's fixes, one every
/// `every_s` from `start_ms` up to `start_ms + duration_s`. A polygon with no inside gives none.
pub fn walk(polygon: &geo::Polygon<f64>, options: &TrackOptions, rng: &mut impl Rng) -> Vec<Fix> {
    simulate(polygon, options, rng)
        .into_iter()
        .map(|s| s.fix)
        .collect()
}

/// Reads grids from a GeoJSON FeatureCollection with `code`, `name` and `level` properties (the
/// format of `server/demo/rongjiang_522632_grids.geojson`). Features that are not polygons are
/// skipped; of a MultiPolygon the largest part is kept, since a patrol walks one piece of land.
pub fn load_grids(geojson: &str) -> Result<Vec<Grid>, String> {
    use geojson::{GeoJson, GeometryValue};
    let parsed: GeoJson = geojson.parse().map_err(|e| format!("not GeoJSON: {e}"))?;
    let GeoJson::FeatureCollection(collection) = parsed else {
        return Err("expected a FeatureCollection".into());
    };
    let mut grids = Vec::new();
    for (i, feature) in collection.features.iter().enumerate() {
        let Some(geometry) = &feature.geometry else {
            continue;
        };
        let bad = |e: geojson::Error| format!("feature {i}: {e}");
        let polygon = match &geometry.value {
            GeometryValue::Polygon { .. } => {
                geo::Polygon::try_from(&geometry.value).map_err(bad)?
            }
            GeometryValue::MultiPolygon { .. } => {
                let parts: geo::MultiPolygon = geometry.value.clone().try_into().map_err(bad)?;
                let largest = parts
                    .into_iter()
                    .max_by(|a, b| a.unsigned_area().total_cmp(&b.unsigned_area()));
                largest.ok_or_else(|| format!("feature {i}: empty MultiPolygon"))?
            }
            _ => continue,
        };
        let text = |key: &str| match feature.property(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        grids.push(Grid {
            code: text("code").ok_or_else(|| format!("feature {i}: no `code` property"))?,
            name: text("name").unwrap_or_default(),
            level: text("level").unwrap_or_default(),
            polygon,
        });
    }
    Ok(grids)
}

/// A fix together with where the inspector really was, which the tests need to judge the walk
/// apart from its noise.
#[cfg_attr(
    not(test),
    allow(dead_code, reason = "only the tests look behind the noise")
)]
struct Sample {
    truth: Coord,
    fix: Fix,
}

fn simulate(
    polygon: &geo::Polygon<f64>,
    options: &TrackOptions,
    rng: &mut impl Rng,
) -> Vec<Sample> {
    let every = options.every_s.max(1);
    let start = if options.stray_outside && !options.desk {
        near_boundary(polygon, rng).or_else(|| random_inside(polygon, rng))
    } else {
        random_inside(polygon, rng)
    };
    let Some(mut here) = start else {
        return Vec::new();
    };
    let mut samples = Vec::with_capacity((options.duration_s / every + 1) as usize);
    let mut waypoint: Option<Coord> = None;
    // Stray legs, last first; while any remain the walk ignores the boundary.
    let mut detour: Vec<Coord> = Vec::new();
    let mut pause_s = 0_u32;
    let mut wobble = 0.0_f64;
    let mut leg_speed = options.walking_speed_mps;
    for t in 0..=options.duration_s {
        if t % every == 0 {
            samples.push(observe(
                here,
                options.start_ms + i64::from(t) * 1000,
                options,
                rng,
            ));
        }
        if options.desk || t == options.duration_s {
            continue;
        }
        if options.stray_outside && t == options.duration_s / 3 && t > 0 {
            detour = plan_detour(polygon, here, rng);
            waypoint = None;
            pause_s = 0;
        }
        if pause_s > 0 {
            pause_s -= 1;
            continue;
        }
        // A villager stops the inspector for a word.
        if rng.random_bool(1.0 / 900.0) {
            pause_s = rng.random_range(10..60);
            continue;
        }
        let straying = !detour.is_empty();
        let target = match (detour.last(), waypoint) {
            (Some(&stop), _) => stop,
            (None, Some(w)) => w,
            (None, None) => match next_waypoint(polygon, here, rng) {
                Some(w) => {
                    leg_speed = options.walking_speed_mps * rng.random_range(0.85..1.15);
                    *waypoint.insert(w)
                }
                // Boxed in by a ragged boundary: stand a while, then try other directions.
                None => {
                    pause_s = 30;
                    continue;
                }
            },
        };
        let (east, north) = metres(here, target);
        let distance = east.hypot(north);
        let step = leg_speed * rng.random_range(0.95..1.05);
        if distance <= step {
            here = target;
            if straying {
                detour.pop();
            } else {
                waypoint = None;
            }
            // Looking at the river, a field drain, a notice board.
            if rng.random_bool(0.35) {
                pause_s = rng.random_range(20..180);
            }
            continue;
        }
        wobble = (0.9 * wobble + normal(rng) * 4_f64.to_radians()).clamp(-0.45, 0.45);
        let heading = east.atan2(north) + wobble;
        let next = offset(here, step * heading.sin(), step * heading.cos());
        if straying || polygon.contains(&next) {
            here = next;
        } else {
            // The wobble drifted to the edge: straighten up, or give up this leg.
            wobble = 0.0;
            let straight = offset(here, step * east / distance, step * north / distance);
            if polygon.contains(&straight) {
                here = straight;
            } else {
                waypoint = None;
            }
        }
    }
    samples
}

/// What the phone reports for a true position: Gaussian noise whose spread matches the accuracy it
/// claims, clipped at 2.5σ per axis so that no fix lies more than 2.35 accuracies from the truth.
fn observe(truth: Coord, at_ms: i64, options: &TrackOptions, rng: &mut impl Rng) -> Sample {
    // A phone lying still keeps a steady fix; poor fixes come from moving among trees and houses.
    let poor = !options.desk && rng.random_bool(POOR_FIX_SHARE);
    let scale = if poor {
        rng.random_range(3.0..6.0)
    } else {
        rng.random_range(0.8..1.25)
    };
    let accuracy = options.gps_noise_m.max(0.0) * scale;
    let sigma = accuracy / ACCURACY_PER_SIGMA;
    let seen = offset(truth, sigma * normal(rng), sigma * normal(rng));
    let reported = options.gcj02.then(|| to_gcj02(seen)).flatten();
    let (lon, lat, datum) = reported.unwrap_or((seen.x, seen.y, Datum::Wgs84));
    let accuracy_m = accuracy as f32;
    Sample {
        truth,
        fix: Fix {
            at_ms,
            lon,
            lat,
            datum,
            accuracy_m,
            mock: options.mock_location,
        },
    }
}

/// GCJ-02 as the phone's map SDK computes it; `None` outside China, where the SDKs apply no shift.
fn to_gcj02(wgs84: Coord) -> Option<(f64, f64, Datum)> {
    use gcoord::{CoordSystem, Coordinate, transform};
    let c = transform(
        Coordinate::new(wgs84.x, wgs84.y),
        CoordSystem::WGS84,
        CoordSystem::GCJ02,
    )
    .ok()?;
    Some((c.lng, c.lat, Datum::Gcj02))
}

/// A standard normal draw (Box–Muller), clipped at ±2.5: a hard bound keeps the tests exact.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()).clamp(-2.5, 2.5)
}

/// Moves `from` by metres east and north. A flat local frame is within a metre over a village and
/// keeps the geometry plain; the cosine is what makes an east metre the right number of degrees.
fn offset(from: Coord, east_m: f64, north_m: f64) -> Coord {
    let lat = from.y.to_radians();
    Coord {
        x: from.x + (east_m / (EARTH_RADIUS_M * lat.cos())).to_degrees(),
        y: from.y + (north_m / EARTH_RADIUS_M).to_degrees(),
    }
}

/// Metres east and north from `a` to `b`, the exact inverse of [`offset`].
fn metres(a: Coord, b: Coord) -> (f64, f64) {
    let lat = a.y.to_radians();
    (
        (b.x - a.x).to_radians() * EARTH_RADIUS_M * lat.cos(),
        (b.y - a.y).to_radians() * EARTH_RADIUS_M,
    )
}

/// Rejection sampling in the bounding box is uniform over the grid; thin or ragged grids that defeat
/// it fall back to a point guaranteed inside.
fn random_inside(polygon: &geo::Polygon<f64>, rng: &mut impl Rng) -> Option<Coord> {
    let rect = polygon.bounding_rect()?;
    for _ in 0..1000 {
        let c = Coord {
            x: rng.random_range(rect.min().x..=rect.max().x),
            y: rng.random_range(rect.min().y..=rect.max().y),
        };
        if polygon.contains(&c) {
            return Some(c);
        }
    }
    polygon
        .interior_point()
        .map(|p| p.0)
        .filter(|c| polygon.contains(c))
}

/// A point 60–200 m inside a random stretch of the outer boundary, so a stray walk reaches the
/// boundary in minutes even in a large grid.
fn near_boundary(polygon: &geo::Polygon<f64>, rng: &mut impl Rng) -> Option<Coord> {
    let edges: Vec<Line> = polygon.exterior().lines().collect();
    for _ in 0..100 {
        let edge = *edges.get(rng.random_range(0..edges.len().max(1)))?;
        let (east, north) = metres(edge.start, edge.end);
        let length = east.hypot(north);
        if length < 1.0 {
            continue;
        }
        let on_edge = edge.start + edge.delta() * rng.random::<f64>();
        let depth = rng.random_range(60.0..200.0) / length;
        for side in [1.0, -1.0] {
            let c = offset(on_edge, -north * depth * side, east * depth * side);
            if polygon.contains(&c) {
                return Some(c);
            }
        }
    }
    None
}

/// The next place to head for: 60–400 m away (10–60 m when boxed in) and reachable in a straight
/// line without leaving the grid, so the inspector never cuts across a neighbour's land.
fn next_waypoint(polygon: &geo::Polygon<f64>, from: Coord, rng: &mut impl Rng) -> Option<Coord> {
    (0..60).find_map(|attempt| {
        let reach = if attempt < 40 {
            rng.random_range(60.0..400.0)
        } else {
            rng.random_range(10.0..60.0)
        };
        let bearing = rng.random_range(0.0..TAU);
        let to = offset(from, reach * bearing.sin(), reach * bearing.cos());
        polygon.contains(&Line::new(from, to)).then_some(to)
    })
}

/// The stray: straight to the nearest boundary (that segment lies inside, or the boundary would be
/// nearer), 40–90 m beyond it, 80–200 m along it, and back to where it began.
fn plan_detour(polygon: &geo::Polygon<f64>, here: Coord, rng: &mut impl Rng) -> Vec<Coord> {
    let nearest = std::iter::once(polygon.exterior())
        .chain(polygon.interiors())
        .filter_map(|ring| match ring.closest_point(&Point::from(here)) {
            Closest::SinglePoint(p) | Closest::Intersection(p) => Some(p.0),
            Closest::Indeterminate => None,
        })
        .map(|c| (c, metres(here, c)))
        .min_by(|(_, a), (_, b)| a.0.hypot(a.1).total_cmp(&b.0.hypot(b.1)));
    let Some((edge, (east, north))) = nearest else {
        return Vec::new();
    };
    let distance = east.hypot(north);
    if distance < 0.01 {
        return Vec::new();
    }
    let (east, north) = (east / distance, north / distance);
    let beyond = rng.random_range(40.0..90.0);
    let out = offset(edge, east * beyond, north * beyond);
    let along = rng.random_range(80.0..200.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    vec![here, offset(out, north * along, -east * along), out]
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Distance, Haversine};
    use rand::{SeedableRng, rngs::StdRng};

    const DEMO: &str = include_str!("../../server/demo/rongjiang_522632_grids.geojson");

    /// Every 25th village of Rongjiang: real, ragged shapes from 0.5 to 60 km².
    fn villages() -> Vec<Grid> {
        let grids = load_grids(DEMO).expect("demo file loads");
        grids
            .into_iter()
            .filter(|g| g.level == "village")
            .step_by(25)
            .collect()
    }

    fn run(polygon: &geo::Polygon<f64>, options: TrackOptions, seed: u64) -> Vec<Sample> {
        simulate(polygon, &options, &mut StdRng::seed_from_u64(seed))
    }

    fn apart(a: Coord, b: Coord) -> f64 {
        Haversine.distance(Point::from(a), Point::from(b))
    }

    fn seen(s: &Sample) -> Coord {
        Coord {
            x: s.fix.lon,
            y: s.fix.lat,
        }
    }

    #[test]
    fn load_grids_reads_the_rongjiang_demo_file() {
        let grids = load_grids(DEMO).expect("demo file loads");
        let count = |level: &str| grids.iter().filter(|g| g.level == level).count();
        assert_eq!(
            (count("county"), count("township"), count("village")),
            (1, 20, 252)
        );
        for village in grids.iter().filter(|g| g.level == "village") {
            let code = &village.code;
            assert!(code.len() == 12 && code.starts_with("522632"), "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()) && !village.name.is_empty());
        }
        // 东环特和社区 is a MultiPolygon of 58 and 10 vertices: the larger part is kept.
        let multi = grids
            .iter()
            .find(|g| g.code == "522632001018")
            .expect("in the file");
        assert_eq!(multi.polygon.exterior().0.len(), 58);
        assert!(load_grids("{}").is_err());
        assert!(load_grids(r#"{"type":"Point","coordinates":[1,2]}"#).is_err());
    }

    #[test]
    fn an_honest_patrol_stays_inside_at_walking_pace() {
        for (i, village) in villages().iter().enumerate() {
            let (code, polygon) = (&village.code, &village.polygon);
            let samples = run(&village.polygon, TrackOptions::default(), i as u64);
            assert_eq!(
                samples.len(),
                271,
                "45 minutes every 10 s, both ends included"
            );
            assert_eq!(samples[0].fix.at_ms, TrackOptions::default().start_ms);
            let (mut walked, mut paused) = (0.0, false);
            for pair in samples.windows(2) {
                assert_eq!(pair[1].fix.at_ms - pair[0].fix.at_ms, 10_000);
                let metres = apart(pair[0].truth, pair[1].truth);
                assert!(metres < 30.0, "{code}: faster than 3 m/s");
                (walked, paused) = (walked + metres, paused || metres == 0.0);
            }
            // Pauses and wobble keep it under 45 min × 1.2 m/s, but it is a walk, not a desk.
            assert!(
                (1000.0..3900.0).contains(&walked) && paused,
                "{code}: {walked} m"
            );
            assert!(
                samples.iter().all(|s| polygon.contains(&s.truth)),
                "{code} left"
            );
            // Noise puts a few fixes beside the boundary, as it does on a real phone.
            let inside = samples
                .iter()
                .filter(|s| polygon.contains(&seen(s)))
                .count();
            assert!(
                inside * 10 >= samples.len() * 9,
                "{code}: {inside} fixes inside"
            );
            assert!(
                samples
                    .iter()
                    .all(|s| s.fix.datum == Datum::Wgs84 && !s.fix.mock)
            );
        }
    }

    #[test]
    fn a_narrow_grid_along_a_road_is_followed_not_cut() {
        // An L of two 600 m arms, 30 m wide: wobbling along it would leave it at once.
        let corner = Coord {
            x: 108.52,
            y: 25.93,
        };
        let ring: Vec<Coord> = [
            (0.0, 0.0),
            (600.0, 0.0),
            (600.0, 30.0),
            (30.0, 30.0),
            (30.0, 600.0),
            (0.0, 600.0),
        ]
        .map(|(east, north)| offset(corner, east, north))
        .to_vec();
        let road = geo::Polygon::new(ring.into(), Vec::new());
        for seed in 0..5 {
            let samples = run(&road, TrackOptions::default(), seed);
            assert!(samples.iter().all(|s| road.contains(&s.truth)));
            let walked: f64 = samples
                .windows(2)
                .map(|p| apart(p[0].truth, p[1].truth))
                .sum();
            assert!(walked > 500.0, "stuck: walked {walked} m");
        }
    }

    #[test]
    fn noise_matches_the_accuracy_the_phone_claims() {
        let villages = &villages()[..4];
        let samples = villages
            .iter()
            .flat_map(|v| run(&v.polygon, TrackOptions::default(), 7));
        let errors: Vec<(f64, f32)> = samples
            .map(|s| (apart(s.truth, seen(&s)), s.fix.accuracy_m))
            .collect();
        let share = |f: fn(f64, f64) -> bool| {
            let n = errors.iter().filter(|&&(e, a)| f(e, f64::from(a))).count();
            n as f64 / errors.len() as f64
        };
        assert_eq!(share(|e, a| e <= 2.4 * a && (4.0..=30.0).contains(&a)), 1.0);
        // Accuracy is a 68 % radius; about one fix in twenty is a poor one.
        assert!((0.58..0.78).contains(&share(|e, a| e <= a)));
        assert!((0.02..0.10).contains(&share(|_, a| a >= 15.0)));
    }

    #[test]
    fn metres_become_degrees_at_the_right_latitude() {
        for lat in [0.0, 25.9, 60.0] {
            let here = Coord { x: 108.5, y: lat };
            assert!((apart(here, offset(here, 100.0, 0.0)) - 100.0).abs() < 0.01);
            assert!((apart(here, offset(here, 0.0, 100.0)) - 100.0).abs() < 0.01);
            let (east, north) = metres(here, offset(here, 30.0, -40.0));
            assert!((east - 30.0).abs() < 1e-6 && (north + 40.0).abs() < 1e-6);
        }
    }

    #[test]
    fn a_stray_patrol_leaves_the_grid_and_comes_back() {
        for (i, village) in villages().iter().enumerate() {
            let options = TrackOptions {
                stray_outside: true,
                ..TrackOptions::default()
            };
            let samples = run(&village.polygon, options, 100 + i as u64);
            let outside = samples
                .iter()
                .filter(|s| !village.polygon.contains(&s.truth))
                .count();
            assert!(
                outside > 0 && outside * 3 < samples.len(),
                "{}: {outside} outside",
                village.code
            );
            assert!(
                samples
                    .last()
                    .is_some_and(|s| village.polygon.contains(&s.truth))
            );
            assert!(
                samples
                    .windows(2)
                    .all(|p| apart(p[0].truth, p[1].truth) < 30.0)
            );
        }
    }

    #[test]
    fn a_desk_patrol_never_moves() {
        for (i, village) in villages().iter().enumerate() {
            let samples = run(
                &village.polygon,
                TrackOptions {
                    desk: true,
                    ..TrackOptions::default()
                },
                i as u64,
            );
            let desk = samples[0].truth;
            assert!(village.polygon.contains(&desk));
            assert!(
                samples
                    .iter()
                    .all(|s| s.truth == desk && apart(desk, seen(s)) < 30.0)
            );
        }
    }

    #[test]
    fn gcj02_fixes_are_shifted_hundreds_of_metres() {
        let village = &villages()[3];
        let wgs84 = run(&village.polygon, TrackOptions::default(), 9);
        let gcj02 = run(
            &village.polygon,
            TrackOptions {
                gcj02: true,
                ..TrackOptions::default()
            },
            9,
        );
        assert_eq!(wgs84.len(), gcj02.len());
        for (w, g) in wgs84.iter().zip(&gcj02) {
            assert!((108.0..109.0).contains(&w.fix.lon) && (25.0..27.0).contains(&w.fix.lat));
            assert_eq!(
                (w.truth, w.fix.accuracy_m, g.fix.datum),
                (g.truth, g.fix.accuracy_m, Datum::Gcj02)
            );
            let shift = apart(seen(w), seen(g));
            assert!((100.0..1000.0).contains(&shift), "shifted {shift} m");
        }
        // Outside China there is no GCJ-02: the fix stays WGS-84 and says so.
        assert_eq!(to_gcj02(Coord { x: 2.35, y: 48.85 }), None);
    }

    #[test]
    fn a_seed_reproduces_the_track_and_flags_mock_locations() {
        let polygon = &villages()[2].polygon;
        let track = |seed, mock_location| {
            let options = TrackOptions {
                mock_location,
                ..TrackOptions::default()
            };
            walk(polygon, &options, &mut StdRng::seed_from_u64(seed))
        };
        assert_eq!(track(42, false), track(42, false));
        assert_ne!(track(42, false), track(43, false));
        assert!(track(42, true).iter().all(|f| f.mock));
        // Degenerate input: fix interval 0 means every second, an empty polygon gives no track.
        let every_second = TrackOptions {
            every_s: 0,
            duration_s: 5,
            ..TrackOptions::default()
        };
        assert_eq!(
            walk(polygon, &every_second, &mut StdRng::seed_from_u64(1)).len(),
            6
        );
        let empty = geo::Polygon::new(geo::LineString::new(Vec::new()), Vec::new());
        assert!(
            walk(
                &empty,
                &TrackOptions::default(),
                &mut StdRng::seed_from_u64(1)
            )
            .is_empty()
        );
    }
}
