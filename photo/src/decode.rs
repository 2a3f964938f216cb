//! Headers first, then decoding under limits.
//!
//! A JPEG's header is read by `jpeg-decoder` (safe Rust) and checked against the limits; its
//! pixels are decoded by libjpeg-turbo at 1/2, 1/4 or 1/8 scale where that suffices, strict about
//! damage and truncation (see [`crate::libjpeg`]). PNG and WebP go through `image`, with its
//! allocation limit.

use std::io::{self, Cursor};
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::error::LimitErrorKind;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};
use jpeg_decoder::{CodingProcess, PixelFormat};

use crate::{Format, Limits, PhotoError};

/// Empty, too large, or not an accepted format.
pub(crate) fn check_container(bytes: &[u8], limits: &Limits) -> Result<Format, PhotoError> {
    if bytes.is_empty() {
        return Err(PhotoError::Empty);
    }
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(PhotoError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    crate::sniff(bytes)
}

/// A photo whose header has been read and checked against the pixel limit; nothing decoded yet.
pub(crate) struct Opened<'a> {
    pub width: u32,
    pub height: u32,
    /// The EXIF block (TIFF structure, without the `Exif\0\0` prefix).
    pub exif_raw: Option<Vec<u8>>,
    /// The ICC colour profile, if any.
    pub icc: Option<Vec<u8>>,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Jpeg {
        bytes: &'a [u8],
        progressive: bool,
        components: u64,
    },
    Other(Box<dyn ImageDecoder + 'a>),
}

impl<'a> Opened<'a> {
    /// Reads the header only: dimensions, EXIF and ICC. Refuses too many pixels here.
    pub fn open(bytes: &'a [u8], format: Format, limits: &Limits) -> Result<Self, PhotoError> {
        match format {
            Format::Jpeg => Self::open_jpeg(bytes, limits),
            Format::Png => Self::open_other(bytes, ImageFormat::Png, limits),
            Format::WebP if riff_cut_short(bytes) => Err(PhotoError::Truncated),
            Format::WebP => Self::open_other(bytes, ImageFormat::WebP, limits),
        }
    }

    fn open_jpeg(bytes: &'a [u8], limits: &Limits) -> Result<Self, PhotoError> {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        guarded(|| decoder.read_info().map_err(jpeg_error))?;
        let info = decoder.info().ok_or_else(|| PhotoError::Corrupt {
            reason: "no JPEG frame header".to_owned(),
        })?;
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        check_pixels(width, height, limits)?;
        let components = match info.pixel_format {
            PixelFormat::L8 => 1,
            PixelFormat::RGB24 => 3,
            PixelFormat::L16 => return Err(unsupported("a 16-bit greyscale JPEG")),
            PixelFormat::CMYK32 => return Err(unsupported("a CMYK JPEG")),
        };
        let progressive = info.coding_process == CodingProcess::DctProgressive;
        if info.coding_process == CodingProcess::Lossless {
            return Err(unsupported("a lossless JPEG"));
        }
        // Each scan of a progressive JPEG is a pass over the whole image: a small file of a few
        // thousand scans (each a few bytes) would cost seconds. A sequential JPEG has a scan per
        // component at most, which libjpeg enforces.
        if progressive {
            let scans = count_scans(bytes);
            if scans > MAX_PROGRESSIVE_SCANS {
                return Err(unsupported(&format!(
                    "a progressive JPEG of {scans} scans (at most {MAX_PROGRESSIVE_SCANS} are decoded)"
                )));
            }
        }
        Ok(Opened {
            width,
            height,
            exif_raw: decoder.exif_data().map(<[u8]>::to_vec),
            icc: decoder.icc_profile(),
            inner: Inner::Jpeg {
                bytes,
                progressive,
                components,
            },
        })
    }

    fn open_other(
        bytes: &'a [u8],
        format: ImageFormat,
        limits: &Limits,
    ) -> Result<Self, PhotoError> {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        reader.limits(image_limits(limits));
        let mut decoder: Box<dyn ImageDecoder + 'a> = guarded(|| {
            reader
                .into_decoder()
                .map(|d| Box::new(d) as Box<dyn ImageDecoder + 'a>)
                .map_err(|e| image_error(e, limits))
        })?;
        let (width, height) = decoder.dimensions();
        check_pixels(width, height, limits)?;
        // Metadata that cannot be read is no reason to refuse the pixels.
        let exif_raw = decoder
            .exif_metadata()
            .ok()
            .flatten()
            .map(strip_exif_prefix);
        let icc = decoder.icc_profile().ok().flatten();
        Ok(Opened {
            width,
            height,
            exif_raw,
            icc,
            inner: Inner::Other(decoder),
        })
    }

    /// Decodes the pixels. With `min_size`, a JPEG is decoded at the smallest of 1/8, 1/4, 1/2
    /// and full scale that is at least that large on both sides (every coefficient is still read,
    /// so damage and truncation are caught all the same); other formats are always decoded whole.
    /// The planned allocation is checked against `limits.max_alloc` first.
    pub fn decode(
        self,
        min_size: Option<(u32, u32)>,
        limits: &Limits,
    ) -> Result<DynamicImage, PhotoError> {
        let (width, height) = (self.width, self.height);
        match self.inner {
            Inner::Jpeg {
                bytes,
                progressive,
                components,
            } => {
                let eighths = jpeg_decode_eighths(width, height, min_size);
                let (out_w, out_h) = (jpeg_scaled(width, eighths), jpeg_scaled(height, eighths));
                // Progressive JPEGs keep every coefficient of the full-size image (2 bytes each;
                // counted here as if no component were subsampled); then the output, and as much
                // again for libjpeg's working rows (a generous bound: it keeps a few rows).
                let coefficients = if progressive {
                    u64::from(width.next_multiple_of(16))
                        * u64::from(height.next_multiple_of(16))
                        * components
                        * 2
                } else {
                    0
                };
                let output = u64::from(out_w) * u64::from(out_h) * components;
                check_alloc(coefficients + 2 * output, limits)?;
                let (pixels, w, h) = crate::libjpeg::decode(bytes, eighths, components == 1)?;
                if (w, h) != (out_w, out_h) {
                    return Err(PhotoError::Corrupt {
                        reason: format!(
                            "the JPEG decoder made {w}×{h} pixels where {out_w}×{out_h} were expected"
                        ),
                    });
                }
                let image = if components == 1 {
                    image::GrayImage::from_raw(out_w, out_h, pixels).map(DynamicImage::ImageLuma8)
                } else {
                    image::RgbImage::from_raw(out_w, out_h, pixels).map(DynamicImage::ImageRgb8)
                };
                image.ok_or_else(|| PhotoError::Corrupt {
                    reason: "the JPEG decoder returned fewer pixels than the header promised"
                        .to_owned(),
                })
            }
            Inner::Other(decoder) => {
                // The decoder's own buffer, and an RGB copy when it is in another layout.
                let converted = match decoder.color_type() {
                    image::ColorType::Rgb8 | image::ColorType::L8 => 0,
                    _ => u64::from(width) * u64::from(height) * 3,
                };
                check_alloc(decoder.total_bytes().saturating_add(converted), limits)?;
                guarded(|| DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, limits)))
            }
        }
    }
}

/// Most scans decoded in a progressive JPEG. Encoders write about 10 (libjpeg's default script
/// has 10); a file of thousands of tiny scans is the denial of service Cure53's audit of
/// libjpeg-turbo described, and NVIDIA's nvImageCodec refuses more than 256 scans for it: the
/// same figure here.
pub(crate) const MAX_PROGRESSIVE_SCANS: usize = 256;

/// The number of scans (start-of-scan markers) of a JPEG, found by walking its marker segments
/// and skipping entropy-coded data, up to the end-of-image marker: an EXIF thumbnail inside an
/// APP1 segment, or data after the image (a motion photo's video), is not counted. Damage makes
/// the count approximate; the decoder refuses such files anyway.
fn count_scans(bytes: &[u8]) -> usize {
    let mut at = 2; // after the start-of-image marker
    let mut scans = 0;
    while at + 1 < bytes.len() {
        if bytes[at] != 0xFF {
            at += 1;
            continue;
        }
        match bytes[at + 1] {
            0xFF => at += 1,               // fill byte
            0xD9 => break,                 // end of image
            0x01 | 0xD0..=0xD7 => at += 2, // markers without a length
            marker => {
                let Some(len) = bytes.get(at + 2..at + 4) else {
                    break;
                };
                at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                if marker == 0xDA {
                    scans += 1;
                    // Entropy-coded data runs to the next marker: 0xFF followed by anything
                    // but a stuffed zero or a restart marker.
                    while at + 1 < bytes.len()
                        && !(bytes[at] == 0xFF
                            && bytes[at + 1] != 0
                            && !(0xD0..=0xD7).contains(&bytes[at + 1]))
                    {
                        at += 1;
                    }
                }
            }
        }
    }
    scans
}

/// A side decoded at `eighths`/8 of its length, rounded up as libjpeg does.
pub(crate) fn jpeg_scaled(len: u32, eighths: u32) -> u32 {
    (len * eighths).div_ceil(8)
}

/// The IDCT scale, in eighths (1, 2, 4 or 8), at which [`Opened::decode`] decodes a JPEG of
/// `width` × `height`: the smallest whose output is at least `min_size` on both sides, or 8
/// (full size) when none is or `min_size` is `None`.
pub(crate) fn jpeg_decode_eighths(width: u32, height: u32, min_size: Option<(u32, u32)>) -> u32 {
    let Some((min_w, min_h)) = min_size else {
        return 8;
    };
    [1, 2, 4]
        .into_iter()
        .find(|&e| jpeg_scaled(width, e) >= min_w && jpeg_scaled(height, e) >= min_h)
        .unwrap_or(8)
}

fn check_pixels(width: u32, height: u32, limits: &Limits) -> Result<(), PhotoError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PhotoError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(PhotoError::Corrupt {
            reason: format!("the header says {width}×{height} pixels"),
        });
    }
    Ok(())
}

fn check_alloc(needed: u64, limits: &Limits) -> Result<(), PhotoError> {
    if needed > limits.max_alloc {
        return Err(PhotoError::TooMuchMemory {
            limit: limits.max_alloc,
        });
    }
    Ok(())
}

fn image_limits(limits: &Limits) -> image::Limits {
    // Dimensions are checked against the pixel limit by this crate, so that the refusal can name
    // them; the decoder enforces the allocation limit itself.
    let mut l = image::Limits::default();
    l.max_image_width = None;
    l.max_image_height = None;
    l.max_alloc = Some(limits.max_alloc);
    l
}

/// A WebP file is a RIFF chunk whose header gives its length: fewer bytes than that means the
/// file was cut (the decoders report a cut lossless stream as a corrupt one).
fn riff_cut_short(bytes: &[u8]) -> bool {
    let declared = bytes
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    declared.is_some_and(|len| (bytes.len() as u64) < u64::from(len) + 8)
}

/// Some WebP writers keep the JPEG-style `Exif\0\0` prefix in the EXIF chunk.
fn strip_exif_prefix(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.starts_with(b"Exif\0\0") {
        raw.drain(..6);
    }
    raw
}

fn unsupported(found: &str) -> PhotoError {
    PhotoError::UnsupportedFormat {
        found: found.to_owned(),
    }
}

/// A decoder that panics on hostile input is a bug in it; the upload still gets an answer.
fn guarded<T>(f: impl FnOnce() -> Result<T, PhotoError>) -> Result<T, PhotoError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(PhotoError::Corrupt {
            reason: "the decoder gave up on this data".to_owned(),
        })
    })
}

fn jpeg_error(e: jpeg_decoder::Error) -> PhotoError {
    match e {
        jpeg_decoder::Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            PhotoError::Truncated
        }
        jpeg_decoder::Error::Unsupported(feature) => PhotoError::UnsupportedFormat {
            found: format!("a JPEG using {feature:?}"),
        },
        other => PhotoError::Corrupt {
            reason: other.to_string(),
        },
    }
}

fn image_error(e: ImageError, limits: &Limits) -> PhotoError {
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::InsufficientMemory => PhotoError::TooMuchMemory {
                limit: limits.max_alloc,
            },
            _ => PhotoError::Corrupt {
                reason: l.to_string(),
            },
        },
        ImageError::Unsupported(u) => PhotoError::UnsupportedFormat {
            found: u.to_string(),
        },
        ImageError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            PhotoError::Truncated
        }
        other if ends_early(&other) => PhotoError::Truncated,
        other => PhotoError::Corrupt {
            reason: other.to_string(),
        },
    }
}

/// An unexpected end of data anywhere in the error's chain of causes.
fn ends_early(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::UnexpectedEof
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_jpeg_scale_that_covers_the_output() {
        let scaled = |w, h, min| {
            let e = jpeg_decode_eighths(w, h, min);
            (jpeg_scaled(w, e), jpeg_scaled(h, e))
        };
        // A 12 MP phone photo: 1/8 for a thumbnail, 1/2 for a preview, full size beyond.
        assert_eq!(scaled(4000, 3000, Some((320, 240))), (500, 375));
        assert_eq!(scaled(4000, 3000, Some((501, 376))), (1000, 750));
        assert_eq!(scaled(4000, 3000, Some((1280, 960))), (2000, 1500));
        assert_eq!(scaled(4000, 3000, Some((2001, 1501))), (4000, 3000));
        assert_eq!(scaled(4000, 3000, None), (4000, 3000));
        // Both sides must be covered, and scaled sizes round up as libjpeg's do.
        assert_eq!(scaled(4000, 3000, Some((100, 376))), (1000, 750));
        assert_eq!(scaled(1001, 17, Some((126, 3))), (126, 3));
    }

    #[test]
    fn the_decode_scale_is_the_one_libjpeg_takes() {
        // Decode real JPEGs and compare the output size with the scale predicted.
        for (width, height) in [(400, 300), (1, 200), (200, 1), (37, 3), (1283, 17)] {
            let pixels = vec![128u8; width as usize * height as usize * 3];
            let mut jpeg = Vec::new();
            jpeg_encoder::Encoder::new(&mut jpeg, 90)
                .encode(
                    &pixels,
                    width as u16,
                    height as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .expect("encodes");
            let limits = Limits::default();
            for min_size in [
                None,
                Some((1, 1)),
                Some((1, height)),
                Some((width / 3, height / 3)),
                Some((width / 2, height / 2)),
                Some((width, height)),
            ] {
                let opened = Opened::open(&jpeg, Format::Jpeg, &limits).expect("opens");
                let image = opened.decode(min_size, &limits).expect("decodes");
                let eighths = jpeg_decode_eighths(width, height, min_size);
                assert_eq!(
                    (image.width(), image.height()),
                    (jpeg_scaled(width, eighths), jpeg_scaled(height, eighths)),
                    "{width}×{height} for {min_size:?}"
                );
            }
        }
    }

    #[test]
    fn scans_are_counted_up_to_the_end_of_the_image() {
        let pixels = vec![100u8; 64 * 48 * 3];
        let mut progressive = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut progressive, 90);
        encoder.set_progressive(true);
        encoder
            .encode(&pixels, 64, 48, jpeg_encoder::ColorType::Rgb)
            .expect("encodes");
        let sos_markers = progressive
            .windows(2)
            .filter(|w| w == &[0xFF, 0xDA])
            .count();
        assert!(sos_markers > 3, "{sos_markers}");
        assert_eq!(count_scans(&progressive), sos_markers);
        // Start-of-scan bytes after the end of the image are not scans.
        let mut trailer = progressive.clone();
        trailer.extend_from_slice(&[0xFF, 0xDA, 0, 4, 1, 2, 0xFF, 0xDA]);
        assert_eq!(count_scans(&trailer), sos_markers);
    }

    #[test]
    fn a_cut_riff_header_is_truncation() {
        let mut webp = b"RIFF\x10\0\0\0WEBPVP8L".to_vec();
        assert!(riff_cut_short(&webp));
        webp.resize(24, 0);
        assert!(!riff_cut_short(&webp));
    }
}
