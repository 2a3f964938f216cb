//! The crate's behaviour on photos made here: refusals and their codes, EXIF, orientation,
//! reduced-scale decoding, perceptual hashes, the phone's downscale.

mod common;

use common::*;
use gridpatrol_photo::{
    DecodePath, Derivatives, Exif, Format, Limits, PREVIEW_EDGE, PhotoError, THUMBNAIL_EDGE,
    derive, derive_all, derive_via, downscale_keeping_exif, hamming, inspect, perceptual_hash,
    sniff,
};
use image::{DynamicImage, GenericImageView};

fn code<T: std::fmt::Debug>(r: Result<T, PhotoError>) -> &'static str {
    r.expect_err("the photo should be refused").code()
}

fn decode(jpeg: &[u8]) -> DynamicImage {
    assert_eq!(sniff(jpeg), Ok(Format::Jpeg), "output is a JPEG");
    image::load_from_memory(jpeg).expect("output decodes")
}

// --- refusals -------------------------------------------------------------------------------

#[test]
fn empty() {
    let limits = Limits::default();
    assert_eq!(code(inspect(&[], None, &limits)), "photo_empty");
    assert_eq!(code(derive(&[], 320, &limits)), "photo_empty");
    assert_eq!(code(sniff(&[])), "photo_empty");
}

#[test]
fn too_large() {
    let photo = jpeg(&scene(200, 150, 1), 90, None);
    let limits = Limits {
        max_bytes: photo.len() as u64 - 1,
        ..Limits::default()
    };
    let err = inspect(&photo, None, &limits).expect_err("one byte over");
    assert_eq!(err.code(), "photo_too_large");
    assert_eq!(
        err,
        PhotoError::TooLarge {
            size: photo.len() as u64,
            limit: photo.len() as u64 - 1
        }
    );
    let exact = Limits {
        max_bytes: photo.len() as u64,
        ..Limits::default()
    };
    assert!(inspect(&photo, None, &exact).is_ok());
    assert_eq!(Limits::default().max_bytes, 20 * 1024 * 1024);
    assert_eq!(Limits::default().max_pixels, 50_000_000);
}

#[test]
fn too_many_pixels() {
    let photo = jpeg(&scene(200, 150, 1), 90, None);
    let limits = Limits {
        max_pixels: 200 * 150 - 1,
        ..Limits::default()
    };
    assert_eq!(
        inspect(&photo, None, &limits),
        Err(PhotoError::TooManyPixels {
            width: 200,
            height: 150,
            limit: 200 * 150 - 1
        })
    );
    assert_eq!(code(derive(&photo, 100, &limits)), "photo_too_many_pixels");
    let png = png(&scene(200, 150, 1));
    assert_eq!(code(inspect(&png, None, &limits)), "photo_too_many_pixels");
    // The hand-built headers (their allocations are checked in tests/alloc.rs).
    let limits = Limits::default();
    for (name, header) in [("jpeg", huge_jpeg_header()), ("png", huge_png_header())] {
        assert_eq!(header.len(), 176, "{name}");
        assert_eq!(
            code(inspect(&header, None, &limits)),
            "photo_too_many_pixels",
            "{name}"
        );
        assert_eq!(
            code(derive(&header, 320, &limits)),
            "photo_too_many_pixels",
            "{name}"
        );
        assert_eq!(
            code(perceptual_hash(&header, &limits)),
            "photo_too_many_pixels",
            "{name}"
        );
    }
}

#[test]
fn too_much_memory() {
    let photo = jpeg(&scene(200, 150, 1), 90, None);
    // Even the 1/8-scale decode that validates a JPEG needs its 25×19 output.
    let limits = Limits {
        max_alloc: 1_000,
        ..Limits::default()
    };
    assert_eq!(
        code(inspect(&photo, None, &limits)),
        "photo_too_much_memory"
    );
    let png = png(&scene(200, 150, 1));
    assert_eq!(code(inspect(&png, None, &limits)), "photo_too_much_memory");
    // A thumbnail needs far less memory than the full image: 1/8 scale fits where full does not.
    let tight = Limits {
        max_alloc: 200 * 150 * 3,
        ..Limits::default()
    };
    assert!(derive(&photo, 25, &tight).is_ok());
    assert_eq!(
        code(derive_via(&photo, 25, &tight, DecodePath::Full)),
        "photo_too_much_memory"
    );
}

#[test]
fn unsupported_formats_tell_the_app_to_convert() {
    let heic: &[u8] = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic\0\0\0\x08free";
    let avif: &[u8] = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf\0\0\0\x08free";
    let gif: &[u8] = b"GIF89a\x01\0\x01\0\x80\0\0\xff\xff\xff\0\0\0!";
    let tiff: &[u8] = b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0";
    let bmp: &[u8] = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0";
    let text: &[u8] = b"hello, this is not a photo at all";
    let limits = Limits::default();
    for (name, bytes, found) in [
        ("heic", heic, "HEIC"),
        ("avif", avif, "AVIF"),
        ("gif", gif, "GIF"),
        ("tiff", tiff, "TIFF"),
        ("bmp", bmp, "BMP"),
        ("text", text, "unknown"),
    ] {
        let err = inspect(bytes, None, &limits).expect_err(name);
        assert_eq!(err.code(), "photo_unsupported_format", "{name}");
        let message = err.to_string();
        assert!(message.contains(found), "{name}: {message}");
        assert!(
            message.contains("convert the photo to JPEG on the phone"),
            "{name}: {message}"
        );
        // The first 16 bytes of an upload are enough to refuse it.
        assert_eq!(
            code(sniff(&bytes[..16])),
            "photo_unsupported_format",
            "{name}"
        );
        assert_eq!(
            code(derive(bytes, 320, &limits)),
            "photo_unsupported_format",
            "{name}"
        );
    }
}

#[test]
fn sniffs_the_accepted_formats_from_16_bytes() {
    let image = scene(64, 48, 3);
    assert_eq!(sniff(&jpeg(&image, 90, None)[..16]), Ok(Format::Jpeg));
    assert_eq!(sniff(&png(&image)[..16]), Ok(Format::Png));
    assert_eq!(sniff(&webp(&image)[..16]), Ok(Format::WebP));
    assert_eq!(Format::Jpeg.mime(), "image/jpeg");
    assert_eq!(Format::WebP.extension(), "webp");
}

#[test]
fn truncated() {
    let limits = Limits::default();
    let image = scene(300, 200, 4);
    for (name, whole) in [
        ("jpeg", jpeg(&image, 90, None)),
        ("progressive jpeg", progressive_jpeg(&image, 90)),
        ("png", png(&image)),
        ("webp", webp(&image)),
    ] {
        assert!(inspect(&whole, None, &limits).is_ok(), "{name} whole");
        for cut in [whole.len() / 2, whole.len() - 40] {
            let part = &whole[..cut];
            let err = inspect(part, None, &limits).expect_err("cut short");
            assert_eq!(err.code(), "photo_truncated", "{name} cut at {cut}: {err}");
        }
        // Cut inside the header.
        assert_eq!(
            code(inspect(&whole[..30], None, &limits)),
            "photo_truncated",
            "{name} header"
        );
    }
    let whole = jpeg(&image, 90, None);
    // Cut after the last scan, before the end-of-image marker: the pixels are all there, the
    // file is still cut.
    assert!(whole.ends_with(&[0xFF, 0xD9]));
    assert_eq!(
        code(inspect(&whole[..whole.len() - 2], None, &limits)),
        "photo_truncated"
    );
    assert_eq!(
        code(derive(&whole[..whole.len() / 2], 100, &limits)),
        "photo_truncated"
    );
    assert_eq!(
        code(perceptual_hash(&whole[..whole.len() / 2], &limits)),
        "photo_truncated"
    );
}

#[test]
fn corrupt() {
    let limits = Limits::default();
    let image = scene(300, 200, 5);
    // JPEG: garbage in the middle of the scan data.
    let mut damaged = jpeg(&image, 90, None);
    let mut noise = Noise::new(99);
    let middle = damaged.len() / 2;
    for b in &mut damaged[middle..middle + 400] {
        *b = noise.next() as u8;
    }
    let err = inspect(&damaged, None, &limits).expect_err("damaged JPEG");
    assert_eq!(err.code(), "photo_corrupt", "{err}");
    // JPEG: a frame header with no components.
    let mut no_components = jpeg(&image, 90, None);
    let sof = no_components
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    no_components[sof + 9] = 0;
    assert_eq!(
        code(inspect(&no_components, None, &limits)),
        "photo_corrupt"
    );
    // PNG: a flipped byte in the compressed data fails its checksum.
    let mut png = png(&image);
    let idat = png.windows(4).position(|w| w == b"IDAT").expect("IDAT");
    png[idat + 20] ^= 0x55;
    assert_eq!(code(inspect(&png, None, &limits)), "photo_corrupt");
}

#[test]
fn damaged_jpegs_are_refused_never_crash() {
    // Bytes changed at random places, header and scan data alike, in baseline and progressive
    // files: libjpeg (C) must answer every one with a result or a photo code, and what it
    // accepts must have the header's size.
    let limits = Limits::default();
    let image = scene(160, 120, 7);
    let mut noise = Noise::new(2026);
    let mut refused = 0;
    for whole in [jpeg(&image, 85, None), progressive_jpeg(&image, 85)] {
        for round in 0..150 {
            let mut damaged = whole.clone();
            for _ in 0..1 + round % 4 {
                let at = noise.next() as usize % damaged.len();
                damaged[at] = noise.next() as u8;
            }
            match derive(&damaged, 64, &limits) {
                Ok(thumbnail) => assert!(decode(&thumbnail).width() <= 64),
                Err(e) => {
                    refused += 1;
                    assert!(
                        matches!(
                            e.code(),
                            "photo_corrupt"
                                | "photo_truncated"
                                | "photo_unsupported_format"
                                | "photo_too_many_pixels"
                                | "photo_too_much_memory"
                        ),
                        "round {round}: {e}"
                    );
                }
            }
        }
    }
    // Most single-byte changes in scan data are caught as damage (the Huffman codes go wrong).
    assert!(refused > 100, "only {refused} of 300 damaged files refused");
}

#[test]
fn a_progressive_jpeg_of_thousands_of_scans_is_refused_before_decoding() {
    // Every scan of a progressive JPEG is a pass over the whole image; a file of repeated scans
    // costs little to send and much to decode. Its last scan, repeated 600 times:
    let limits = Limits::default();
    let whole = progressive_jpeg(&scene(320, 240, 8), 85);
    let last_scan = whole
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let end = whole.len() - 2;
    let mut many = whole[..end].to_vec();
    for _ in 0..600 {
        many.extend_from_slice(&whole[last_scan..end]);
    }
    many.extend_from_slice(&[0xFF, 0xD9]);
    let err = inspect(&many, None, &limits).expect_err("too many scans");
    assert_eq!(err.code(), "photo_unsupported_format", "{err}");
    assert!(err.to_string().contains("scans"), "{err}");
    // The same file as it was is fine.
    assert!(inspect(&whole, None, &limits).is_ok());
}

#[test]
fn bytes_after_the_end_of_the_jpeg_are_not_damage() {
    // Phones append data after the end-of-image marker (a motion photo's video, a maker's
    // trailer); the picture itself is whole and must be accepted.
    let limits = Limits::default();
    let image = scene(300, 200, 6);
    let mut with_trailer = jpeg(&image, 90, None);
    with_trailer.extend_from_slice(b"ftypmp42 and a few hundred bytes of something else");
    with_trailer.extend(std::iter::repeat_n(0xA5u8, 500));
    let inspected = inspect(&with_trailer, Some("image/jpeg"), &limits).expect("accepted");
    assert_eq!((inspected.width, inspected.height), (300, 200));
    let thumbnail = decode(&derive(&with_trailer, 100, &limits).expect("thumbnail"));
    assert_eq!(thumbnail.dimensions(), (100, 67));
}

#[test]
fn declared_type_must_match_the_content() {
    let limits = Limits::default();
    let image = scene(64, 48, 6);
    let (j, p, w) = (jpeg(&image, 90, None), png(&image), webp(&image));
    for ok in [
        "image/jpeg",
        "image/jpg",
        "jpg",
        "JPEG",
        ".jpg",
        "IMG_0001.JPG",
        "application/octet-stream",
    ] {
        assert!(inspect(&j, Some(ok), &limits).is_ok(), "{ok}");
    }
    assert!(inspect(&p, Some("image/png"), &limits).is_ok());
    assert!(inspect(&w, Some("webp"), &limits).is_ok());
    for (bytes, declared) in [
        (&j, "image/png"),
        (&j, "image/heic"),
        (&p, "jpg"),
        (&w, "image/jpeg"),
        (&j, "text/plain"),
    ] {
        let err = inspect(bytes, Some(declared), &limits).expect_err(declared);
        assert_eq!(err.code(), "photo_type_mismatch", "{declared}");
    }
    assert_eq!(
        inspect(&p, Some("image/jpeg"), &limits),
        Err(PhotoError::TypeMismatch {
            declared: "image/jpeg".to_owned(),
            actual: Format::Png
        })
    );
}

// --- EXIF -----------------------------------------------------------------------------------

#[test]
fn exif_is_read_back() {
    let photo = jpeg(&scene(400, 300, 7), 90, Some(&exif_full()));
    let inspected = inspect(&photo, Some("image/jpeg"), &Limits::default()).expect("valid photo");
    assert_eq!(inspected.format, Format::Jpeg);
    assert_eq!((inspected.width, inspected.height), (400, 300));
    assert_eq!(
        inspected.display_size(),
        (300, 400),
        "orientation 6 turns it"
    );
    let exif = inspected.exif;
    assert_eq!(exif.taken_at.as_deref(), Some("2026-11-23T14:05:09"));
    assert_eq!(exif.offset.as_deref(), Some("+08:00"));
    let (lat, lon) = (exif.lat.expect("latitude"), exif.lon.expect("longitude"));
    assert!((lat - EXPECTED_LAT).abs() < 1e-9, "{lat}");
    assert!((lon - EXPECTED_LON).abs() < 1e-9, "{lon}");
    assert!(lat < 0.0 && lon < 0.0, "south and west are negative");
    assert_eq!(exif.gps_datum.as_deref(), Some("WGS-84"));
    assert_eq!(exif.make.as_deref(), Some("HUAWEI"));
    assert_eq!(exif.model.as_deref(), Some("P40"));
    assert_eq!(exif.orientation, Some(6));
    // It serialises for the API.
    let json = serde_json::to_value(&exif).expect("serialises");
    assert_eq!(json["taken_at"], "2026-11-23T14:05:09");
}

#[test]
fn no_exif_and_broken_exif_are_empty_not_errors() {
    let limits = Limits::default();
    let plain = jpeg(&scene(100, 80, 8), 90, None);
    assert_eq!(
        inspect(&plain, None, &limits).expect("valid").exif,
        Exif::default()
    );
    let broken = jpeg(
        &scene(100, 80, 8),
        90,
        Some(b"MM\0*\0\0\0\x08\xff\xff garbage"),
    );
    assert_eq!(
        inspect(&broken, None, &limits).expect("valid").exif,
        Exif::default()
    );
}

// --- derived images -------------------------------------------------------------------------

/// Mean colour of one quadrant.
fn quadrant(image: &DynamicImage, right: bool, bottom: bool) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let (x0, y0) = (
        if right { w / 2 } else { 0 },
        if bottom { h / 2 } else { 0 },
    );
    let mut sum = [0u64; 3];
    let mut n = 0;
    // Keep away from the edges between quadrants, where the resize blends them.
    for y in y0 + h / 8..y0 + h / 2 - h / 8 {
        for x in x0 + w / 8..x0 + w / 2 - w / 8 {
            let p = image.get_pixel(x, y).0;
            for c in 0..3 {
                sum[c] += u64::from(p[c]);
            }
            n += 1;
        }
    }
    sum.map(|s| (s / n) as u8)
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 150 && p[1] < 90 && p[2] < 90
}

#[test]
fn thumbnails_honour_all_eight_orientations() {
    // Where the stored top-left corner is seen, for each EXIF orientation.
    let expected = [
        (1, false, false),
        (2, true, false),
        (3, true, true),
        (4, false, true),
        (5, false, false),
        (6, true, false),
        (7, true, true),
        (8, false, true),
    ];
    let stored = red_corner(400, 300);
    for (orientation, right, bottom) in expected {
        let photo = jpeg(&stored, 92, Some(&exif_orientation(orientation)));
        let thumb = decode(&derive(&photo, 100, &Limits::default()).expect("derives"));
        let size = if orientation >= 5 {
            (75, 100)
        } else {
            (100, 75)
        };
        assert_eq!(thumb.dimensions(), size, "orientation {orientation}");
        for (r, b) in [(false, false), (true, false), (false, true), (true, true)] {
            let colour = quadrant(&thumb, r, b);
            assert_eq!(
                is_red(colour),
                (r, b) == (right, bottom),
                "orientation {orientation}: quadrant right={r} bottom={b} is {colour:?}"
            );
        }
    }
}

#[test]
fn reduced_scale_matches_the_full_decode() {
    let limits = Limits::default();
    for (w, h) in [(1000, 750), (999, 601), (601, 999), (1283, 17), (33, 17)] {
        let photo = jpeg(&scene(w, h, w + h), 90, None);
        for edge in [100, 320, 700, 1280] {
            let reduced =
                decode(&derive_via(&photo, edge, &limits, DecodePath::Reduced).expect("reduced"));
            let full = decode(&derive_via(&photo, edge, &limits, DecodePath::Full).expect("full"));
            assert_eq!(reduced.dimensions(), full.dimensions(), "{w}×{h} at {edge}");
            let long = reduced.width().max(reduced.height());
            assert_eq!(
                long,
                edge.min(w.max(h)),
                "{w}×{h} at {edge}: long edge, never enlarged"
            );
            if reduced.width().min(reduced.height()) < 8 {
                continue; // a strip: the two paths average different rows
            }
            // The same picture: small mean difference.
            let (a, b) = (reduced.to_rgb8(), full.to_rgb8());
            let diff: u64 = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| u64::from(x.abs_diff(*y)))
                .sum();
            let mean = diff as f64 / a.as_raw().len() as f64;
            assert!(mean < 12.0, "{w}×{h} at {edge}: mean difference {mean}");
        }
    }
}

#[test]
fn every_accepted_kind_gives_a_jpeg_thumbnail() {
    let limits = Limits::default();
    let image = scene(640, 480, 9);
    let kinds = [
        ("png", png(&image)),
        ("webp", webp(&image)),
        ("progressive", progressive_jpeg(&image, 90)),
        ("grey", grey_jpeg(&image, 90)),
    ];
    for (name, bytes) in kinds {
        assert!(inspect(&bytes, None, &limits).is_ok(), "{name}");
        let thumb = decode(&derive(&bytes, 320, &limits).expect("derives"));
        assert_eq!(thumb.dimensions(), (320, 240), "{name}");
        // The picture survives: compare with a straightforward full-size resize.
        let expected = image::imageops::thumbnail(&image, 320, 240);
        let got = thumb.to_rgb8();
        let diff: u64 = got
            .pixels()
            .zip(expected.pixels())
            .map(|(a, b)| {
                let luma = |p: &image::Rgb<u8>| {
                    (u64::from(p[0]) * 3 + u64::from(p[1]) * 6 + u64::from(p[2])) / 10
                };
                luma(a).abs_diff(luma(b))
            })
            .sum();
        let mean = diff as f64 / f64::from(320 * 240);
        assert!(mean < 10.0, "{name}: mean brightness difference {mean}");
    }
}

// --- perceptual hash ------------------------------------------------------------------------

#[test]
fn perceptual_hash_finds_the_same_photo() {
    let limits = Limits::default();
    let original = scene(1600, 1200, 10);
    let photo = jpeg(&original, 90, None);
    let hash = perceptual_hash(&photo, &limits).expect("hash");
    let requality = perceptual_hash(&jpeg(&original, 40, None), &limits).expect("hash");
    let smaller = downscale_keeping_exif(&photo, 500, 75, &limits).expect("downscale");
    let smaller = perceptual_hash(&smaller, &limits).expect("hash");
    let as_png = perceptual_hash(
        &png(&image::imageops::thumbnail(&original, 800, 600)),
        &limits,
    )
    .expect("hash");
    // The same picture stored turned, with an orientation tag that turns it back.
    let turned = image::imageops::rotate270(&original);
    let turned =
        perceptual_hash(&jpeg(&turned, 90, Some(&exif_orientation(6))), &limits).expect("hash");
    for (name, other) in [
        ("quality 40", requality),
        ("500 px", smaller),
        ("PNG", as_png),
        ("turned + tag", turned),
    ] {
        assert!(
            hamming(hash, other) <= 6,
            "{name}: {} bits apart",
            hamming(hash, other)
        );
    }
    for seed in [11, 12, 13] {
        let different =
            perceptual_hash(&jpeg(&scene(1600, 1200, seed), 90, None), &limits).expect("hash");
        assert!(
            hamming(hash, different) >= 16,
            "seed {seed}: only {} bits apart",
            hamming(hash, different)
        );
    }
}

/// A hash that is nearly all 0s (or 1s) cannot tell pictures apart: flat, striped and blocky
/// pictures each get a balanced hash, and they are far from each other.
#[test]
fn perceptual_hashes_are_balanced_and_tell_simple_pictures_apart() {
    let limits = Limits::default();
    let blocks = image::RgbImage::from_fn(640, 480, |x, y| {
        let block = ((x / 80 + y / 60) % 5) as u8;
        image::Rgb([block * 50, (x * 255 / 640) as u8, (y * 255 / 480) as u8])
    });
    let stripes = image::RgbImage::from_fn(640, 480, |x, y| {
        let band = ((x + 2 * y) / 90 % 2) as u8;
        image::Rgb([40 + band * 180, 200 - band * 150, 60 + band * 100])
    });
    let gradient = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x * 255 / 640) as u8, 128, (255 - y * 255 / 480) as u8])
    });
    let hashes: Vec<u64> = [&blocks, &stripes, &gradient]
        .iter()
        .map(|image| perceptual_hash(&jpeg(image, 90, None), &limits).expect("hash"))
        .collect();
    for hash in &hashes {
        let ones = hash.count_ones();
        assert!((20..=44).contains(&ones), "{hash:016x}: {ones} bits set");
    }
    for (i, a) in hashes.iter().enumerate() {
        for b in &hashes[i + 1..] {
            assert!(hamming(*a, *b) >= 16, "{a:016x} vs {b:016x}");
        }
    }
}

// --- the phone's downscale ------------------------------------------------------------------

#[test]
fn downscale_keeps_the_exif() {
    let limits = Limits::default();
    let photo = jpeg(&scene(2000, 1500, 14), 95, Some(&exif_full()));
    let before = inspect(&photo, None, &limits).expect("valid");
    let small = downscale_keeping_exif(&photo, 1024, 80, &limits).expect("downscale");
    assert!(
        small.len() < photo.len() / 2,
        "{} → {} bytes",
        photo.len(),
        small.len()
    );
    let after = inspect(&small, Some("image/jpeg"), &limits).expect("valid");
    assert_eq!(
        (after.width, after.height),
        (1024, 768),
        "pixels not turned: stored size"
    );
    assert_eq!(after.exif, before.exif);
    assert_eq!(after.exif.orientation, Some(6));
    assert!(after.exif.lat.is_some() && after.exif.taken_at.is_some());
    // Already small enough: the very same bytes.
    assert_eq!(
        downscale_keeping_exif(&photo, 2000, 80, &limits).expect("unchanged"),
        photo
    );
    // A PNG becomes a JPEG.
    let png = png(&scene(1200, 900, 15));
    let from_png = downscale_keeping_exif(&png, 600, 80, &limits).expect("downscale");
    assert_eq!(decode(&from_png).dimensions(), (600, 450));
}

#[test]
fn derived_output_has_no_metadata_and_fits() {
    let limits = Limits::default();
    let photo = jpeg(&scene(1200, 900, 16), 90, Some(&exif_full()));
    let preview = derive(&photo, 1280, &limits).expect("preview");
    let inspected = inspect(&preview, None, &limits).expect("valid");
    assert_eq!(
        (inspected.width, inspected.height),
        (900, 1200),
        "turned upright, not enlarged"
    );
    assert_eq!(
        inspected.exif,
        Exif::default(),
        "GPS does not leak into thumbnails"
    );
}

// --- one decode for all three: derive_all ---------------------------------------------------

/// Mean absolute difference per channel (0 to 255) of two pictures of the same size.
fn mean_difference(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    assert_eq!(a.dimensions(), b.dimensions());
    let diff: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    diff as f64 / a.as_raw().len() as f64
}

/// `derive_all` against the three separate calls: the preview byte for byte, the thumbnail the
/// same size with nearly the same pixels, the hash within `hash_bits` bits. Returns the results,
/// decoded, and the hash distance.
fn like_the_separate_calls(
    name: &str,
    bytes: &[u8],
    hash_bits: u32,
) -> (DynamicImage, DynamicImage, u32) {
    let limits = Limits::default();
    let Derivatives {
        thumbnail,
        preview,
        phash,
    } = derive_all(bytes, &limits).expect(name);
    let separate_preview = derive(bytes, PREVIEW_EDGE, &limits).expect(name);
    assert!(
        preview == separate_preview,
        "{name}: the preview is not derive's"
    );
    let separate_thumbnail = derive(bytes, THUMBNAIL_EDGE, &limits).expect(name);
    let (thumb, separate) = (decode(&thumbnail), decode(&separate_thumbnail));
    assert_eq!(thumb.dimensions(), separate.dimensions(), "{name}");
    let diff = mean_difference(&thumb, &separate);
    assert!(
        diff < 3.0,
        "{name}: the thumbnail is {diff:.2} levels from derive's"
    );
    let distance = hamming(phash, perceptual_hash(bytes, &limits).expect(name));
    assert!(
        distance <= hash_bits,
        "{name}: the hash is {distance} bits from perceptual_hash"
    );
    eprintln!("{name}: thumbnail {diff:.2} levels from derive's, hash {distance} bits");
    (thumb, decode(&preview), distance)
}

#[test]
fn derive_all_matches_the_separate_calls() {
    // Landscape, portrait, strips whose preview is decoded at 1/4, sizes where the thumbnail and
    // the hash come from a full-size decode, and small photos decoded whole for everything.
    let mut distances = Vec::new();
    for (w, h) in [
        (2600, 1950),
        (1950, 2600),
        (5200, 400),
        (400, 5200),
        (2048, 1536),
        (1600, 1200),
        (1000, 750),
        (300, 200),
        (33, 17),
    ] {
        let photo = jpeg(&scene(w, h, w * 3 + h), 90, None);
        let name = format!("{w}×{h}");
        let (thumb, preview, distance) = like_the_separate_calls(&name, &photo, 2);
        distances.push(distance);
        let long = |image: &DynamicImage| image.width().max(image.height());
        assert_eq!(long(&thumb), w.max(h).min(THUMBNAIL_EDGE), "{name}");
        assert_eq!(long(&preview), w.max(h).min(PREVIEW_EDGE), "{name}");
        assert_eq!(
            w > h,
            thumb.width() > thumb.height(),
            "{name}: same way round"
        );
        assert_eq!(w > h, preview.width() > preview.height(), "{name}");
    }
    eprintln!("hash distances: {distances:?}");
    assert!(
        distances.iter().filter(|&&d| d == 0).count() >= distances.len() - 2,
        "the hash should usually be the same: {distances:?}"
    );
}

#[test]
fn derive_all_on_every_accepted_kind() {
    let limits = Limits::default();
    let image = scene(1600, 1200, 17);
    for (name, bytes) in [
        ("progressive", progressive_jpeg(&image, 90)),
        ("grey", grey_jpeg(&image, 90)),
    ] {
        like_the_separate_calls(name, &bytes, 2);
    }
    // PNG and WebP are decoded whole whichever call decodes them: the very same results.
    for (name, bytes) in [("png", png(&image)), ("webp", webp(&image))] {
        let all = derive_all(&bytes, &limits).expect(name);
        assert_eq!(
            all.thumbnail,
            derive(&bytes, THUMBNAIL_EDGE, &limits).expect(name),
            "{name}"
        );
        assert_eq!(
            all.preview,
            derive(&bytes, PREVIEW_EDGE, &limits).expect(name),
            "{name}"
        );
        assert_eq!(
            all.phash,
            perceptual_hash(&bytes, &limits).expect(name),
            "{name}"
        );
        assert_eq!(decode(&all.thumbnail).dimensions(), (320, 240), "{name}");
        assert_eq!(decode(&all.preview).dimensions(), (1280, 960), "{name}");
    }
}

#[test]
fn derive_all_honours_all_eight_orientations() {
    // Where the stored top-left corner is seen, for each EXIF orientation.
    let expected = [
        (1, false, false),
        (2, true, false),
        (3, true, true),
        (4, false, true),
        (5, false, false),
        (6, true, false),
        (7, true, true),
        (8, false, true),
    ];
    // Wide enough that the preview is decoded at 1/2 and the thumbnail averaged down to 1/8.
    let stored = red_corner(2600, 1000);
    for (orientation, right, bottom) in expected {
        let photo = jpeg(&stored, 92, Some(&exif_orientation(orientation)));
        let name = format!("orientation {orientation}");
        // Two flat colours: most of the 64 DCT coefficients tie at the median, so the hash's
        // bits follow rounding. The geometry is what this test is about.
        let (thumb, preview, _) = like_the_separate_calls(&name, &photo, 64);
        let turned = orientation >= 5;
        let sizes = [
            (&thumb, if turned { (123, 320) } else { (320, 123) }),
            (&preview, if turned { (492, 1280) } else { (1280, 492) }),
        ];
        for (image, size) in sizes {
            assert_eq!(image.dimensions(), size, "{name}");
            for (r, b) in [(false, false), (true, false), (false, true), (true, true)] {
                let colour = quadrant(image, r, b);
                assert_eq!(
                    is_red(colour),
                    (r, b) == (right, bottom),
                    "{name}, {size:?}: quadrant right={r} bottom={b} is {colour:?}"
                );
            }
        }
    }
}

#[test]
fn derive_all_refuses_like_derive() {
    let image = scene(300, 200, 18);
    let whole = jpeg(&image, 90, None);
    let progressive = progressive_jpeg(&image, 90);
    let png_whole = png(&image);
    let webp_whole = webp(&image);
    let mut garbage = whole.clone();
    let mut noise = Noise::new(99);
    let middle = garbage.len() / 2;
    for b in &mut garbage[middle..middle + 400] {
        *b = noise.next() as u8;
    }
    let mut no_components = whole.clone();
    let sof = no_components
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    no_components[sof + 9] = 0;
    let mut flipped_png = png_whole.clone();
    let idat = flipped_png
        .windows(4)
        .position(|w| w == b"IDAT")
        .expect("IDAT");
    flipped_png[idat + 20] ^= 0x55;
    let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic\0\0\0\x08free".to_vec();

    let default = Limits::default();
    let limits = |max_bytes, max_pixels, max_alloc| Limits {
        max_bytes,
        max_pixels,
        max_alloc,
    };
    let few_bytes = limits(whole.len() as u64 - 1, u64::MAX, u64::MAX);
    let few_pixels = limits(u64::MAX, 300 * 200 - 1, u64::MAX);
    let little_memory = limits(u64::MAX, u64::MAX, 1_000);
    let cases: [(&str, &[u8], &Limits, &str); 19] = [
        ("empty", &[], &default, "photo_empty"),
        ("too large", &whole, &few_bytes, "photo_too_large"),
        ("heic", &heic, &default, "photo_unsupported_format"),
        (
            "jpeg cut in half",
            &whole[..whole.len() / 2],
            &default,
            "photo_truncated",
        ),
        (
            "jpeg cut 40 bytes short",
            &whole[..whole.len() - 40],
            &default,
            "photo_truncated",
        ),
        (
            "jpeg cut in the header",
            &whole[..30],
            &default,
            "photo_truncated",
        ),
        (
            "progressive jpeg cut in half",
            &progressive[..progressive.len() / 2],
            &default,
            "photo_truncated",
        ),
        (
            "png cut in half",
            &png_whole[..png_whole.len() / 2],
            &default,
            "photo_truncated",
        ),
        (
            "webp cut in half",
            &webp_whole[..webp_whole.len() / 2],
            &default,
            "photo_truncated",
        ),
        ("jpeg with garbage", &garbage, &default, "photo_corrupt"),
        (
            "jpeg without components",
            &no_components,
            &default,
            "photo_corrupt",
        ),
        (
            "png with a flipped byte",
            &flipped_png,
            &default,
            "photo_corrupt",
        ),
        (
            "jpeg over max_pixels",
            &whole,
            &few_pixels,
            "photo_too_many_pixels",
        ),
        (
            "png over max_pixels",
            &png_whole,
            &few_pixels,
            "photo_too_many_pixels",
        ),
        (
            "65,535² jpeg header",
            &huge_jpeg_header(),
            &default,
            "photo_too_many_pixels",
        ),
        (
            "100,000² png header",
            &huge_png_header(),
            &default,
            "photo_too_many_pixels",
        ),
        (
            "jpeg over max_alloc",
            &whole,
            &little_memory,
            "photo_too_much_memory",
        ),
        (
            "png over max_alloc",
            &png_whole,
            &little_memory,
            "photo_too_much_memory",
        ),
        (
            "webp over max_alloc",
            &webp_whole,
            &little_memory,
            "photo_too_much_memory",
        ),
    ];
    for (name, bytes, limits, expected) in cases {
        assert_eq!(code(derive_all(bytes, limits)), expected, "{name}");
        assert_eq!(
            code(derive(bytes, PREVIEW_EDGE, limits)),
            expected,
            "{name}: derive, preview"
        );
        assert_eq!(
            code(derive(bytes, THUMBNAIL_EDGE, limits)),
            expected,
            "{name}: derive, thumbnail"
        );
    }

    // derive_all decodes at the preview's scale: where only the thumbnail's decode fits in
    // max_alloc, it is refused as derive(PREVIEW_EDGE) is (1600 × 1200: the thumbnail is decoded
    // at 1/4, 400 × 300; the preview whole).
    let photo = jpeg(&scene(1600, 1200, 19), 90, None);
    let tight = limits(u64::MAX, u64::MAX, 1024 * 1024);
    assert!(derive(&photo, THUMBNAIL_EDGE, &tight).is_ok());
    assert_eq!(
        code(derive(&photo, PREVIEW_EDGE, &tight)),
        "photo_too_much_memory"
    );
    assert_eq!(code(derive_all(&photo, &tight)), "photo_too_much_memory");
}
