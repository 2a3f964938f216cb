//! Compliance: whether each patrol counts toward the duty its jurisdiction sets, and why
//! (`verdict`), on positions brought to WGS-84 first (`coords`). The weekly record, sign-off and
//! exports build on these.

pub mod api;
pub mod coords;
pub mod export;
pub mod judging;
pub mod record;
pub mod replay;
pub mod signoff;
pub mod verdict;
