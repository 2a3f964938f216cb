//! Decoding Automerge change chunks from untrusted bytes, in bounded memory.
//!
//! Automerge inflates a compressed change chunk without any limit (a 65 KB chunk can claim hundreds
//! of megabytes). We inflate it ourselves with a cap, rebuild the plain chunk, and only then hand it
//! to Automerge, inside `catch_unwind`, so that a panic in the dependency becomes an error for that
//! document instead of a crashed request.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::Change;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED_CHANGE: u8 = 2;

/// Caps on what one document may bring in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Documents per request.
    pub docs_per_request: usize,
    /// Changes per document per request.
    pub changes_per_doc: usize,
    /// Bytes of one change once inflated.
    pub change_bytes: usize,
    /// Operations in one change.
    pub ops_per_change: usize,
    /// Bytes of all changes of one document once inflated (stored plus pushed).
    pub doc_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            docs_per_request: 500,
            changes_per_doc: 20_000,
            change_bytes: 1024 * 1024,
            ops_per_change: 50_000,
            doc_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("not an Automerge change chunk: {0}")]
    Malformed(String),
    #[error("chunk type {0} is not a change; send change chunks")]
    UnsupportedChunk(u8),
    #[error("the change inflates to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the change has {ops} operations, more than {limit}")]
    TooManyOps { ops: usize, limit: usize },
}

impl ChangeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Malformed(_) => "malformed_change",
            ChangeError::UnsupportedChunk(_) => "unsupported_chunk",
            ChangeError::TooLarge { .. } | ChangeError::TooManyOps { .. } => "change_too_large",
        }
    }
}

fn read_uleb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_uleb(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a chunk's framing at the start of `bytes`: magic bytes, checksum, chunk type and body
/// length. Returns the chunk type, where the body starts and the body's claimed length.
fn chunk_header(bytes: &[u8]) -> Result<(u8, usize, u64), ChangeError> {
    let malformed = |why: &str| ChangeError::Malformed(why.to_string());
    if bytes.len() < 10 || bytes[..4] != MAGIC {
        return Err(malformed("missing the Automerge magic bytes"));
    }
    let (length, used) = read_uleb(&bytes[9..]).ok_or_else(|| malformed("bad chunk length"))?;
    Ok((bytes[8], 9 + used, length))
}

/// Splits a run of chunks written one after the other (as Automerge's `save_after` writes a
/// document's changes, and as the server logs the changes one sync brought) into the chunks.
/// Only the framing is read ([`chunk_header`]); each chunk is decoded on its own.
pub fn split_chunks(mut bytes: &[u8]) -> Result<Vec<&[u8]>, ChangeError> {
    let mut chunks = Vec::new();
    while !bytes.is_empty() {
        let (_, body, length) = chunk_header(bytes)?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(body))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                ChangeError::Malformed("the chunk length runs past the bytes (truncated)".into())
            })?;
        chunks.push(&bytes[..end]);
        bytes = &bytes[end..];
    }
    Ok(chunks)
}

/// Whether `doc` has applied the change. Asks Automerge's change graph (a hash lookup), where
/// `get_change_by_hash` rebuilds the whole change from the op set; only a document with queued
/// changes (waiting for their dependencies) takes that slow way.
pub fn holds(doc: &automerge::Automerge, hash: &automerge::ChangeHash) -> bool {
    use automerge::ReadDoc;
    if doc.get_missing_deps(&[]).is_empty() {
        // Nothing queued: a change is missing from its own "missing dependencies" exactly when
        // the document lacks it.
        doc.get_missing_deps(std::slice::from_ref(hash)).is_empty()
    } else {
        doc.get_change_by_hash(hash).is_some()
    }
}

/// Decodes one change chunk (plain or compressed), refusing anything over `limits`.
/// Returns the change and the length of its plain (inflated) chunk.
pub fn decode_change(bytes: &[u8], limits: &Limits) -> Result<(Change, usize), ChangeError> {
    let malformed = |why: &str| ChangeError::Malformed(why.to_string());
    let (chunk_type, body, length) = chunk_header(bytes)?;
    let checksum = &bytes[4..8];
    let data = &bytes[body..];
    if length != data.len() as u64 {
        return Err(malformed(
            "the chunk length does not match its bytes (truncated or padded)",
        ));
    }
    let plain: std::borrow::Cow<'_, [u8]> = match chunk_type {
        CHUNK_CHANGE => {
            if bytes.len() > limits.change_bytes {
                return Err(ChangeError::TooLarge {
                    limit: limits.change_bytes,
                });
            }
            std::borrow::Cow::Borrowed(bytes)
        }
        CHUNK_COMPRESSED_CHANGE => {
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(data)
                .take(limits.change_bytes as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|_| malformed("the compressed change does not inflate"))?;
            if inflated.len() > limits.change_bytes {
                return Err(ChangeError::TooLarge {
                    limit: limits.change_bytes,
                });
            }
            let mut chunk = Vec::with_capacity(inflated.len() + 20);
            chunk.extend_from_slice(&MAGIC);
            chunk.extend_from_slice(checksum);
            chunk.push(CHUNK_CHANGE);
            write_uleb(inflated.len() as u64, &mut chunk);
            chunk.extend_from_slice(&inflated);
            std::borrow::Cow::Owned(chunk)
        }
        other => return Err(ChangeError::UnsupportedChunk(other)),
    };
    let plain_len = plain.len();
    let change = catch_unwind(AssertUnwindSafe(|| Change::try_from(&plain[..])))
        .map_err(|_| malformed("the change could not be decoded"))?
        .map_err(|e| ChangeError::Malformed(e.to_string()))?;
    if change.len() > limits.ops_per_change {
        return Err(ChangeError::TooManyOps {
            ops: change.len(),
            limit: limits.ops_per_change,
        });
    }
    Ok((change, plain_len))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    use super::*;

    fn sample_change(text_len: usize) -> Change {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "text", "巡".repeat(text_len)).expect("put");
        doc.commit();
        doc.get_last_local_change().expect("change")
    }

    #[test]
    fn plain_and_compressed_changes_decode_to_the_same_change() {
        let mut change = sample_change(400);
        let compressed = change.bytes().into_owned();
        let plain = change.raw_bytes().to_vec();
        assert_eq!(
            compressed[8], CHUNK_COMPRESSED_CHANGE,
            "large changes compress"
        );
        let limits = Limits::default();
        let (a, _) = decode_change(&plain, &limits).expect("plain");
        let (b, _) = decode_change(&compressed, &limits).expect("compressed");
        assert_eq!(a.hash(), change.hash());
        assert_eq!(b.hash(), change.hash());
    }

    #[test]
    fn a_decompression_bomb_is_refused_in_bounded_memory() {
        // 64 MiB of zeros deflate to about 64 KB; the chunk claims to be a compressed change.
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            encoder.write_all(&zeros).expect("deflate");
        }
        let deflated = encoder.finish().expect("finish");
        let mut bomb = MAGIC.to_vec();
        bomb.extend_from_slice(&[0, 0, 0, 0, CHUNK_COMPRESSED_CHANGE]);
        write_uleb(deflated.len() as u64, &mut bomb);
        bomb.extend_from_slice(&deflated);
        assert!(bomb.len() < 100 * 1024);
        let err = decode_change(&bomb, &Limits::default()).expect_err("bomb");
        assert_eq!(err.code(), "change_too_large");
    }

    #[test]
    fn truncated_random_and_foreign_bytes_are_malformed() {
        let mut change = sample_change(3);
        let bytes = change.bytes().into_owned();
        let limits = Limits::default();
        for cut in [0, 4, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode_change(&bytes[..cut], &limits).is_err(),
                "cut at {cut}"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(
            decode_change(&flipped, &limits).is_err(),
            "checksum mismatch"
        );
        let mut document = AutoCommit::new();
        document.put(ROOT, "a", 1).expect("put");
        assert_eq!(
            decode_change(&document.save(), &limits)
                .expect_err("a document")
                .code(),
            "unsupported_chunk"
        );
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for _ in 0..2_000 {
            let len = rng.random_range(0..200);
            let mut noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && noise.len() > 12 {
                noise[..4].copy_from_slice(&MAGIC);
                noise[8] = rng.random_range(1..=2);
            }
            let _ = decode_change(&noise, &limits); // must not panic
        }
    }

    #[test]
    fn a_run_of_chunks_splits_into_the_chunks_automerge_wrote() {
        let mut doc = AutoCommit::new();
        let mut written = Vec::new();
        for i in 0..5 {
            // Growing values: the larger chunks are compressed ones (chunk type 2).
            doc.put(ROOT, format!("k{i}"), "巡".repeat(100 * i))
                .expect("put");
            doc.commit();
            written.push(
                doc.get_last_local_change()
                    .expect("change")
                    .bytes()
                    .into_owned(),
            );
        }
        assert_eq!(written[0][8], CHUNK_CHANGE);
        assert_eq!(written[4][8], CHUNK_COMPRESSED_CHANGE);
        let run: Vec<u8> = written.concat();
        let split = split_chunks(&run).expect("split");
        assert_eq!(split, written.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(split_chunks(&[]).expect("empty").is_empty());
        // Automerge's own `save_after` writes the same framing.
        let saved = doc.save_after(&[]);
        assert_eq!(split_chunks(&saved).expect("saved").len(), 5);
        for cut in [1, 9, 10, run.len() - 1] {
            assert_eq!(
                split_chunks(&run[..cut]).expect_err("truncated").code(),
                "malformed_change",
                "cut at {cut}"
            );
        }
        let mut garbage = run.clone();
        garbage.extend_from_slice(b"not a chunk");
        assert!(split_chunks(&garbage).is_err());
    }
}
