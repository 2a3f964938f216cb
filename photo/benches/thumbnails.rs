//! Thumbnails from 12-megapixel phone JPEGs: this crate's reduced-scale path against `image`'s
//! full decode + resize, measured in the same run; the thumbnail, preview and hash together
//! (`derive_all`, one decode) against the three separate calls and a naive baseline; and peak
//! memory while 4 thumbnails are made at once.
//!
//! ```sh
//! cargo bench -p gridpatrol-photo --bench thumbnails
//! ```
//!
//! The photo is generated here: 4000 × 3000, a gradient with blocks and per-pixel noise, JPEG
//! quality 90, 4:2:0 (as phones write them), twice: with heavy noise (±20 levels, 5.0 MB, the
//! top of the 3–5 MB a phone photo weighs) and moderate noise (±10, 3.2 MB). A third, harder
//! file uses the heavy noise and 4:4:4 (as `image`'s own encoder writes them). Every figure is single-threaded (per core) and a median. Run without
//! `--bench` (as `cargo test --all-targets` does) it makes one small photo and runs each path
//! once, as a smoke test.

use std::hint::black_box;
use std::sync::LazyLock;
use std::thread;
use std::time::Instant;

use gridpatrol_photo::{
    DecodePath, Limits, PREVIEW_EDGE, THUMBNAIL_EDGE, derive, derive_all, derive_via, inspect,
    perceptual_hash,
};
use image::{DynamicImage, Rgb, RgbImage};
use image_hasher::{HashAlg, Hasher, HasherConfig};

/// A noisy photo-like picture (deterministic), its noise uniform in ±`amplitude` levels.
fn noisy(width: u32, height: u32, amplitude: u32) -> RgbImage {
    let mut s: u32 = 0x1234_5678;
    RgbImage::from_fn(width, height, |x, y| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let n = (s % (2 * amplitude + 1)) as i32 - amplitude as i32;
        let block = ((x / 300 + y / 200) % 3) as i32 * 40;
        let r = (x * 200 / width) as i32 + block + n;
        let g = (y * 200 / height) as i32 + n;
        let b = ((x + y) * 160 / (width + height)) as i32 + 60 - block / 2 - n;
        Rgb([r, g, b].map(|v| v.clamp(0, 255) as u8))
    })
}

fn encode(image: &RgbImage, sampling: jpeg_encoder::SamplingFactor) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
    encoder.set_sampling_factor(sampling);
    encoder
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("bench JPEG encodes");
    out
}

/// The naive path: `image` decodes the whole photo (zune-jpeg), `thumbnail` (its fastest
/// resize) shrinks it, and the result is encoded like this crate's.
fn baseline(jpeg: &[u8], edge: u32) -> Vec<u8> {
    let thumb = image::load_from_memory(jpeg)
        .expect("decodes")
        .thumbnail(edge, edge)
        .to_rgb8();
    encode(&thumb, jpeg_encoder::SamplingFactor::F_2_2)
}

/// The naive path for what the server keeps of a photo: `image` decodes it whole once, then
/// `thumbnail` makes the preview and the thumbnail from the full decode (both encoded like this
/// crate's), and `image_hasher` (configured as this crate's pHash) hashes the full decode.
fn baseline_all(jpeg: &[u8]) -> (Vec<u8>, Vec<u8>, u64) {
    let full = image::load_from_memory(jpeg).expect("decodes");
    let preview = encode(
        &full.thumbnail(PREVIEW_EDGE, PREVIEW_EDGE).to_rgb8(),
        jpeg_encoder::SamplingFactor::F_2_2,
    );
    let thumbnail = encode(
        &full.thumbnail(THUMBNAIL_EDGE, THUMBNAIL_EDGE).to_rgb8(),
        jpeg_encoder::SamplingFactor::F_2_2,
    );
    (thumbnail, preview, baseline_hash(&full))
}

/// `image_hasher` as this crate configures it (pHash: 16 × 16, DCT, 8 × 8 against the mean).
static HASHER: LazyLock<Hasher<[u8; 8]>> = LazyLock::new(|| {
    HasherConfig::with_bytes_type::<[u8; 8]>()
        .hash_size(8, 8)
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .to_hasher()
});

fn baseline_hash(image: &DynamicImage) -> u64 {
    u64::from_be_bytes(HASHER.hash_image(image).into_inner())
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak RSS growth (MiB) while `n` threads each make a thumbnail of `jpeg` at once: the peak is
/// reset first (writing 5 to /proc/self/clear_refs), then VmHWM is read after the threads end.
fn concurrent_peak_mib(n: usize, jpeg: &[u8], make: fn(&[u8]) -> Vec<u8>) -> Option<f64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status_kib("VmRSS:")?;
    thread::scope(|scope| {
        for _ in 0..n {
            scope.spawn(|| black_box(make(jpeg)));
        }
    });
    let peak = status_kib("VmHWM:")?;
    Some(peak.saturating_sub(before) as f64 / 1024.0)
}

fn ours_thumbnail(jpeg: &[u8]) -> Vec<u8> {
    derive(jpeg, THUMBNAIL_EDGE, &Limits::default()).expect("thumbnail")
}

fn baseline_thumbnail(jpeg: &[u8]) -> Vec<u8> {
    baseline(jpeg, THUMBNAIL_EDGE)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (width, height, runs) = if quick {
        (800, 600, 1)
    } else {
        (4000, 3000, 11)
    };
    let limits = Limits::default();

    let picture = noisy(width, height, 20);
    let phone = encode(&picture, jpeg_encoder::SamplingFactor::F_2_2);
    let full_chroma = encode(&picture, jpeg_encoder::SamplingFactor::F_1_1);
    let moderate = encode(
        &noisy(width, height, 10),
        jpeg_encoder::SamplingFactor::F_2_2,
    );
    drop(picture);

    // Memory first, while the process is small.
    let ours_peak = concurrent_peak_mib(4, &phone, ours_thumbnail);
    let baseline_peak = concurrent_peak_mib(4, &phone, baseline_thumbnail);

    println!("{width}×{height} q90, median of {runs} runs, one thread\n");
    for (name, jpeg) in [
        ("4:2:0 (phone), heavy noise", &phone),
        ("4:2:0 (phone), moderate noise", &moderate),
        ("4:4:4, heavy noise", &full_chroma),
    ] {
        let base = median_ms(runs, || {
            black_box(baseline(jpeg, THUMBNAIL_EDGE));
        });
        let ours = median_ms(runs, || {
            black_box(derive(jpeg, THUMBNAIL_EDGE, &limits).expect("thumbnail"));
        });
        let ours_full = median_ms(runs, || {
            black_box(derive_via(jpeg, THUMBNAIL_EDGE, &limits, DecodePath::Full).expect("full"));
        });
        let base_preview = median_ms(runs, || {
            black_box(baseline(jpeg, PREVIEW_EDGE));
        });
        let preview = median_ms(runs, || {
            black_box(derive(jpeg, PREVIEW_EDGE, &limits).expect("preview"));
        });
        let inspected = median_ms(runs, || {
            black_box(inspect(jpeg, Some("image/jpeg"), &limits).expect("inspect"));
        });
        let hashed = median_ms(runs, || {
            black_box(perceptual_hash(jpeg, &limits).expect("hash"));
        });
        let base_all = median_ms(runs, || {
            black_box(baseline_all(jpeg));
        });
        let full = image::load_from_memory(jpeg).expect("decodes");
        let base_hash = median_ms(runs, || {
            black_box(baseline_hash(&full));
        });
        drop(full);
        let separate = median_ms(runs, || {
            black_box((
                derive(jpeg, THUMBNAIL_EDGE, &limits).expect("thumbnail"),
                derive(jpeg, PREVIEW_EDGE, &limits).expect("preview"),
                perceptual_hash(jpeg, &limits).expect("hash"),
            ));
        });
        let all = median_ms(runs, || {
            black_box(derive_all(jpeg, &limits).expect("all three"));
        });
        println!("### {name}: {} bytes\n", jpeg.len());
        println!("| path | median (ms) | per second per core | vs baseline |");
        println!("|---|---|---|---|");
        let row = |label: &str, ms: f64, reference: f64| {
            println!(
                "| {label} | {ms:.1} | {:.1} | {:.2}× |",
                1000.0 / ms,
                reference / ms
            );
        };
        row(
            "thumbnail 320: `image` full decode + `thumbnail` (baseline)",
            base,
            base,
        );
        row("thumbnail 320: `derive` (1/8-scale decode)", ours, base);
        row(
            "thumbnail 320: `derive_via(Full)` (full-size decode)",
            ours_full,
            base,
        );
        row(
            "preview 1280: `image` full decode + `thumbnail` (baseline)",
            base_preview,
            base_preview,
        );
        row(
            "preview 1280: `derive` (1/2-scale decode)",
            preview,
            base_preview,
        );
        row(
            "`inspect` (1/8-scale validation decode + EXIF)",
            inspected,
            base,
        );
        row("`perceptual_hash` (1/8-scale decode)", hashed, base);
        row(
            "all three: `image` full decode once + `thumbnail` × 2 + `image_hasher` (baseline)",
            base_all,
            base_all,
        );
        println!(
            "| … of which `image_hasher` on the full decode | {base_hash:.1} | | {:.0} % of it |",
            100.0 * base_hash / base_all
        );
        row(
            "all three: `derive(320)` + `derive(1280)` + `perceptual_hash` (three decodes)",
            separate,
            base_all,
        );
        row(
            "all three: `derive_all` (one 1/2-scale decode)",
            all,
            base_all,
        );
        println!();
    }
    let show = |p: Option<f64>| p.map_or("n/a".to_owned(), |m| format!("{m:.1} MiB"));
    println!(
        "peak RSS growth, 4 thumbnails of the 4:2:0 photo at once: derive {}, baseline {}",
        show(ours_peak),
        show(baseline_peak)
    );
}
