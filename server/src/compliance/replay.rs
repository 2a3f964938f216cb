//! Finding a replayed track (`replayed_track`): a patrol whose fixes are an earlier patrol's,
//! point for point, shifted in time, whole or in part, with or without a little noise added.
//!
//! **Prints.** When a patrol is submitted its sync projects a print of its track
//! (`patrol_tracks`: the WGS-84 fixes, at most one every [`PRINT_STEP_MS`], 16 bytes each) and
//! the ~250 m cells it passes through (`track_cells`, an inverted index). Judging a patrol looks
//! up the earlier patrols (by the server's receive time) that share cells with it, nearest in
//! cells first, and compares the few best with [`compare`].
//!
//! **The test** ([`compare`]). A copy keeps the original's timing: every copied fix lies at the
//! same time offset Δ from its original, and within the noise added. So for every pair of fixes
//! (this, earlier) within `tolerance` metres, Δ = t_this − t_earlier is counted in 2-second bins;
//! a replay shows one Δ shared by a long run of fixes. That Δ is then checked fix by fix: a fix
//! of this patrol matches when the earlier patrol has a fix at its time − Δ (± 1.5 s) within the
//! tolerance (plus the two fixes' accuracy, at most 10 m of it). A replay needs enough matched
//! fixes (`replay_min_fixes`), over enough time (`replay_min_minutes`), while moving
//! (`replay_min_distance_m`: two people standing at the same office on two days match in place,
//! not along a path), and Δ of at least `replay_min_shift_minutes` (two inspectors walking
//! together match at Δ ≈ 0: that is a joint patrol, not a copy).
//!
//! An honest walk of the same route on another day does not hold one Δ: pace differs by a few
//! per cent and stops differ, so after a minute or two the fixes at the same time offset are tens
//! of metres apart (the unit tests walk the same route 5 % slower).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::coords::LocalFrame;

/// A print keeps at most one fix in this many milliseconds.
pub const PRINT_STEP_MS: i64 = 5_000;
/// Cell size of the inverted index, degrees (about 250 m north–south, 250 m east–west at 25° N).
const CELL_LAT: f64 = 0.00225;
const CELL_LON: f64 = 0.0025;

/// One fix of a print, WGS-84.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrintFix {
    pub at_ms: i64,
    pub lon: f64,
    pub lat: f64,
    pub accuracy_m: f64,
}

/// Keeps at most one fix every [`PRINT_STEP_MS`] (the first of each step), in time order.
pub fn thin(fixes: impl IntoIterator<Item = PrintFix>) -> Vec<PrintFix> {
    let mut sorted: Vec<PrintFix> = fixes.into_iter().collect();
    sorted.sort_by_key(|f| f.at_ms);
    let mut kept: Vec<PrintFix> = Vec::with_capacity(sorted.len());
    for fix in sorted {
        if kept
            .last()
            .is_none_or(|last| fix.at_ms - last.at_ms >= PRINT_STEP_MS)
        {
            kept.push(fix);
        }
    }
    kept
}

/// The print of a track: its fixes in WGS-84 (those that convert), [`thin`]ned.
pub fn print_of(track: &[sync_protocol::schema::Fix]) -> Vec<PrintFix> {
    thin(track.iter().filter_map(|f| {
        let (lon, lat) = super::coords::to_wgs84(f.lon, f.lat, f.datum)?;
        Some(PrintFix {
            at_ms: f.at_ms,
            lon,
            lat,
            accuracy_m: f.accuracy_m.map_or(0.0, f64::from),
        })
    }))
}

/// 16 bytes a fix: time (ms, i64), lon and lat (1e-6 degrees, i32 each); accuracy is not kept
/// (the comparison allows each stored fix 5 m).
pub fn encode(fixes: &[PrintFix]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fixes.len() * 16);
    for f in fixes {
        out.extend_from_slice(&f.at_ms.to_le_bytes());
        out.extend_from_slice(&((f.lon * 1e6).round() as i32).to_le_bytes());
        out.extend_from_slice(&((f.lat * 1e6).round() as i32).to_le_bytes());
    }
    out
}

pub fn decode(bytes: &[u8]) -> Vec<PrintFix> {
    bytes
        .chunks_exact(16)
        .map(|c| {
            let at_ms = i64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
            let lon = i32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
            let lat = i32::from_le_bytes(c[12..16].try_into().unwrap_or_default());
            PrintFix {
                at_ms,
                lon: f64::from(lon) / 1e6,
                lat: f64::from(lat) / 1e6,
                accuracy_m: 5.0,
            }
        })
        .collect()
}

/// The index cells a track passes through, distinct, sorted.
pub fn cells(fixes: &[PrintFix]) -> Vec<i64> {
    let mut cells: Vec<i64> = fixes
        .iter()
        .map(|f| {
            let row = (f.lat / CELL_LAT).floor() as i64;
            let col = (f.lon / CELL_LON).floor() as i64;
            (row << 32) | (col & 0xffff_ffff)
        })
        .collect();
    cells.sort_unstable();
    cells.dedup();
    cells
}

/// The thresholds of the test (from the jurisdiction's `[compliance.patrol]`).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub metres: f64,
    pub min_fixes: u32,
    pub min_minutes: f64,
    pub min_distance_m: f64,
    pub min_shift_minutes: f64,
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayMatch {
    /// Fixes of this patrol that lie on the earlier one at the shift.
    pub matched: u32,
    /// This patrol's fixes from the first matched one to the last.
    pub overlapping: u32,
    /// This patrol's time minus the earlier one's, ms.
    pub shift_ms: i64,
    /// From the first matched fix to the last, minutes.
    pub minutes: f64,
    /// How far the matched stretch goes from its first fix, metres.
    pub distance_m: f64,
    /// Median distance between matched fixes, metres.
    pub median_offset_m: f64,
    /// How much the offsets between matched fixes follow each other from one fix to the next
    /// (lag-1 correlation of the offset vectors less their mean): about 0 for noise added to a
    /// copy, near 1 for two walks whose paces differ.
    pub drift: f64,
}

/// A matched fix: its index in this patrol, its distance to the earlier fix, and the offset.
type Matched = (usize, f64, (f64, f64));

/// Above this [`ReplayMatch::drift`] the offsets drift as two walks' do, not as a copy's noise.
const MAX_COPY_DRIFT: f64 = 0.5;

/// Lag-1 correlation of the offset vectors of a run, less their mean.
fn drift(run: &[Matched]) -> f64 {
    let n = run.len() as f64;
    let mean = run
        .iter()
        .fold((0.0, 0.0), |m, r| (m.0 + r.2.0 / n, m.1 + r.2.1 / n));
    let residual: Vec<(f64, f64)> = run
        .iter()
        .map(|r| (r.2.0 - mean.0, r.2.1 - mean.1))
        .collect();
    let energy: f64 = residual.iter().map(|v| v.0 * v.0 + v.1 * v.1).sum();
    if energy < 1e-9 {
        return 0.0;
    }
    let lagged: f64 = residual
        .windows(2)
        .map(|w| w[0].0 * w[1].0 + w[0].1 * w[1].1)
        .sum();
    lagged / energy
}

/// Compares this patrol's print with an earlier one's (see the module doc). `None`: no shift
/// carries a replay.
pub fn compare(this: &[PrintFix], earlier: &[PrintFix], tol: &Tolerance) -> Option<ReplayMatch> {
    if this.len() < tol.min_fixes as usize || earlier.len() < tol.min_fixes as usize {
        return None;
    }
    let frame = LocalFrame::around(this[0].lon, this[0].lat);
    let a: Vec<(f64, f64)> = this.iter().map(|f| frame.project(f.lon, f.lat)).collect();
    let b: Vec<(f64, f64)> = earlier
        .iter()
        .map(|f| frame.project(f.lon, f.lat))
        .collect();
    // A copy's fixes carry the original's accuracy, so accuracy explains nothing here: the
    // tolerance is the noise a copy may have had added, flat.
    let reach = |_: usize, _: usize| tol.metres;
    // The earlier fixes in cells of the tolerance's size.
    let size = tol.metres + 20.0;
    let key = |(x, y): (f64, f64)| ((x / size).floor() as i64, (y / size).floor() as i64);
    let mut grid: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (j, p) in b.iter().enumerate() {
        grid.entry(key(*p)).or_default().push(j);
    }
    // Votes for shifts, in 2-second bins; each fix of this patrol votes once per bin.
    let min_shift_ms = (tol.min_shift_minutes * 60_000.0) as i64;
    let mut votes: HashMap<i64, u32> = HashMap::new();
    for (i, p) in a.iter().enumerate() {
        let (cx, cy) = key(*p);
        let mut bins: Vec<i64> = Vec::new();
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &j in grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    let d = ((p.0 - b[j].0).powi(2) + (p.1 - b[j].1).powi(2)).sqrt();
                    let shift = this[i].at_ms - earlier[j].at_ms;
                    if d <= reach(i, j) && shift.abs() >= min_shift_ms {
                        bins.push(shift.div_euclid(2_000));
                    }
                }
            }
        }
        bins.sort_unstable();
        bins.dedup();
        for bin in bins {
            *votes.entry(bin).or_default() += 1;
        }
    }
    // The few best-voted shifts (with their neighbours' votes, as a shift may straddle bins).
    let mut ranked: Vec<(i64, u32)> = votes
        .iter()
        .map(|(&bin, &n)| {
            let around = n
                + votes.get(&(bin - 1)).copied().unwrap_or(0)
                + votes.get(&(bin + 1)).copied().unwrap_or(0);
            (bin, around)
        })
        .filter(|&(_, n)| n >= tol.min_fixes)
        .collect();
    ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let mut best: Option<ReplayMatch> = None;
    for &(bin, _) in ranked.iter().take(3) {
        // The shift itself: the median of the votes' exact shifts in the bin and its neighbours.
        let found = check_shift(this, earlier, &a, &b, bin, tol, &reach);
        if let Some(found) = found
            && best.as_ref().is_none_or(|b| found.matched > b.matched)
        {
            best = Some(found);
        }
    }
    best
}

fn check_shift(
    this: &[PrintFix],
    earlier: &[PrintFix],
    a: &[(f64, f64)],
    b: &[(f64, f64)],
    bin: i64,
    tol: &Tolerance,
    reach: &dyn Fn(usize, usize) -> f64,
) -> Option<ReplayMatch> {
    // Try the bin's middle; the ± 1.5 s window around it covers the bin and half its
    // neighbours, and the best of three offsets covers the rest.
    let mut best: Option<ReplayMatch> = None;
    for offset in [-1_000, 1_000, 3_000] {
        let shift = bin * 2_000 + offset;
        // (this fix, distance, offset vector) of each matched fix.
        let mut matched: Vec<Matched> = Vec::new();
        let (first, last) = (
            earlier[0].at_ms + shift,
            earlier[earlier.len() - 1].at_ms + shift,
        );
        for (i, fix) in this.iter().enumerate() {
            let want = fix.at_ms - shift;
            if fix.at_ms < first - 1_500 || fix.at_ms > last + 1_500 {
                continue;
            }
            // Earlier fixes within 1.5 s of `want`.
            let from = earlier.partition_point(|f| f.at_ms < want - 1_500);
            let near = (from..earlier.len())
                .take_while(|&j| earlier[j].at_ms <= want + 1_500)
                .map(|j| {
                    let v = (a[i].0 - b[j].0, a[i].1 - b[j].1);
                    (j, (v.0 * v.0 + v.1 * v.1).sqrt(), v)
                })
                .filter(|&(j, d, _)| d <= reach(i, j))
                .min_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((_, d, v)) = near {
                matched.push((i, d, v));
            }
        }
        // The matched fixes in runs (a minute without a match ends one); the best run is judged:
        // its fixes must mostly all match (a route walked again at another pace touches the
        // earlier track here and there, a copy all along), last long enough, and move.
        let mut runs: Vec<&[Matched]> = Vec::new();
        let mut start = 0;
        for k in 1..=matched.len() {
            if k == matched.len()
                || this[matched[k].0].at_ms - this[matched[k - 1].0].at_ms > 60_000
            {
                runs.push(&matched[start..k]);
                start = k;
            }
        }
        for run in runs {
            let (first_i, last_i) = (run[0].0, run[run.len() - 1].0);
            let span_fixes = (last_i - first_i + 1) as u32;
            let minutes = (this[last_i].at_ms - this[first_i].at_ms) as f64 / 60_000.0;
            // How far the run goes from where it starts (jitter in place goes nowhere).
            let extent_m = run
                .iter()
                .map(|&(i, _, _)| {
                    ((a[i].0 - a[first_i].0).powi(2) + (a[i].1 - a[first_i].1).powi(2)).sqrt()
                })
                .fold(0.0, f64::max);
            let mut offsets: Vec<f64> = run.iter().map(|m| m.1).collect();
            offsets.sort_by(f64::total_cmp);
            let found = ReplayMatch {
                matched: run.len() as u32,
                overlapping: span_fixes,
                shift_ms: shift,
                minutes,
                distance_m: extent_m,
                median_offset_m: offsets[offsets.len() / 2],
                drift: drift(run),
            };
            // A copy's offsets are the noise added to it (or none): they do not drift. Two walks
            // of a route drift apart and together as their paces differ.
            let copied = found.median_offset_m < 2.0 || found.drift < MAX_COPY_DRIFT;
            if copied
                && found.matched >= tol.min_fixes
                && f64::from(found.matched) >= 0.8 * f64::from(span_fixes)
                && found.minutes >= tol.min_minutes
                && found.distance_m >= tol.min_distance_m
                && best.as_ref().is_none_or(|b| found.matched > b.matched)
            {
                best = Some(found);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_395_600_000;
    const WEEK: i64 = 7 * 86_400_000;

    fn tol() -> Tolerance {
        Tolerance {
            metres: 15.0,
            min_fixes: 20,
            min_minutes: 10.0,
            min_distance_m: 300.0,
            min_shift_minutes: 30.0,
        }
    }

    /// A 40-minute walk, a fix every 10 s, along a winding village road at about 1.2 m/s times
    /// `pace`, the pace wavering ±10 % (as people slow and speed up; `seed` sets where), with a
    /// 3-minute stop at minute `stop`, and ±4 m of GPS noise.
    fn walk(start: i64, pace: f64, stop: i64, seed: u64) -> Vec<PrintFix> {
        walk_wavering(start, pace, stop, seed, seed as f64)
    }

    fn walk_wavering(start: i64, pace: f64, stop: i64, seed: u64, phase: f64) -> Vec<PrintFix> {
        let mut along = 0.0;
        let mut out = Vec::new();
        let mut rng = seed;
        let mut uniform = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5
        };
        // GNSS error wanders rather than jumps: each fix's error is most of the last one's
        // (correlated over half a minute or so), about ±4 m.
        let mut error = (0.0, 0.0);
        let mut noise = move || {
            error = (
                0.8 * error.0 + 4.0 * uniform(),
                0.8 * error.1 + 4.0 * uniform(),
            );
            error
        };
        for k in 0..240 {
            let minute = k / 6;
            if !(stop..stop + 3).contains(&minute) {
                along += 12.0 * pace * (1.0 + 0.1 * ((k as f64) / 7.0 + phase).sin());
            }
            // The road: east, with a bend north.
            let (x, y) = (along * 0.8, 40.0 * (along / 300.0).sin() + along * 0.6);
            let e = noise();
            let (x, y) = (x + e.0, y + e.1);
            out.push(PrintFix {
                at_ms: start + k * 10_000 + (k * 37 % 900),
                lon: 108.52 + x / 100_000.0,
                lat: 25.93 + y / 111_000.0,
                accuracy_m: 6.0,
            });
        }
        out
    }

    #[test]
    fn an_exact_copy_shifted_a_week_is_a_replay() {
        let original = walk(T0, 1.0, 12, 1);
        let copy: Vec<PrintFix> = original
            .iter()
            .map(|f| PrintFix {
                at_ms: f.at_ms + WEEK + 123_456,
                ..*f
            })
            .collect();
        let found = compare(&copy, &original, &tol()).expect("a replay");
        assert_eq!(found.matched, 240);
        assert_eq!(
            found.shift_ms.div_euclid(2_000),
            (WEEK + 123_456).div_euclid(2_000)
        );
        assert!(found.minutes > 39.0);
    }

    #[test]
    fn a_copy_with_noise_or_in_part_is_a_replay() {
        let original = walk(T0, 1.0, 12, 1);
        // ± 8 m of noise on every fix, and a second of jitter on the times.
        let mut rng = 7u64;
        let noisy: Vec<PrintFix> = original
            .iter()
            .map(|f| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                let dx = ((rng >> 40) % 17) as f64 - 8.0;
                let dy = ((rng >> 20) % 17) as f64 - 8.0;
                PrintFix {
                    at_ms: f.at_ms + WEEK + ((rng >> 50) % 1_000) as i64,
                    lon: f.lon + dx / 100_000.0,
                    lat: f.lat + dy / 111_000.0,
                    ..*f
                }
            })
            .collect();
        let found = compare(&noisy, &original, &tol()).expect("a noisy replay");
        assert!(found.drift < 0.2, "{found:?}");
        // The middle 15 minutes copied into an honest walk elsewhere.
        let mut part: Vec<PrintFix> = walk(T0 + WEEK, 1.0, 99, 5)
            .into_iter()
            .take(60)
            .map(|f| PrintFix {
                lon: f.lon + 0.01,
                ..f
            })
            .collect();
        part.extend(original[90..180].iter().map(|f| PrintFix {
            at_ms: f.at_ms + WEEK,
            ..*f
        }));
        let found = compare(&part, &original, &tol()).expect("a partial replay");
        assert_eq!(found.matched, 90);
    }

    #[test]
    fn the_same_route_walked_again_is_not_a_replay() {
        let monday = walk(T0, 1.0, 12, 1);
        // A week later, 5 % slower, stopping elsewhere, other GPS noise.
        let again = walk(T0 + WEEK, 0.95, 25, 2);
        assert_eq!(compare(&again, &monday, &tol()), None);
        // Only 2 % slower on average (people's pace differs more from day to day), with another
        // day's wavering, noise and stop. (At exactly the same average pace two walks of a
        // route are the same track in space and time, within the GPS noise: indistinguishable
        // from a copy with noise added, by this test or any.)
        let same_pace = walk(T0 + WEEK, 0.98, 30, 3);
        assert_eq!(compare(&same_pace, &monday, &tol()), None);
    }

    #[test]
    fn standing_still_or_walking_together_is_not_a_replay() {
        // Two patrols that both spend 20 minutes at the village office.
        let still = |start: i64, seed: u64| -> Vec<PrintFix> { walk(start, 0.0, 99, seed) };
        assert_eq!(compare(&still(T0 + WEEK, 2), &still(T0, 1), &tol()), None);
        // Two inspectors walking together: the same track at the same time.
        let together = walk(T0 + 4_000, 1.0, 12, 9);
        assert_eq!(compare(&together, &walk(T0, 1.0, 12, 1), &tol()), None);
    }

    #[test]
    fn prints_round_trip_and_index_cells() {
        let track = thin(walk(T0, 1.0, 12, 1));
        let back = decode(&encode(&track));
        assert_eq!(back.len(), track.len());
        for (x, y) in back.iter().zip(&track) {
            assert_eq!(x.at_ms, y.at_ms);
            assert!((x.lon - y.lon).abs() < 1e-6 && (x.lat - y.lat).abs() < 1e-6);
        }
        let cells = cells(&track);
        assert!((3..40).contains(&cells.len()), "{}", cells.len());
    }
}
