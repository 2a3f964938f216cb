//! Thumbnails and previews, perceptual hashes, and the phone's downscale.

use std::sync::LazyLock;

use fast_image_resize as fir;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, Pixel};
use image_hasher::{HashAlg, Hasher, HasherConfig};

use crate::decode::{Opened, check_container, jpeg_decode_eighths, jpeg_scaled};
use crate::{DERIVED_QUALITY, Format, Limits, PREVIEW_EDGE, PhotoError, THUMBNAIL_EDGE, exif_read};

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

/// What the server keeps of a photo, from one decode: see [`derive_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivatives {
    /// The thumbnail ([`THUMBNAIL_EDGE`]): the size and look of
    /// `derive(bytes, THUMBNAIL_EDGE, limits)`.
    pub thumbnail: Vec<u8>,
    /// The preview ([`PREVIEW_EDGE`]): byte for byte `derive(bytes, PREVIEW_EDGE, limits)`.
    pub preview: Vec<u8>,
    /// The perceptual hash: `perceptual_hash(bytes, limits)`, or a bit or two from it.
    pub phash: u64,
}

/// The thumbnail, the preview and the perceptual hash of a photo from one decode, for the
/// server's worker (instead of [`derive`] twice and [`perceptual_hash`], three decodes).
///
/// The photo gets the checks of [`derive`] and is decoded once, as
/// `derive(bytes, PREVIEW_EDGE, limits)` decodes it (a 12 MP JPEG at 1/2 scale), so it is refused
/// exactly when that call refuses it, with the same error; in particular `max_alloc` must allow
/// the preview's decode, even where the thumbnail's 1/8-scale decode alone would fit. The EXIF
/// orientation is read once and applied to each small result.
///
/// - `preview` is byte for byte what `derive(bytes, PREVIEW_EDGE, limits)` returns;
/// - `thumbnail` has the size `derive(bytes, THUMBNAIL_EDGE, limits)` gives. [`derive`] decodes a
///   JPEG at the smallest IDCT scale that covers the thumbnail (1/8 for a phone photo); here
///   blocks of the preview's decode are averaged down to that scale (an IDCT at 1/8 keeps each
///   8 × 8 block's mean), then resized with the same triangle filter. The pixels differ from
///   [`derive`]'s by rounding: 0.3 to 2.3 levels in 255 on average (the tests allow 3). PNG and
///   WebP, and JPEGs small enough to be decoded at the same scale for both, give the same bytes;
/// - `phash` is computed the same way from the scale [`perceptual_hash`] decodes at. It is
///   usually the same hash; where one of the 64 DCT coefficients sits right at the mean the
///   rounding can flip its bit (the tests allow 2 bits; see the crate's README for what was
///   seen). PNG, WebP and small JPEGs give the same hash.
pub fn derive_all(bytes: &[u8], limits: &Limits) -> Result<Derivatives, PhotoError> {
    let format = check_container(bytes, limits)?;
    let opened = Opened::open(bytes, format, limits)?;
    let orientation = exif_read::parse(opened.exif_raw.as_deref()).orientation;
    let size = (opened.width, opened.height);
    let (preview_w, preview_h) = fit(size.0, size.1, PREVIEW_EDGE);
    let (thumb_w, thumb_h) = fit(size.0, size.1, THUMBNAIL_EDGE);
    let hash_min = fit(size.0, size.1, HASH_SOURCE_EDGE);
    let decoded = opened.decode(Some((preview_w, preview_h)), limits)?;

    // The scales the separate calls would have decoded at, made from this decode (None: the
    // decode itself is at that scale).
    let thumb_scale = decode_scale(format, size, (thumb_w, thumb_h));
    let hash_scale = decode_scale(format, size, hash_min);
    let for_thumbnail = as_if_decoded_at(&decoded, format, size, thumb_scale);
    let for_hash = if hash_scale == thumb_scale {
        None
    } else {
        as_if_decoded_at(&decoded, format, size, hash_scale)
    };

    let thumb_source = for_thumbnail.as_ref().unwrap_or(&decoded);
    let thumbnail = orient(resized(thumb_source, thumb_w, thumb_h), orientation);
    let thumbnail = encode_jpeg(&thumbnail, DERIVED_QUALITY, None, None)?;
    let preview = orient(resized(&decoded, preview_w, preview_h), orientation);
    let preview = encode_jpeg(&preview, DERIVED_QUALITY, None, None)?;
    let hash_source = match (for_hash, for_thumbnail) {
        (Some(image), _) => image,
        (None, Some(image)) if hash_scale == thumb_scale => image,
        _ => decoded,
    };
    let phash = hash(&orient(hash_source, orientation));
    Ok(Derivatives {
        thumbnail,
        preview,
        phash,
    })
}

/// The IDCT scale in eighths at which a photo of `size` is decoded for at least `min` pixels
/// (8 for PNG and WebP, always decoded whole).
fn decode_scale(format: Format, (width, height): (u32, u32), min: (u32, u32)) -> u32 {
    match format {
        Format::Jpeg => jpeg_decode_eighths(width, height, Some(min)),
        Format::Png | Format::WebP => 8,
    }
}

/// The picture a JPEG decode at `eighths`/8 scale would have given, made from `image` (the same
/// JPEG decoded at a larger scale) by averaging blocks of 2, 4 or 8 pixels a side: a JPEG's
/// inverse DCT at a smaller scale keeps the mean of each block, up to rounding. `None` when
/// `image` is already at that scale, or is not a reduced JPEG decode.
fn as_if_decoded_at(
    image: &DynamicImage,
    format: Format,
    (width, height): (u32, u32),
    eighths: u32,
) -> Option<DynamicImage> {
    if format != Format::Jpeg {
        return None;
    }
    let want = (jpeg_scaled(width, eighths), jpeg_scaled(height, eighths));
    let have = (image.width(), image.height());
    let factor = [2, 4, 8]
        .into_iter()
        .find(|&f| (have.0.div_ceil(f), have.1.div_ceil(f)) == want)?;
    // libjpeg's reduced IDCTs (1/8 keeps only each block's DC term) round to nearest.
    match image {
        DynamicImage::ImageLuma8(grey) => Some(DynamicImage::ImageLuma8(block_means(grey, factor))),
        DynamicImage::ImageRgb8(rgb) => Some(DynamicImage::ImageRgb8(block_means(rgb, factor))),
        _ => None,
    }
}

/// Each `factor` × `factor` block of `image` replaced by its mean, rounded to nearest; the
/// blocks of the last column and row are cut by the image's edge.
fn block_means<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    factor: u32,
) -> ImageBuffer<P, Vec<u8>> {
    let channels = usize::from(P::CHANNEL_COUNT);
    let (width, height) = image.dimensions();
    let (out_w, out_h) = (width.div_ceil(factor), height.div_ceil(factor));
    let row_len = width as usize * channels;
    let block_len = factor as usize * channels;
    let mut sums = vec![0u32; out_w as usize * channels];
    let mut out = Vec::with_capacity(out_w as usize * out_h as usize * channels);
    for band in image.as_raw().chunks(row_len * factor as usize) {
        sums.fill(0);
        for row in band.chunks_exact(row_len) {
            for (block, sum) in row.chunks(block_len).zip(sums.chunks_exact_mut(channels)) {
                for pixel in block.chunks_exact(channels) {
                    for (s, &v) in sum.iter_mut().zip(pixel) {
                        *s += u32::from(v);
                    }
                }
            }
        }
        let rows = (band.len() / row_len) as u32;
        for (x, sum) in sums.chunks_exact(channels).enumerate() {
            let cols = (width - x as u32 * factor).min(factor);
            let n = rows * cols;
            out.extend(sum.iter().map(|&s| ((s + n / 2) / n) as u8));
        }
    }
    ImageBuffer::from_raw(out_w, out_h, out).expect("one mean per block")
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

/// pHash: grey, 16×16, DCT, the 8×8 lowest frequencies compared with their median (the mean
/// would be dragged up by the DC term and leave nearly every bit 0).
static HASHER: LazyLock<Hasher<[u8; 8]>> = LazyLock::new(|| {
    HasherConfig::with_bytes_type::<[u8; 8]>()
        .hash_size(8, 8)
        .hash_alg(HashAlg::Median)
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
    Ok(hash(&image))
}

fn hash(image: &DynamicImage) -> u64 {
    u64::from_be_bytes(HASHER.hash_image(image).into_inner())
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
        resized(&image, width, height)
    }
}

/// [`resize`] without taking the image (copied when it already has the size). A triangle
/// (bilinear) filter widened to the scale, by `fast_image_resize`'s SIMD convolution: 2000 × 1500
/// to 1280 × 960 takes 5 ms there against 80 ms with `image`'s `resize_exact` (see the README).
/// A pixel layout it does not take (32-bit float) goes through `image`'s own triangle filter.
fn resized(image: &DynamicImage, width: u32, height: u32) -> DynamicImage {
    if (image.width(), image.height()) == (width, height) {
        return image.clone();
    }
    let mut out = DynamicImage::new(width, height, image.color());
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear));
    match fir::Resizer::new().resize(image, &mut out, &options) {
        Ok(()) => out,
        Err(_) => image.resize_exact(width, height, FilterType::Triangle),
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
    fn block_means_average_and_cut_at_the_edges() {
        // 5 × 3 grey, blocks of 2: full blocks, a column of 1, a row of 1, a corner of 1.
        let grey = image::GrayImage::from_raw(
            5,
            3,
            vec![
                0, 2, 10, 10, 7, //
                4, 6, 20, 21, 9, //
                100, 50, 1, 2, 255,
            ],
        )
        .expect("15 pixels");
        let means = block_means(&grey, 2);
        assert_eq!(means.dimensions(), (3, 2));
        assert_eq!(means.as_raw(), &[3, 15, 8, 75, 2, 255]);
        // RGB: channels are averaged apart.
        let rgb = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8, y as u8, 200]));
        assert_eq!(block_means(&rgb, 4).as_raw(), &[2, 2, 200]);
    }

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, 0), 0);
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0001), 2);
    }
}
