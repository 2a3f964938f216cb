//! A 176-byte file that claims billions of pixels is refused from its header, without allocating
//! for them. dhat counts every allocation of this test binary (one test, so nothing else runs
//! alongside); a positive control shows the count sees a real decode.

mod common;

use common::{huge_jpeg_header, huge_png_header, jpeg, scene};
use gridpatrol_photo::{Limits, derive, derive_all, inspect, perceptual_hash};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const MIB: u64 = 1024 * 1024;

#[test]
fn huge_claims_are_refused_without_allocating() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let limits = Limits::default();
    let headers = [("jpeg", huge_jpeg_header()), ("png", huge_png_header())];
    let before = dhat::HeapStats::get().max_bytes as u64;
    for (name, header) in &headers {
        assert_eq!(header.len(), 176);
        for result in [
            inspect(header, None, &limits).map(|_| ()),
            derive(header, 320, &limits).map(|_| ()),
            derive_all(header, &limits).map(|_| ()),
            perceptual_hash(header, &limits).map(|_| ()),
        ] {
            let err = result.expect_err(name);
            assert_eq!(err.code(), "photo_too_many_pixels", "{name}: {err}");
        }
    }
    let peak = dhat::HeapStats::get().max_bytes as u64;
    eprintln!(
        "peak heap while refusing the headers: {} KiB above the start",
        (peak - before) / 1024
    );
    assert!(
        peak < before + 2 * MIB,
        "refusing the headers peaked at {} KiB",
        (peak - before) / 1024
    );

    // Control: a real 2000 × 2000 photo, inspected (1/8-scale decode) and made into a preview
    // (1/2-scale decode, 1000 × 1000 × 3 bytes), shows up in the same statistics.
    let photo = jpeg(&scene(2000, 2000, 1), 90, None);
    inspect(&photo, None, &limits).expect("valid photo");
    derive(&photo, 1000, &limits).expect("preview");
    let control = dhat::HeapStats::get().max_bytes as u64;
    eprintln!("peak heap with the control decode: {} KiB", control / 1024);
    assert!(
        control > peak + 3 * MIB,
        "a 1000 × 1000 decode should be seen (peak {} KiB)",
        control / 1024
    );
}
