//! JPEG pixels by libjpeg-turbo (the `mozjpeg` fork, built from source by `mozjpeg-sys` with the
//! C compiler alone), strict about damage and truncation.
//!
//! Why libjpeg-turbo: at 1/8 scale, which every thumbnail, validation decode and perceptual hash
//! of a phone photo uses, the time goes into Huffman decoding, and libjpeg-turbo's is about a
//! third faster than `jpeg-decoder`'s (docs/BENCHMARKS.md). It is the JPEG decoder of Chromium,
//! Firefox and Android and is fuzzed continuously by OSS-Fuzz. It is built here without its
//! NASM SIMD code, so a fresh machine needs only a C compiler; at 1/8 scale the SIMD code
//! (colour conversion, upsampling, the full-size IDCT) has almost nothing to do.
//!
//! libjpeg carries on after most damage: it *warns* ("premature end of data segment", "bad
//! Huffman code", a file that ends early) and fills in grey. Evidence should not be silently
//! patched, and libjpeg-turbo's own advice against resource exhaustion by crafted files is to
//! treat warnings as fatal (its answer to CVE-2019-13960), so this module's error manager turns
//! every warning into an error, like its fatal errors. Both leave libjpeg by unwinding
//! (`mozjpeg` builds libjpeg with `-fexceptions` and destroys the decompressor when the unwind
//! passes) and are caught in [`decode`]. The manager is built from safe code: its handlers never
//! look inside libjpeg's structures, so the reason they give is the kind of failure, not
//! libjpeg's message. Whether the data ran out is seen by the reader libjpeg pulls bytes from,
//! which tells truncation apart from damage.
//!
//! The header (dimensions, components, coding process, EXIF, ICC) is read before this by
//! `jpeg-decoder`, in safe Rust, and checked against the limits; by the time libjpeg runs, the
//! format is known to be one it decodes and the output size one the limits allow.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg::Decompress;
use mozjpeg::decompress::DecompressBuilder;
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, msg_parm_union};

use crate::PhotoError;

/// Decodes `bytes` (a JPEG whose header has been checked) at `eighths`/8 scale, as 8-bit grey
/// (`grey`) or RGB, and returns the pixels row by row with the output's width and height.
pub(crate) fn decode(
    bytes: &[u8],
    eighths: u32,
    grey: bool,
) -> Result<(Vec<u8>, u32, u32), PhotoError> {
    let ran_out = Cell::new(false);
    let numerator = u8::try_from(eighths.clamp(1, 8)).unwrap_or(8);
    let outcome = catch_unwind(AssertUnwindSafe(|| -> io::Result<(Vec<u8>, u32, u32)> {
        let reader = Watched {
            rest: bytes,
            ran_out: &ran_out,
        };
        let mut decompress: Decompress<Watched<'_>> = DecompressBuilder::new()
            .with_err(strict_error_mgr())
            .from_reader(reader)?;
        decompress.scale(numerator);
        let mut started = if grey {
            decompress.grayscale()?
        } else {
            decompress.rgb()?
        };
        let (width, height) = (started.width(), started.height());
        let pixels = started.read_scanlines::<u8>()?;
        // Reads on to the end-of-image marker: a file cut after its last scan is still cut.
        started.finish()?;
        let side = |v: usize| u32::try_from(v).map_err(|_| io::ErrorKind::InvalidData);
        Ok((pixels, side(width)?, side(height)?))
    }));
    match outcome {
        _ if ran_out.get() => Err(PhotoError::Truncated),
        Ok(Ok(decoded)) => Ok(decoded),
        Ok(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => Err(PhotoError::Corrupt {
            reason: "the decoded picture would not fit in memory".to_owned(),
        }),
        Ok(Err(e)) => Err(PhotoError::Corrupt {
            reason: format!("the JPEG decoder stopped: {e}"),
        }),
        Err(payload) => Err(PhotoError::Corrupt {
            reason: match payload.downcast_ref::<Stop>() {
                Some(Stop::Warning) => "the JPEG's compressed data is damaged".to_owned(),
                Some(Stop::Fatal) => "the JPEG decoder could not read this data".to_owned(),
                None => "the JPEG decoder gave up on this data".to_owned(),
            },
        }),
    }
}

/// Why libjpeg was left by unwinding.
enum Stop {
    /// A warning: damaged data libjpeg would have patched over.
    Warning,
    /// A fatal error.
    Fatal,
}

/// An error manager whose every warning and error unwinds out of libjpeg. Trace messages
/// (level 1 and up) are ignored.
fn strict_error_mgr() -> jpeg_error_mgr {
    jpeg_error_mgr {
        error_exit: Some(error_exit),
        emit_message: Some(emit_message),
        output_message: Some(ignore),
        format_message: None,
        reset_error_mgr: Some(ignore),
        msg_code: 0,
        msg_parm: msg_parm_union::default(),
        trace_level: 0,
        num_warnings: 0,
        jpeg_message_table: std::ptr::null(),
        last_jpeg_message: 0,
        addon_message_table: std::ptr::null(),
        first_addon_message: 0,
        last_addon_message: 0,
    }
}

extern "C-unwind" fn error_exit(_cinfo: &mut jpeg_common_struct) {
    // resume_unwind, not panic!: no panic hook, no message on stderr for a bad upload.
    resume_unwind(Box::new(Stop::Fatal))
}

extern "C-unwind" fn emit_message(_cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        resume_unwind(Box::new(Stop::Warning))
    }
}

extern "C-unwind" fn ignore(_cinfo: &mut jpeg_common_struct) {}

/// The bytes of the file, as libjpeg pulls them; notes when it asks for more than there are.
struct Watched<'a> {
    rest: &'a [u8],
    ran_out: &'a Cell<bool>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Watched<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.rest.is_empty() {
            self.ran_out.set(true);
        }
        Ok(self.rest)
    }

    fn consume(&mut self, amount: usize) {
        self.rest = self.rest.get(amount..).unwrap_or_default();
    }
}
