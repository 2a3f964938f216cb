//! Finding a photo reused from an earlier patrol: perceptual hashes within a few bits of each
//! other.
//!
//! Comparing a hash with every earlier photo of the jurisdiction is cheap in memory (a Hamming
//! distance is one instruction; 21,000 photos a week take microseconds) but not through the
//! database (every row read, joined to its patrols and grids, for every photo judged). So each
//! server process keeps the hashes in a [`HashIndex`]: filled once, then topped up with the hashes
//! made since it last looked (`photos.hashed_at`). Only the few photos within the distance are
//! then read from the database, to keep those of the same jurisdiction.
//!
//! The index is topped up only when asked about a photo it does not hold yet: every hash
//! committed before that photo's was committed by then too, and read with it or before it.
//! Processes sharing a PostgreSQL database hash photos at the same time, so one may commit a hash
//! stamped a little before another's that the index already read: each top-up reads the last ten
//! seconds again, and the index is read whole every ten minutes (against clocks that differ
//! between hosts).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::RwLock;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::db::{DbConnection, now};
use crate::error::ApiResult;
use crate::schema::{grids, patrol_photos, photos};

/// Perceptual hashes this many bits apart or fewer are the same picture (re-encoded, resized,
/// turned with a tag); different pictures are 16 or more apart (`photo/README.md`).
pub const NEAR_DUPLICATE_BITS: u32 = 8;

/// Hashes stamped this close before the newest one seen are read again at each look.
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// The index is read whole again this often.
const RELOAD: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// An earlier photo that looks the same as another.
pub struct NearDuplicate {
    pub sha256: String,
    pub distance: u32,
    pub received_at: NaiveDateTime,
    /// The patrols that reference it, with their grids' paths.
    pub patrols: Vec<(String, String)>,
}

/// The perceptual hashes of every hashed photo, in memory.
#[derive(Default)]
pub struct HashIndex {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The hashes alone, scanned first (a popcount each), and beside them, at the same index,
    /// when each photo was received and its SHA-256.
    hashes: Vec<u64>,
    photos: Vec<(NaiveDateTime, String)>,
    known: HashSet<String>,
    /// The newest `hashed_at` read.
    newest: Option<NaiveDateTime>,
    loaded_at: Option<NaiveDateTime>,
}

impl HashIndex {
    /// Reads the hashes made since the last look (all of them at first, and every [`RELOAD`]),
    /// unless the index already holds `sha256`'s.
    fn top_up(&self, conn: &mut DbConnection, sha256: &str) -> ApiResult<()> {
        let (since, reload) = {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let reload = inner.loaded_at.is_none_or(|at| now() - at > RELOAD);
            if !reload && inner.known.contains(sha256) {
                return Ok(());
            }
            (inner.newest.map(|n| n - OVERLAP), reload)
        };
        let mut query = photos::table
            .filter(photos::phash.is_not_null())
            .filter(photos::hashed_at.is_not_null())
            .select((
                photos::phash.assume_not_null(),
                photos::received_at,
                photos::sha256,
                photos::hashed_at.assume_not_null(),
            ))
            .into_boxed();
        if let (Some(since), false) = (since, reload) {
            query = query.filter(photos::hashed_at.ge(since));
        }
        let rows: Vec<(i64, NaiveDateTime, String, NaiveDateTime)> = query.load(conn)?;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if reload {
            *inner = Inner {
                loaded_at: Some(now()),
                ..Inner::default()
            };
        }
        for (hash, received_at, sha, hashed_at) in rows {
            inner.newest = Some(inner.newest.map_or(hashed_at, |n| n.max(hashed_at)));
            if inner.known.insert(sha.clone()) {
                inner.hashes.push(hash as u64);
                inner.photos.push((received_at, sha));
            }
        }
        Ok(())
    }

    /// Photos received before `before`, other than `sha256`, whose hash is within
    /// [`NEAR_DUPLICATE_BITS`] of `hash`: (SHA-256, distance).
    fn near(&self, hash: u64, before: NaiveDateTime, sha256: &str) -> Vec<(String, u32)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .hashes
            .iter()
            .enumerate()
            .filter_map(|(i, other)| {
                let distance = gridpatrol_photo::hamming(hash, *other);
                (distance <= NEAR_DUPLICATE_BITS).then_some((i, distance))
            })
            .filter_map(|(i, distance)| {
                let (received_at, sha) = &inner.photos[i];
                (*received_at < before && sha != sha256).then(|| (sha.clone(), distance))
            })
            .collect()
    }
}

/// Earlier photos of the same jurisdiction (the top-level grids of the patrols that reference
/// `sha256`) whose perceptual hash is within [`NEAR_DUPLICATE_BITS`] of this one's: a photo
/// reused from an earlier patrol. Empty until the photo's hash is made and a patrol references
/// it. Nearest first, then oldest first.
pub fn near_duplicates(
    conn: &mut DbConnection,
    index: &HashIndex,
    sha256: &str,
) -> ApiResult<Vec<NearDuplicate>> {
    let Some((Some(phash), received_at)) = photos::table
        .find(sha256)
        .select((photos::phash, photos::received_at))
        .first::<(Option<i64>, NaiveDateTime)>(conn)
        .optional()?
    else {
        return Ok(Vec::new());
    };
    index.top_up(conn, sha256)?;
    let near: BTreeMap<String, u32> = index
        .near(phash as u64, received_at, sha256)
        .into_iter()
        .collect();
    if near.is_empty() {
        return Ok(Vec::new());
    }
    let paths: Vec<String> = patrol_photos::table
        .inner_join(grids::table.on(grids::id.eq(patrol_photos::grid_id)))
        .filter(patrol_photos::sha256.eq(sha256))
        .select(grids::path)
        .load(conn)?;
    let roots: BTreeSet<i64> = paths
        .iter()
        .filter_map(|path| crate::grids::path_ids(path).first().copied())
        .collect();
    let candidates: Vec<(String, NaiveDateTime, String, String)> = photos::table
        .inner_join(patrol_photos::table.on(patrol_photos::sha256.eq(photos::sha256)))
        .inner_join(grids::table.on(grids::id.eq(patrol_photos::grid_id)))
        .filter(photos::sha256.eq_any(near.keys()))
        .select((
            photos::sha256,
            photos::received_at,
            patrol_photos::patrol_id,
            grids::path,
        ))
        .load(conn)?;
    let mut found: BTreeMap<String, NearDuplicate> = BTreeMap::new();
    for (other, at, patrol, path) in candidates {
        let same_jurisdiction = crate::grids::path_ids(&path)
            .first()
            .is_some_and(|root| roots.contains(root));
        if !same_jurisdiction {
            continue;
        }
        let distance = near[&other];
        found
            .entry(other.clone())
            .or_insert_with(|| NearDuplicate {
                sha256: other,
                distance,
                received_at: at,
                patrols: Vec::new(),
            })
            .patrols
            .push((patrol, path));
    }
    let mut found: Vec<NearDuplicate> = found.into_values().collect();
    found.sort_by(|a, b| {
        a.distance
            .cmp(&b.distance)
            .then(a.received_at.cmp(&b.received_at))
    });
    Ok(found)
}
