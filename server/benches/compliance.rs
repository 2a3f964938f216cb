//! Judging patrols at prefecture scale: 1,000 village grids, 21,000 patrols in a week, about
//! 2 million fixes (95 a patrol), judged by `compliance::verdict::judge` on one core and on two,
//! with the peak memory; beside it, the same fixes located with a bare `geo` point-in-polygon
//! test in the same run (the floor any checking costs).
//!
//!     cargo bench -p gridpatrol-server --bench compliance
//!
//! This is the pure part of `recompute-compliance`; loading each patrol's document from the
//! database is measured separately (docs/BENCHMARKS.md).

use std::hint::black_box;
use std::time::Instant;

use geo::{Contains, MultiPolygon, Point, Polygon};
use gridpatrol_server::compliance::verdict::{Context, PatrolRules, PhotoEvidence, judge};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sync_protocol::schema::{
    Datum, DocKind, Fix, FixSource, Identity, Method, PatrolStatus, PatrolView,
};

const VILLAGES: usize = 1_000;
const PATROLS: usize = 21_000;
const FIXES: usize = 95;
const RUNS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Villages as irregular 24-sided polygons about 2 km across, on a grid over 榕江's latitude.
fn villages(rng: &mut StdRng) -> Vec<MultiPolygon<f64>> {
    (0..VILLAGES)
        .map(|i| {
            let (cx, cy) = (
                108.0 + 0.03 * (i % 40) as f64,
                25.5 + 0.03 * (i / 40) as f64,
            );
            let ring: Vec<(f64, f64)> = (0..=24)
                .map(|k| {
                    let angle = std::f64::consts::TAU * (k % 24) as f64 / 24.0;
                    let r = 0.009 + rng.random_range(0.0..0.003);
                    (cx + r * angle.cos(), cy + r * angle.sin())
                })
                .collect();
            MultiPolygon::new(vec![Polygon::new(ring.into(), vec![])])
        })
        .collect()
}

fn patrol(village: usize, rng: &mut StdRng) -> (usize, PatrolView) {
    let (cx, cy) = (
        108.0 + 0.03 * (village % 40) as f64,
        25.5 + 0.03 * (village / 40) as f64,
    );
    let start = 1_795_395_600_000 + rng.random_range(0..6 * 86_400_000);
    let (mut x, mut y) = (cx, cy);
    let track = (0..FIXES)
        .map(|i| {
            x += rng.random_range(-0.0004..0.0004);
            y += rng.random_range(-0.0004..0.0004);
            Fix {
                at_ms: start + i as i64 * 30_000,
                lon: x,
                lat: y,
                datum: if i % 3 == 0 {
                    Datum::Gcj02
                } else {
                    Datum::Wgs84
                },
                accuracy_m: Some(rng.random_range(3.0..40.0)),
                source: FixSource::Gnss,
                mock: false,
            }
        })
        .collect();
    let view = PatrolView {
        identity: Identity {
            kind: DocKind::Patrol,
            id: format!("p{village}-{start}"),
            grid: format!("v{village}"),
            inspector: village as i64,
            device: 1,
        },
        method: Method::Routine,
        started_at_ms: start,
        ended_at_ms: Some(start + FIXES as i64 * 30_000),
        status: PatrolStatus::Submitted,
        track,
        notes: vec![],
        photos: vec![],
        problems: vec![],
        review: None,
    };
    (village, view)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn judge_all(
    patrols: &[(usize, PatrolView)],
    grids: &[MultiPolygon<f64>],
    rules: &PatrolRules,
    photos: &[PhotoEvidence],
) -> usize {
    patrols
        .iter()
        .filter(|(village, view)| {
            judge(
                view,
                &Context {
                    key_points: &[],
                    visit_radius_m: 100.0,
                    grid: &grids[*village],
                    rules,
                    photos,
                    received_at_ms: None,
                    replayed: None,
                },
            )
            .counted
        })
        .count()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let patrols_wanted = if quick { 500 } else { PATROLS };
    let mut rng = StdRng::seed_from_u64(7);
    let grids = villages(&mut rng);
    let patrols: Vec<(usize, PatrolView)> = (0..patrols_wanted)
        .map(|i| patrol(i % VILLAGES, &mut rng))
        .collect();
    let fixes: usize = patrols.iter().map(|(_, p)| p.track.len()).sum();
    let rules = PatrolRules::default();
    let photos = [PhotoEvidence {
        sha256: "0".repeat(64),
        received: true,
        ..PhotoEvidence::default()
    }];
    let rss_before = peak_rss_mib();
    println!(
        "{} villages, {} patrols, {} fixes; peak RSS with the data loaded: {rss_before:.0} MiB",
        VILLAGES,
        patrols.len(),
        fixes
    );

    let mut baseline = Vec::new();
    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut counted = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let inside: usize = patrols
            .iter()
            .map(|(village, view)| {
                view.track
                    .iter()
                    .filter(|f| grids[*village].contains(&Point::new(f.lon, f.lat)))
                    .count()
            })
            .sum();
        black_box(inside);
        baseline.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        counted = black_box(judge_all(&patrols, &grids, &rules, &photos));
        one.push(started.elapsed().as_secs_f64());

        let started = Instant::now();
        let (a, b) = patrols.split_at(patrols.len() / 2);
        let both = std::thread::scope(|scope| {
            let first = scope.spawn(|| judge_all(a, &grids, &rules, &photos));
            let second = judge_all(b, &grids, &rules, &photos);
            first.join().unwrap_or(0) + second
        });
        black_box(both);
        two.push(started.elapsed().as_secs_f64());
    }
    let (baseline, one, two) = (median(baseline), median(one), median(two));
    println!();
    println!("| median of {RUNS} | seconds | µs per patrol | vs bare point-in-polygon |");
    println!("|---|---|---|---|");
    println!(
        "| bare `geo` point-in-polygon of every fix, one core | {baseline:.2} | {:.1} | 1.00× |",
        baseline * 1e6 / patrols.len() as f64
    );
    println!(
        "| `judge` every patrol, one core | {one:.2} | {:.1} | {:.1}× |",
        one * 1e6 / patrols.len() as f64,
        one / baseline
    );
    println!(
        "| `judge` every patrol, two cores | {two:.2} | {:.1} | {:.1}× |",
        two * 1e6 / patrols.len() as f64,
        two / baseline
    );
    println!();
    println!(
        "{counted} of {} counted; peak RSS {:.0} MiB",
        patrols.len(),
        peak_rss_mib()
    );
}
