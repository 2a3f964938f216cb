//! The format from the first bytes, and the declared type.

use crate::{Format, PhotoError};

/// The format from an upload's first bytes (16 or more when the file has them).
///
/// JPEG, PNG and WebP are accepted; HEIC, AVIF, GIF, TIFF, BMP and anything else give
/// `photo_unsupported_format`, naming what was found when it is recognised. No bytes give
/// `photo_empty`; a few bytes that begin an accepted signature but stop short of it give
/// `photo_truncated`.
pub fn sniff(head: &[u8]) -> Result<Format, PhotoError> {
    if head.is_empty() {
        return Err(PhotoError::Empty);
    }
    match infer::get(head) {
        Some(kind) => match kind.mime_type() {
            "image/jpeg" => Ok(Format::Jpeg),
            "image/png" => Ok(Format::Png),
            "image/webp" => Ok(Format::WebP),
            mime => Err(PhotoError::UnsupportedFormat {
                found: describe(mime),
            }),
        },
        None if begins_a_signature(head) => Err(PhotoError::Truncated),
        None => Err(PhotoError::UnsupportedFormat {
            found: "an unknown format".to_owned(),
        }),
    }
}

/// A name people know for a refused format.
fn describe(mime: &str) -> String {
    let name = match mime {
        "image/heif" => "HEIC/HEIF",
        "image/avif" => "AVIF",
        "image/gif" => "GIF",
        "image/tiff" => "TIFF",
        "image/bmp" => "BMP",
        "image/jxl" => "JPEG XL",
        "image/jp2" => "JPEG 2000",
        "image/x-canon-cr2" => "a camera raw file",
        _ => "this file type",
    };
    format!("{name} ({mime})")
}

/// `head` is shorter than an accepted format's signature and agrees with it so far.
fn begins_a_signature(head: &[u8]) -> bool {
    const SIGNATURES: [&[u8]; 3] = [&[0xFF, 0xD8, 0xFF], b"\x89PNG\r\n\x1a\n", b"RIFF"];
    let riff_prefix = head.len() < 12 && head.starts_with(b"RIFF");
    riff_prefix
        || SIGNATURES
            .iter()
            .any(|sig| head.len() < sig.len() && sig.starts_with(head))
}

/// The format a declared MIME type, extension or file name names.
pub(crate) fn declared_format(declared: &str) -> Option<Format> {
    let kind = declared_kind(declared)?;
    if kind.contains('/') {
        match kind.as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(Format::Jpeg),
            "image/png" | "image/x-png" | "image/apng" => Some(Format::Png),
            "image/webp" | "image/x-webp" => Some(Format::WebP),
            _ => None,
        }
    } else {
        match kind.as_str() {
            "jpg" | "jpeg" | "jpe" | "jfif" => Some(Format::Jpeg),
            "png" | "apng" => Some(Format::Png),
            "webp" => Some(Format::WebP),
            _ => None,
        }
    }
}

/// The declared type lowercased, without MIME parameters, without a file name's stem; `None`
/// when it claims nothing (empty, `application/octet-stream`).
fn declared_kind(declared: &str) -> Option<String> {
    let mime = declared.split(';').next().unwrap_or_default().trim();
    let lower = mime.to_ascii_lowercase();
    if lower.is_empty()
        || lower == "application/octet-stream"
        || lower == "binary/octet-stream"
        || lower == "*/*"
    {
        return None;
    }
    if lower.contains('/') {
        return Some(lower);
    }
    // An extension (`jpg`, `.jpg`) or a file name (`IMG_0001.JPG`).
    Some(lower.rsplit('.').next().unwrap_or_default().to_owned())
}

/// `photo_type_mismatch` unless the declared type (if it claims one) is the content's format.
pub(crate) fn check_declared(declared: Option<&str>, actual: Format) -> Result<(), PhotoError> {
    let Some(declared) = declared else {
        return Ok(());
    };
    if declared_kind(declared).is_none() || declared_format(declared) == Some(actual) {
        return Ok(());
    }
    Err(PhotoError::TypeMismatch {
        declared: declared.to_owned(),
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_forms() {
        for d in [
            "image/jpeg",
            "IMAGE/JPEG; charset=binary",
            "image/jpg",
            "jpg",
            ".JPEG",
            "IMG_1.JPG",
        ] {
            assert_eq!(declared_format(d), Some(Format::Jpeg), "{d}");
        }
        assert_eq!(declared_format("image/png"), Some(Format::Png));
        assert_eq!(declared_format("webp"), Some(Format::WebP));
        assert_eq!(declared_format("image/heic"), None);
        assert_eq!(declared_format("heic"), None);
        assert!(check_declared(Some("application/octet-stream"), Format::Png).is_ok());
        assert!(check_declared(Some(""), Format::Png).is_ok());
        assert!(check_declared(None, Format::Png).is_ok());
        assert_eq!(
            check_declared(Some("image/heic"), Format::Jpeg).map_err(|e| e.code()),
            Err("photo_type_mismatch")
        );
    }

    #[test]
    fn short_heads() {
        assert_eq!(
            sniff(&[0xFF, 0xD8]).map_err(|e| e.code()),
            Err("photo_truncated")
        );
        assert_eq!(
            sniff(b"\x89PN").map_err(|e| e.code()),
            Err("photo_truncated")
        );
        assert_eq!(
            sniff(b"RIFF\0\0").map_err(|e| e.code()),
            Err("photo_truncated")
        );
        assert_eq!(
            sniff(b"x").map_err(|e| e.code()),
            Err("photo_unsupported_format")
        );
        assert_eq!(sniff(&[]).map_err(|e| e.code()), Err("photo_empty"));
    }
}
