//! `patrol-corpus`: the labelled evaluation corpus of the fraud signals (issue 23), recorded
//! through the real SDK against a running server, and scored (`patrol_sim::corpus`).
//!
//!     cargo run --release -- serve --demo &
//!     cargo run --release -p patrol-sim --bin patrol-corpus -- --server http://127.0.0.1:8080 --per-kind 20
//!
//! Prints a Markdown report: per kind, the share caught (fraud) or counted (honest) and the
//! signals raised; for each rule, the closest honest and the closest fraud value of what it
//! thresholds. Exits with 1 when a goal is missed: hard-fraud recall ≥ 0.95 for every kind,
//! honest false-fail ≤ 1 %.

use clap::Parser;
use patrol_sim::corpus::{self, Plan, Server};

#[derive(Parser)]
#[command(
    version,
    about = "The labelled fraud-signal corpus, through the GridPatrol SDK"
)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Patrols of each kind (25 kinds).
    #[arg(long, default_value_t = 20)]
    per_kind: usize,
    /// Inspectors (one per village grid, in code order).
    #[arg(long, default_value_t = 30)]
    inspectors: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The corpus's first day, midnight UTC as Unix ms (default: 30 days ago); its patrols take
    /// 30 days.
    #[arg(long)]
    start_ms: Option<i64>,
    #[arg(long, default_value = "admin-522632")]
    admin: String,
    #[arg(long, default_value = "gridpatrol-demo")]
    password: String,
}

const DAY_MS: i64 = 86_400_000;

async fn run(args: Args) -> Result<bool, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let plan = Plan {
        per_kind: args.per_kind,
        inspectors: args.inspectors,
        seed: args.seed,
        start_ms: args
            .start_ms
            .unwrap_or_else(|| (now - 30 * DAY_MS).div_euclid(DAY_MS) * DAY_MS),
        photo_width: 640,
        photo_height: 480,
    };
    let grids = corpus::villages(args.inspectors)?;
    let started = std::time::Instant::now();
    let planned = corpus::plan(&plan, &grids)?;
    let server = Server {
        url: args.server,
        admin: args.admin,
        password: args.password,
    };
    let judged = corpus::run(&server, &grids, &planned).await?;
    let report = corpus::score(&planned, &judged);
    println!("{}", report.markdown());
    let fixes: usize = planned.iter().map(|p| p.fixes.len()).sum();
    let photos: usize = planned.iter().map(|p| p.photos.len()).sum();
    println!(
        "{} patrols ({fixes} fixes, {photos} photos) by {} inspectors, seed {}, in {:.0} s.",
        planned.len(),
        grids.len(),
        args.seed,
        started.elapsed().as_secs_f64()
    );
    let (failed, honest) = report.honest_false_fail();
    Ok(report.short_recall(0.95).is_empty() && failed as f64 <= 0.01 * honest as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("patrol-corpus: {error}");
            std::process::exit(2);
        }
    }
}
