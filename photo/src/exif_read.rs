//! The EXIF fields GridPatrol uses, read with kamadak-exif.

use exif::{Field, In, Reader, Tag, Value};

use crate::Exif;

/// Reads what it can from an EXIF block (TIFF structure). Damaged fields are left out; a block
/// that cannot be read at all gives an empty [`Exif`].
pub(crate) fn parse(raw: Option<&[u8]>) -> Exif {
    let Some(raw) = raw else {
        return Exif::default();
    };
    let mut reader = Reader::new();
    reader.continue_on_error(true);
    let parsed = reader
        .read_raw(raw.to_vec())
        .or_else(|e| e.distill_partial_result(|_ignored| {}));
    let Ok(exif) = parsed else {
        return Exif::default();
    };
    let field = |tag: Tag| exif.get_field(tag, In::PRIMARY);
    Exif {
        taken_at: field(Tag::DateTimeOriginal).and_then(date_time),
        offset: field(Tag::OffsetTimeOriginal).and_then(offset),
        lat: coordinate(
            field(Tag::GPSLatitude),
            field(Tag::GPSLatitudeRef),
            b'N',
            b'S',
            90.0,
        ),
        lon: coordinate(
            field(Tag::GPSLongitude),
            field(Tag::GPSLongitudeRef),
            b'E',
            b'W',
            180.0,
        ),
        gps_datum: field(Tag::GPSMapDatum).and_then(text),
        make: field(Tag::Make).and_then(text),
        model: field(Tag::Model).and_then(text),
        orientation: field(Tag::Orientation)
            .and_then(|f| f.value.get_uint(0))
            .and_then(|o| u16::try_from(o).ok())
            .filter(|o| (1..=8).contains(o)),
    }
}

/// The first ASCII string of a field, without trailing NULs and spaces.
fn ascii(field: &Field) -> Option<&[u8]> {
    match &field.value {
        Value::Ascii(strings) => strings.first().map(|s| s.trim_ascii()),
        _ => None,
    }
}

fn text(field: &Field) -> Option<String> {
    let s = ascii(field)?;
    let s = String::from_utf8_lossy(s)
        .trim_matches(char::from(0))
        .trim()
        .to_owned();
    (!s.is_empty()).then_some(s)
}

/// `2026:11:23 14:05:09` → `2026-11-23T14:05:09`; blank or impossible dates give `None`.
fn date_time(field: &Field) -> Option<String> {
    let dt = exif::DateTime::from_ascii(ascii(field)?).ok()?;
    let valid = (1..=12).contains(&dt.month)
        && (1..=31).contains(&dt.day)
        && dt.hour <= 23
        && dt.minute <= 59
        && dt.second <= 60;
    valid.then(|| {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
        )
    })
}

/// `+08:00` as written by the camera, checked and rewritten in the same form.
fn offset(field: &Field) -> Option<String> {
    let mut dt = exif::DateTime {
        year: 2000,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        nanosecond: None,
        offset: None,
    };
    dt.parse_offset(ascii(field)?).ok()?;
    let minutes = dt.offset?;
    let sign = if minutes < 0 { '-' } else { '+' };
    let minutes = minutes.unsigned_abs();
    (minutes <= 14 * 60).then(|| format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60))
}

/// Degrees, minutes, seconds and a hemisphere reference to signed decimal degrees. Without its
/// reference a coordinate is dropped rather than guessed into the wrong hemisphere.
fn coordinate(
    value: Option<&Field>,
    reference: Option<&Field>,
    positive: u8,
    negative: u8,
    max: f64,
) -> Option<f64> {
    let Value::Rational(parts) = &value?.value else {
        return None;
    };
    if parts.is_empty() || parts.iter().any(|r| r.denom == 0) {
        return None;
    }
    let degrees: f64 = parts
        .iter()
        .take(3)
        .zip([1.0, 60.0, 3600.0])
        .map(|(r, unit)| r.to_f64() / unit)
        .sum();
    let sign = match ascii(reference?)?.first()?.to_ascii_uppercase() {
        c if c == positive => 1.0,
        c if c == negative => -1.0,
        _ => return None,
    };
    (degrees.is_finite() && degrees <= max).then_some(sign * degrees)
}
