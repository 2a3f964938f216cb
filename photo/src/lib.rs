//! Photo checks shared by the server and the SDK.
//!
//! - [`sniff`] tells the format from an upload's first bytes (so a HEIC upload is refused before
//!   megabytes arrive);
//! - [`inspect`] validates a whole photo: size, format, declared type, dimensions from the header
//!   before any pixel is decoded, a decode under memory limits that reads all of the compressed
//!   data (so truncation and corruption are caught), and the EXIF fields GridPatrol uses;
//! - [`derive`] makes a thumbnail or preview (JPEG, EXIF orientation applied), decoding JPEGs at
//!   1/2, 1/4 or 1/8 scale where that suffices;
//! - [`perceptual_hash`] and [`hamming`] detect a photo used again;
//! - [`derive_all`] makes the thumbnail, the preview and the perceptual hash from one decode;
//! - [`downscale_keeping_exif`] is for the phone: a smaller JPEG that keeps the original EXIF.
//!
//! Every failure is a [`PhotoError`] with a stable [`code`](PhotoError::code). The crate's
//! README lists the codes and what the app or the inspector should do about each.

mod decode;
mod exif_read;
mod libjpeg;
mod output;
mod sniff;

use std::fmt;

pub use output::{
    Derivatives, derive, derive_all, downscale_keeping_exif, hamming, perceptual_hash,
};
pub use sniff::sniff;

#[doc(hidden)]
pub use output::{DecodePath, derive_via};

/// Largest accepted upload, by default (20 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024;
/// Most pixels accepted, by default (50 megapixels: phones take 12 to 50).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
/// Most memory one decode may plan to allocate, by default (512 MiB: what a 50-megapixel image
/// needs in the layouts accepted, with room to spare; the same figure as `image`'s own default).
pub const DEFAULT_MAX_ALLOC: u64 = 512 * 1024 * 1024;
/// Long edge of a thumbnail, in pixels.
pub const THUMBNAIL_EDGE: u32 = 320;
/// Long edge of a preview, in pixels.
pub const PREVIEW_EDGE: u32 = 1280;
/// JPEG quality of [`derive`]'s output.
pub const DERIVED_QUALITY: u8 = 85;

/// What a photo may cost before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in the file.
    pub max_bytes: u64,
    /// Most pixels (width × height), checked from the header before decoding.
    pub max_pixels: u64,
    /// Most bytes a decode may allocate: estimated from the header before decoding, and given to
    /// the decoder as its own allocation limit.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_alloc: DEFAULT_MAX_ALLOC,
        }
    }
}

/// The accepted formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    WebP,
}

impl Format {
    /// The MIME type, e.g. `image/jpeg`.
    pub fn mime(&self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
        }
    }

    /// The usual file extension, without the dot: `jpg`, `png`, `webp`.
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::WebP => "webp",
        }
    }

    /// The format a declared type names: a MIME type (`image/jpeg`, `image/jpg`, `image/png`,
    /// `image/webp`; parameters and case ignored), an extension (`jpg`, `.JPEG`, `png`, `webp`)
    /// or a file name (`IMG_0001.JPG`). `None` for anything else.
    pub fn from_declared(declared: &str) -> Option<Format> {
        sniff::declared_format(declared)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::WebP => "WebP",
        })
    }
}

/// The EXIF fields GridPatrol uses. Every field is `None` when absent or unreadable: a photo
/// without EXIF (or with damaged EXIF) is still a photo.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exif {
    /// DateTimeOriginal as `YYYY-MM-DDTHH:MM:SS`: the camera's local time, no zone.
    pub taken_at: Option<String>,
    /// OffsetTimeOriginal as `+08:00` when present and well formed.
    pub offset: Option<String>,
    /// Longitude in decimal degrees, west negative.
    pub lon: Option<f64>,
    /// Latitude in decimal degrees, south negative.
    pub lat: Option<f64>,
    /// GPSMapDatum as written, e.g. `WGS-84`.
    pub gps_datum: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    /// EXIF orientation, 1..=8 (1: as stored; 6: turn 90° clockwise to view).
    pub orientation: Option<u16>,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub format: Format,
    /// Width as stored (before the EXIF orientation is applied).
    pub width: u32,
    /// Height as stored (before the EXIF orientation is applied).
    pub height: u32,
    pub exif: Exif,
}

impl Inspected {
    /// Width and height as the photo is viewed: swapped when the EXIF orientation turns it by 90°.
    pub fn display_size(&self) -> (u32, u32) {
        if swaps_axes(self.exif.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// Orientations 5 to 8 turn the stored image by 90° or 270°.
pub(crate) fn swaps_axes(orientation: Option<u16>) -> bool {
    matches!(orientation, Some(5..=8))
}

/// Why a photo was refused. [`PhotoError::code`] is stable; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhotoError {
    /// `photo_empty`
    #[error("the photo is empty (0 bytes)")]
    Empty,
    /// `photo_too_large`
    #[error("the photo is {size} bytes; at most {limit} are accepted")]
    TooLarge { size: u64, limit: u64 },
    /// `photo_too_many_pixels`
    #[error("the photo is {width}×{height} pixels; at most {limit} pixels are accepted")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// `photo_too_much_memory`
    #[error("decoding the photo would need more than the {limit} bytes of memory allowed")]
    TooMuchMemory { limit: u64 },
    /// `photo_unsupported_format`
    #[error(
        "{found} is not accepted: convert the photo to JPEG on the phone (JPEG, PNG and WebP are accepted)"
    )]
    UnsupportedFormat {
        /// What was found, for people: `HEIC/HEIF (image/heif)`, `an unknown format`, …
        found: String,
    },
    /// `photo_truncated`
    #[error("the photo is cut short: its data ends before the image does")]
    Truncated,
    /// `photo_corrupt`
    #[error("the photo's data is damaged: {reason}")]
    Corrupt { reason: String },
    /// `photo_type_mismatch`
    #[error("the photo was declared as {declared:?} but its content is {actual}")]
    TypeMismatch { declared: String, actual: Format },
    /// `photo_encode_failed`: making the output JPEG failed (e.g. a side over 65,535 pixels).
    #[error("the derived JPEG could not be written: {reason}")]
    Encode { reason: String },
}

impl PhotoError {
    /// A stable snake_case code for APIs and the app.
    pub fn code(&self) -> &'static str {
        match self {
            PhotoError::Empty => "photo_empty",
            PhotoError::TooLarge { .. } => "photo_too_large",
            PhotoError::TooManyPixels { .. } => "photo_too_many_pixels",
            PhotoError::TooMuchMemory { .. } => "photo_too_much_memory",
            PhotoError::UnsupportedFormat { .. } => "photo_unsupported_format",
            PhotoError::Truncated => "photo_truncated",
            PhotoError::Corrupt { .. } => "photo_corrupt",
            PhotoError::TypeMismatch { .. } => "photo_type_mismatch",
            PhotoError::Encode { .. } => "photo_encode_failed",
        }
    }

    /// True when the fault is in the photo (the app should not retry the same bytes); false for
    /// `photo_encode_failed`, which is the server's.
    pub fn is_photo_fault(&self) -> bool {
        !matches!(self, PhotoError::Encode { .. })
    }
}

/// Validates a whole photo and reads its EXIF.
///
/// In order: not empty and at most `limits.max_bytes` long; a JPEG, PNG or WebP by its content;
/// the same format as `declared_type` when one is given (a MIME type such as `image/jpeg`, an
/// extension such as `jpg`, or a file name; `application/octet-stream` and an empty string claim
/// nothing); dimensions from the header within `limits.max_pixels`; the decode's planned memory
/// within `limits.max_alloc`; then a decode of all the compressed data, which catches truncation
/// and corruption. JPEGs are decoded at 1/8 scale for this: every coefficient is still read and
/// checked, only the inverse DCT is reduced. EXIF is read last; damaged EXIF gives empty fields,
/// not an error.
pub fn inspect(
    bytes: &[u8],
    declared_type: Option<&str>,
    limits: &Limits,
) -> Result<Inspected, PhotoError> {
    let format = decode::check_container(bytes, limits)?;
    sniff::check_declared(declared_type, format)?;
    let opened = decode::Opened::open(bytes, format, limits)?;
    let (width, height) = (opened.width, opened.height);
    let exif = exif_read::parse(opened.exif_raw.as_deref());
    opened.decode(Some((1, 1)), limits)?;
    Ok(Inspected {
        format,
        width,
        height,
        exif,
    })
}
