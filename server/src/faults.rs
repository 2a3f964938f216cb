//! Named crash points for the fault suite (issue 21; docs/RELIABILITY.md).
//!
//! Built with the `fault-injection` feature, [`point`] looks at `GRIDPATROL_FAULT`: a value
//! naming the point (`photo.complete.after_original`) aborts the process there, as a SIGKILL
//! would; `NAME=error` makes the point fail the request instead (a full disk, a lost store).
//! Without the feature (every release build) a point compiles to nothing.

use crate::error::ApiResult;

/// Every crash point, so that the fault suite can check it tries them all.
pub const POINTS: &[&str] = &[
    "auth.login.before_commit",
    "people.code.before_commit",
    "auth.enroll.before_commit",
    "sync.admitted",
    "sync.premerged",
    "sync.write.before_append",
    "sync.write.before_commit",
    "projection.before_rows",
    "projection.after_prints",
    "sync.committed",
    "sync.before_response",
    "photo.create.before_commit",
    "photo.create.after_commit",
    "photo.head.answer",
    "photo.piece.before_commit",
    "photo.piece.after_commit",
    "photo.complete.start",
    "photo.complete.before_original",
    "photo.complete.after_original",
    "photo.complete.before_commit",
    "photo.complete.after_commit",
    "compliance.judge.after_claim",
    "compliance.judge.before_write",
    "compliance.judge.after_write",
    "photo.derive.after_claim",
    "photo.derive.before_done",
    "snapshot.compact.before_write",
    "snapshot.compact.after_write",
    "signoff.before_commit",
    "signoff.after_commit",
];

#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) -> ApiResult<()> {
    debug_assert!(POINTS.contains(&name), "unlisted crash point {name}");
    let Ok(wanted) = std::env::var("GRIDPATROL_FAULT") else {
        return Ok(());
    };
    for wanted in wanted.split(',') {
        match wanted.split_once('=') {
            Some((at, "error")) if at == name => {
                return Err(crate::error::ApiError::internal(format!(
                    "injected fault at {name}"
                )));
            }
            None if wanted == name => {
                eprintln!("gridpatrol: injected crash at {name}");
                std::process::abort();
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) -> ApiResult<()> {
    Ok(())
}
