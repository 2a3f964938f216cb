//! A phone camera for the simulation: a JPEG of a made-up scene, with the EXIF a phone writes
//! (time taken in China time, GPS position, make and model), so that photos look like evidence
//! to the server's checks.

use std::io::Cursor;

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};
use rand::Rng;

/// What the camera knows when the shutter goes.
pub struct Shot {
    /// Device time, Unix milliseconds.
    pub at_ms: i64,
    /// Where, in the datum named by `datum` (`WGS-84` for raw GNSS).
    pub lon: f64,
    pub lat: f64,
    pub datum: &'static str,
    /// The phone's time zone, minutes east of UTC: the camera writes local time (China: 480).
    pub utc_offset_min: i32,
    /// Whether the camera also writes the zone (`OffsetTimeOriginal`); older camera apps do not.
    pub writes_offset: bool,
}

/// How the camera renders: the scene (sky, bank, objects, make and model) comes from `scene`,
/// the sensor noise from `noise`, so that the same view can be shot again with new noise, or the
/// very same picture re-encoded.
pub struct Exposure {
    pub width: u16,
    pub height: u16,
    /// JPEG quality, 1–100 (phones: 85–95).
    pub quality: u8,
    pub scene: u64,
    pub noise: u64,
}

const PHONES: [(&str, &str); 4] = [
    ("HUAWEI", "NOH-AN00"),
    ("Xiaomi", "Redmi Note 12"),
    ("OPPO", "PHB110"),
    ("vivo", "V2241A"),
];

/// A photo as a phone's camera would write it: `width` × `height`, JPEG quality 85, a scene
/// and noise of its own drawn from `rng`.
pub fn shoot(shot: &Shot, width: u16, height: u16, rng: &mut impl Rng) -> Result<Vec<u8>, String> {
    let exposure = Exposure {
        width,
        height,
        quality: 85,
        scene: rng.random(),
        noise: rng.random(),
    };
    expose(shot, &exposure)
}

/// A photo of `exposure`'s scene with its noise: the same seeds give the same pixels.
pub fn expose(shot: &Shot, exposure: &Exposure) -> Result<Vec<u8>, String> {
    use rand::SeedableRng;
    let (width, height) = (exposure.width, exposure.height);
    let rng = &mut rand::rngs::StdRng::seed_from_u64(exposure.scene);
    let noise = &mut rand::rngs::StdRng::seed_from_u64(exposure.noise);
    let (w, h) = (u32::from(width), u32::from(height));
    // A sky, a river bank and a few objects, with sensor noise: not compressible to nothing.
    let blocks: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..8)
        .map(|_| {
            (
                rng.random_range(0..w),
                rng.random_range(h / 3..h),
                rng.random_range(w / 20..w / 4),
                rng.random_range(h / 20..h / 4),
                [rng.random(), rng.random(), rng.random()],
            )
        })
        .collect();
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let mut p = if y < h / 3 {
                [150, 190, 235]
            } else {
                [(60 + x * 60 / w) as u8, (110 + y * 50 / h) as u8, 70]
            };
            for &(bx, by, bw, bh, c) in &blocks {
                if x >= bx && x < bx + bw && y >= by && y < by + bh {
                    p = c;
                }
            }
            let n: i16 = noise.random_range(-10..=10);
            pixels.extend(p.map(|v| (i16::from(v) + n).clamp(0, 255) as u8));
        }
    }
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, exposure.quality.clamp(1, 100));
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    let (make, model) = PHONES[rng.random_range(0..PHONES.len())];
    encoder
        .add_exif_metadata(&exif(shot, make, model)?)
        .map_err(|e| format!("EXIF: {e}"))?;
    encoder
        .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("JPEG: {e}"))?;
    Ok(out)
}

fn ascii(tag: Tag, text: &str) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![text.as_bytes().to_vec()]),
    }
}

/// Degrees as EXIF's degrees, minutes, seconds (seconds to 1/100).
fn dms(tag: Tag, degrees: f64) -> Field {
    let degrees = degrees.abs();
    let whole = degrees.trunc();
    let minutes = ((degrees - whole) * 60.0).trunc();
    let seconds = ((degrees - whole) * 3600.0 - minutes * 60.0) * 100.0;
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Rational(vec![
            Rational {
                num: whole as u32,
                denom: 1,
            },
            Rational {
                num: minutes as u32,
                denom: 1,
            },
            Rational {
                num: seconds.round() as u32,
                denom: 100,
            },
        ]),
    }
}

fn exif(shot: &Shot, make: &str, model: &str) -> Result<Vec<u8>, String> {
    // Phones write local time (in China UTC+8 all year), in the zone the phone is set to.
    let local = shot.at_ms.div_euclid(1000) + i64::from(shot.utc_offset_min) * 60;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let taken = format!(
        "{y:04}:{m:02}:{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let zone = format!(
        "{}{:02}:{:02}",
        if shot.utc_offset_min < 0 { '-' } else { '+' },
        shot.utc_offset_min.unsigned_abs() / 60,
        shot.utc_offset_min.unsigned_abs() % 60
    );
    let mut fields = vec![
        ascii(Tag::Make, make),
        ascii(Tag::Model, model),
        ascii(Tag::DateTimeOriginal, &taken),
        ascii(Tag::GPSLatitudeRef, if shot.lat < 0.0 { "S" } else { "N" }),
        dms(Tag::GPSLatitude, shot.lat),
        ascii(Tag::GPSLongitudeRef, if shot.lon < 0.0 { "W" } else { "E" }),
        dms(Tag::GPSLongitude, shot.lon),
        ascii(Tag::GPSMapDatum, shot.datum),
    ];
    if shot.writes_offset {
        fields.push(ascii(Tag::OffsetTimeOriginal, &zone));
    }
    let mut writer = Writer::new();
    for field in &fields {
        writer.push_field(field);
    }
    let mut out = Cursor::new(Vec::new());
    writer
        .write(&mut out, true)
        .map_err(|e| format!("EXIF: {e}"))?;
    Ok(out.into_inner())
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_photo_carries_time_and_place() {
        let shot = Shot {
            // 2026-11-23 06:05:09 UTC = 14:05:09 in China.
            at_ms: 1_795_413_909_000,
            lon: 108.52,
            lat: 25.93,
            datum: "WGS-84",
            utc_offset_min: 480,
            writes_offset: true,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let bytes = shoot(&shot, 640, 480, &mut rng).expect("shoot");
        let limits = gridpatrol_photo::Limits::default();
        let seen = gridpatrol_photo::inspect(&bytes, Some("image/jpeg"), &limits).expect("inspect");
        assert_eq!((seen.width, seen.height), (640, 480));
        assert_eq!(seen.exif.taken_at.as_deref(), Some("2026-11-23T14:05:09"));
        assert_eq!(seen.exif.offset.as_deref(), Some("+08:00"));
        assert!((seen.exif.lon.expect("lon") - 108.52).abs() < 1e-5);
        assert!((seen.exif.lat.expect("lat") - 25.93).abs() < 1e-5);
        assert_eq!(seen.exif.gps_datum.as_deref(), Some("WGS-84"));
    }

    #[test]
    fn a_phone_set_to_utc_writes_utc_with_or_without_its_zone() {
        let limits = gridpatrol_photo::Limits::default();
        for writes_offset in [true, false] {
            let shot = Shot {
                at_ms: 1_795_413_909_000,
                lon: 108.52,
                lat: 25.93,
                datum: "GCJ-02",
                utc_offset_min: 0,
                writes_offset,
            };
            let exposure = Exposure {
                width: 320,
                height: 240,
                quality: 70,
                scene: 5,
                noise: 6,
            };
            let bytes = expose(&shot, &exposure).expect("expose");
            assert_eq!(bytes, expose(&shot, &exposure).expect("again"), "seeded");
            let seen =
                gridpatrol_photo::inspect(&bytes, Some("image/jpeg"), &limits).expect("inspect");
            assert_eq!(seen.exif.taken_at.as_deref(), Some("2026-11-23T06:05:09"));
            let zone = seen.exif.offset.as_deref();
            assert_eq!(zone, writes_offset.then_some("+00:00"));
        }
    }

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
