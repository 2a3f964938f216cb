//! Thumbnails and previews, perceptual hashes, and the phone's downscale.

use std::sync::LazyLock;

use image::DynamicImage;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image_hasher::{HashAlg, Hasher, HasherConfig};

use crate::decode::{Opened, check_container};
use crate::{DERIVED_QUALITY, Limits, PhotoError, exif_read};

/// How [`derive_via`] decodes a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// At 1/2, 1/4 or 1/8 scale when that still covers the output (what [`derive`] does).
    Reduced,
    /// Always at full size (for comparisons in tests and benchmarks).
    Full,
}

/// A JPEG thumbnail or preview: at most `long_edge` pixels on its longer side (never enlarged),
/// turned upright by the EXIF orientation, 4:2:0 at quality [`DERIVED_QUALITY`], without
/// metadata. A JPEG is decoded at the smallest of 1/8, 1/4, 1/2 and full scale that still covers
/// the output, then resized (triangle filter) to the exact size. The photo gets the same checks
/// as in [`inspect`](crate::inspect) except the declared type (size, format, pixels, memory,
/// truncation, corruption). A `long_edge` of 0 is taken as 1.
pub fn derive(bytes: &[u8], long_edge: u32, limits: &Limits) -> Result<Vec<u8>, PhotoError> {
    derive_via(bytes, long_edge, limits, DecodePath::Reduced)
}

/// [`derive`] with the decoding path chosen; for tests and benchmarks.
pub fn derive_via(
    bytes: &[u8],
    long_edge: u32,
    limits: &Limits,
    path: DecodePath,
) -> Result<Vec<u8>, PhotoError> {
    let format = check_container(bytes, limits)?;
    let opened = Opened::open(bytes, format, limits)?;
    let orientation = exif_read::parse(opened.exif_raw.as_deref()).orientation;
    let (width, height) = fit(opened.width, opened.height, long_edge);
    let min_size = match path {
        DecodePath::Reduced => Some((width, height)),
        DecodePath::Full => None,
    };
    let image = opened.decode(min_size, limits)?;
    let image = orient(resize(image, width, height), orientation);
    encode_jpeg(&image, DERIVED_QUALITY, None, None)
}

/// For the phone: the photo re-encoded as a JPEG of at most `long_edge` pixels on its longer
/// side, at `quality` (1 to 100), 4:2:0, carrying the original EXIF block byte for byte (time,
/// GPS, make, model and the orientation tag unchanged: the pixels are not turned, so the
/// orientation tag still describes them) and the ICC profile. EXIF fields that describe the
/// original file's pixel dimensions (PixelXDimension, PixelYDimension) keep the old values; XMP
/// is dropped. A photo that already fits is returned unchanged (after its header is checked). A
/// PNG or WebP larger than `long_edge` becomes a JPEG, its EXIF chunk carried over the same way.
pub fn downscale_keeping_exif(
    bytes: &[u8],
    long_edge: u32,
    quality: u8,
    limits: &Limits,
) -> Result<Vec<u8>, PhotoError> {
    let format = check_container(bytes, limits)?;
    let opened = Opened::open(bytes, format, limits)?;
    if opened.width.max(opened.height) <= long_edge {
        return Ok(bytes.to_vec());
    }
    let (width, height) = fit(opened.width, opened.height, long_edge);
    let exif = opened.exif_raw.clone();
    let icc = opened.icc.clone();
    let image = opened.decode(Some((width, height)), limits)?;
    let image = resize(image, width, height);
    encode_jpeg(
        &image,
        quality.clamp(1, 100),
        exif.as_deref(),
        icc.as_deref(),
    )
}

/// Long edge the hash is computed from (the hasher shrinks it further to 16×16).
const HASH_SOURCE_EDGE: u32 = 256;

/// pHash: grey, 16×16, DCT, the 8×8 lowest frequencies compared with their mean.
static HASHER: LazyLock<Hasher<[u8; 8]>> = LazyLock::new(|| {
    HasherConfig::with_bytes_type::<[u8; 8]>()
        .hash_size(8, 8)
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .to_hasher()
});

/// A 64-bit perceptual hash (DCT pHash, by `image_hasher`) of the photo as it is viewed: the EXIF
/// orientation is applied first, so a photo whose pixels were turned and whose orientation tag
/// was reset hashes like the original. Re-encoding and resizing move it by a few bits; compare
/// with [`hamming`]. JPEGs are decoded at reduced scale (1/8 for phone photos).
pub fn perceptual_hash(bytes: &[u8], limits: &Limits) -> Result<u64, PhotoError> {
    let format = check_container(bytes, limits)?;
    let opened = Opened::open(bytes, format, limits)?;
    let orientation = exif_read::parse(opened.exif_raw.as_deref()).orientation;
    let min_size = fit(opened.width, opened.height, HASH_SOURCE_EDGE);
    let image = orient(opened.decode(Some(min_size), limits)?, orientation);
    Ok(u64::from_be_bytes(HASHER.hash_image(&image).into_inner()))
}

/// The number of bits in which two hashes differ (0 to 64).
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// The size that fits in `long_edge` on the longer side, keeping the aspect ratio (rounded,
/// at least 1 pixel); the size itself when it already fits.
pub(crate) fn fit(width: u32, height: u32, long_edge: u32) -> (u32, u32) {
    let long = width.max(height);
    let edge = long_edge.max(1);
    if long <= edge {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled = (u64::from(side) * u64::from(edge) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled.max(1)).unwrap_or(edge)
    };
    (scale(width), scale(height))
}

fn resize(image: DynamicImage, width: u32, height: u32) -> DynamicImage {
    if (image.width(), image.height()) == (width, height) {
        image
    } else {
        image.resize_exact(width, height, FilterType::Triangle)
    }
}

fn orient(mut image: DynamicImage, orientation: Option<u16>) -> DynamicImage {
    if let Some(o) = orientation
        .and_then(|o| u8::try_from(o).ok())
        .and_then(Orientation::from_exif)
    {
        image.apply_orientation(o);
    }
    image
}

fn encode_jpeg(
    image: &DynamicImage,
    quality: u8,
    exif: Option<&[u8]>,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>, PhotoError> {
    let failed = |e: jpeg_encoder::EncodingError| PhotoError::Encode {
        reason: e.to_string(),
    };
    let side = |v: u32| {
        u16::try_from(v).map_err(|_| PhotoError::Encode {
            reason: format!(
                "{}×{} pixels is too large for JPEG",
                image.width(),
                image.height()
            ),
        })
    };
    let (width, height) = (side(image.width())?, side(image.height())?);
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    if let Some(exif) = exif {
        encoder.add_exif_metadata(exif).map_err(failed)?;
    }
    if let Some(icc) = icc {
        encoder.add_icc_profile(icc).map_err(failed)?;
    }
    match image {
        DynamicImage::ImageLuma8(grey) => {
            encoder.encode(grey.as_raw(), width, height, jpeg_encoder::ColorType::Luma)
        }
        DynamicImage::ImageRgb8(rgb) => {
            encoder.encode(rgb.as_raw(), width, height, jpeg_encoder::ColorType::Rgb)
        }
        other => encoder.encode(
            other.to_rgb8().as_raw(),
            width,
            height,
            jpeg_encoder::ColorType::Rgb,
        ),
    }
    .map_err(failed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_long_edge_exact() {
        assert_eq!(fit(4000, 3000, 320), (320, 240));
        assert_eq!(fit(3000, 4000, 320), (240, 320));
        assert_eq!(fit(4000, 3000, 5000), (4000, 3000));
        assert_eq!(fit(10_000, 1, 320), (320, 1));
        assert_eq!(fit(4000, 3000, 0), (1, 1));
        assert_eq!(fit(4032, 3024, 1280), (1280, 960));
    }

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, 0), 0);
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }
}
