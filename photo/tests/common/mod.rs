//! Photos made in the tests: structured scenes, JPEGs with EXIF written by kamadak-exif.
#![allow(dead_code)]

use std::io::Cursor;

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};
use image::{Rgb, RgbImage};

/// A small deterministic generator (xorshift), so that every run sees the same pictures.
pub struct Noise(u32);

impl Noise {
    pub fn new(seed: u32) -> Self {
        Noise(seed.max(1))
    }
    pub fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

/// A picture with structure (a gradient and a few blocks placed by `seed`) and mild noise.
pub fn scene(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut noise = Noise::new(seed);
    let blocks: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..6)
        .map(|_| {
            let x = noise.next() % width;
            let y = noise.next() % height;
            let w = width / 8 + noise.next() % (width / 3);
            let h = height / 8 + noise.next() % (height / 3);
            let c = [noise.next() as u8, noise.next() as u8, noise.next() as u8];
            (x, y, w, h, c)
        })
        .collect();
    RgbImage::from_fn(width, height, |x, y| {
        let mut p = [(x * 200 / width) as u8, (y * 200 / height) as u8, 90];
        for &(bx, by, bw, bh, c) in &blocks {
            if x >= bx && x < bx + bw && y >= by && y < by + bh {
                p = c;
            }
        }
        let n = (noise.next() % 17) as i32 - 8;
        Rgb(p.map(|v| (i32::from(v) + n).clamp(0, 255) as u8))
    })
}

/// White, with a red top-left quadrant: shows where the top-left corner went.
pub fn red_corner(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        if x < width / 2 && y < height / 2 {
            Rgb([220, 20, 20])
        } else {
            Rgb([240, 240, 240])
        }
    })
}

/// A 4:2:0 JPEG, with an EXIF block when given.
pub fn jpeg(image: &RgbImage, quality: u8, exif: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    if let Some(exif) = exif {
        encoder.add_exif_metadata(exif).expect("EXIF fits in APP1");
    }
    encoder
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("test JPEG encodes");
    out
}

/// A progressive 4:2:0 JPEG.
pub fn progressive_jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder.set_progressive(true);
    encoder
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("test JPEG encodes");
    out
}

/// A greyscale JPEG.
pub fn grey_jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let grey = image::DynamicImage::ImageRgb8(image.clone()).to_luma8();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(
            grey.as_raw(),
            grey.width() as u16,
            grey.height() as u16,
            jpeg_encoder::ColorType::Luma,
        )
        .expect("test JPEG encodes");
    out
}

pub fn png(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("test PNG encodes");
    out.into_inner()
}

pub fn webp(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::WebP)
        .expect("test WebP encodes");
    out.into_inner()
}

fn ascii(tag: Tag, s: &str) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Ascii(vec![s.as_bytes().to_vec()]),
    }
}

fn rationals(tag: Tag, parts: [(u32, u32); 3]) -> Field {
    Field {
        tag,
        ifd_num: In::PRIMARY,
        value: Value::Rational(
            parts
                .iter()
                .map(|&(num, denom)| Rational { num, denom })
                .collect(),
        ),
    }
}

/// An EXIF block (TIFF structure) with just an orientation.
pub fn exif_orientation(orientation: u16) -> Vec<u8> {
    let field = Field {
        tag: Tag::Orientation,
        ifd_num: In::PRIMARY,
        value: Value::Short(vec![orientation]),
    };
    let mut writer = Writer::new();
    writer.push_field(&field);
    let mut out = Cursor::new(Vec::new());
    writer.write(&mut out, false).expect("EXIF writes");
    out.into_inner()
}

/// An EXIF block like a phone's: taken at 2026-11-23 14:05:09 +08:00, at 25°56'12.34"S
/// 108°31'12"W on WGS-84, by a HUAWEI P40, orientation 6. Little-endian, as phones write.
pub fn exif_full() -> Vec<u8> {
    let fields = [
        ascii(Tag::Make, "HUAWEI"),
        ascii(Tag::Model, "P40"),
        Field {
            tag: Tag::Orientation,
            ifd_num: In::PRIMARY,
            value: Value::Short(vec![6]),
        },
        ascii(Tag::DateTimeOriginal, "2026:11:23 14:05:09"),
        ascii(Tag::OffsetTimeOriginal, "+08:00"),
        ascii(Tag::GPSLatitudeRef, "S"),
        rationals(Tag::GPSLatitude, [(25, 1), (56, 1), (1234, 100)]),
        ascii(Tag::GPSLongitudeRef, "W"),
        rationals(Tag::GPSLongitude, [(108, 1), (31, 1), (12, 1)]),
        ascii(Tag::GPSMapDatum, "WGS-84"),
    ];
    let mut writer = Writer::new();
    for field in &fields {
        writer.push_field(field);
    }
    let mut out = Cursor::new(Vec::new());
    writer.write(&mut out, true).expect("EXIF writes");
    out.into_inner()
}

pub const EXPECTED_LAT: f64 = -(25.0 + 56.0 / 60.0 + 12.34 / 3600.0);
pub const EXPECTED_LON: f64 = -(108.0 + 31.0 / 60.0 + 12.0 / 3600.0);

/// The 176-byte JPEG of the brief: a real header claiming 65,535 × 65,535 pixels (JPEG's
/// largest; 4.3 gigapixels), a few bytes of scan data, and padding.
pub fn huge_jpeg_header() -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    // Quantisation table 0, all ones.
    j.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    j.extend_from_slice(&[1; 64]);
    // Baseline frame: 8 bits, 65535 × 65535, three components 2×2, 1×1, 1×1.
    j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x03]);
    j.extend_from_slice(&[0x01, 0x22, 0x00, 0x02, 0x11, 0x00, 0x03, 0x11, 0x00]);
    // Scan header for the three components (the standard Huffman tables are assumed).
    j.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3F, 0x00,
    ]);
    j.resize(174, 0x00);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

/// A PNG claiming 100,000 × 100,000 RGB pixels (10 gigapixels): signature, IHDR, a small IDAT and
/// IEND, with correct checksums.
pub fn huge_png_header() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut p, b"IHDR", &ihdr);
    chunk(
        &mut p,
        b"IDAT",
        &[0x78, 0x9C, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    );
    let padding = 176 - p.len() - 12;
    chunk(&mut p, b"tEXt", &vec![b'a'; padding - 12]);
    chunk(&mut p, b"IEND", &[]);
    p
}
