//! Grid location throughput: points per second on one core against all 榕江县 grids, with the
//! R-tree index and with a brute-force scan of every village polygon, measured in the same run.
//!
//!     cargo bench -p gridpatrol-server --bench locate
//!
//! Prints a Markdown table (medians of 7 runs) for docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use gridpatrol_server::db::Db;
use gridpatrol_server::grids::import::{self, Importer};
use gridpatrol_server::grids::index::GridIndex;
use rand::{Rng, SeedableRng, rngs::StdRng};

const RUNS: usize = 7;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Points per second of `f` over `points`, median of RUNS runs.
fn throughput(points: &[(f64, f64)], mut f: impl FnMut(f64, f64) -> bool) -> (f64, usize) {
    let mut rates = Vec::with_capacity(RUNS);
    let mut hits = 0;
    for _ in 0..RUNS {
        hits = 0;
        let started = Instant::now();
        for &(lon, lat) in points {
            hits += usize::from(black_box(f(black_box(lon), black_box(lat))));
        }
        rates.push(points.len() as f64 / started.elapsed().as_secs_f64());
    }
    (median(rates), hits)
}

fn build_index() -> GridIndex {
    let dir = std::env::temp_dir().join(format!("gridpatrol-bench-{}", std::process::id()));
    let db = Db::open(&format!("sqlite://{}/bench.sqlite3", dir.display()), 1).expect("db");
    db.migrate().expect("migrate");
    db.write_blocking(|conn| {
        import::import(
            conn,
            gridpatrol_server::demo::GRIDS,
            &Importer::Operator,
            &import::Limits::default(),
        )
    })
    .expect("import");
    let index = db
        .run_blocking(|conn| {
            gridpatrol_server::grids::load_index(conn)
                .map_err(|e| gridpatrol_server::db::DbError::Pool(e.to_string()))
        })
        .expect("index");
    let _ = std::fs::remove_dir_all(dir);
    index
}

fn main() {
    // `cargo test --benches` runs this binary too; keep that quick.
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let index = build_index();
    let villages = index
        .grids()
        .iter()
        .filter(|g| g.level == "village")
        .count();
    let county = index
        .grids()
        .iter()
        .find(|g| g.level == "county")
        .expect("county");
    let rect = geo::BoundingRect::bounding_rect(&county.shape).expect("bbox");
    let mut rng = StdRng::seed_from_u64(2025);
    let n = if quick { 20_000 } else { 1_000_000 };
    let points: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            (
                rng.random_range(rect.min().x..rect.max().x),
                rng.random_range(rect.min().y..rect.max().y),
            )
        })
        .collect();
    let brute_points = &points[..points.len() / 10];

    let (leaf, leaf_hits) = throughput(&points, |lon, lat| index.locate_leaf(lon, lat).is_some());
    let (chain, _) = throughput(&points, |lon, lat| !index.locate(lon, lat).chain.is_empty());
    let (brute, brute_hits) = throughput(brute_points, |lon, lat| {
        index.locate_brute_force(lon, lat, "village").is_some()
    });
    // Same sample, same answer: the brute force finds as many points as the index on its tenth.
    let leaf_on_brute = brute_points
        .iter()
        .filter(|(lon, lat)| index.locate_leaf(*lon, *lat).is_some())
        .count();
    assert_eq!(leaf_on_brute, brute_hits, "index and brute force disagree");

    println!(
        "grids: {} ({} villages); points: {} uniform in the county's bounding box, {:.0}% inside a village",
        index.len(),
        villages,
        n,
        100.0 * leaf_hits as f64 / n as f64
    );
    println!();
    println!("| method | points/s (one core, median of {RUNS}) | vs brute force |");
    println!("|---|---|---|");
    println!(
        "| brute force: every village polygon (`geo` Intersects) | {:.0} | 1.0× |",
        brute
    );
    println!(
        "| R-tree + deepest containing grid (`locate_leaf`) | {:.0} | {:.1}× |",
        leaf,
        leaf / brute
    );
    println!(
        "| R-tree, full answer: chain county → village + overlays (`locate`) | {:.0} | {:.1}× |",
        chain,
        chain / brute
    );
}
