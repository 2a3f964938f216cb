//! The GridPatrol client SDK: what an inspector's phone app embeds.
//!
//! Patrols, their GPS tracks, notes and problems are Automerge documents kept on the phone
//! ([`store`]); the app records through a typed API ([`Client`]) that works with no network at
//! all, and [`Client::sync`] sends what the server has not acknowledged, in one round trip, when
//! there is a network. Nothing recorded is dropped before the server's receipt.

mod client;
pub mod clock;
pub mod error;
pub mod ffi;
mod photos;
pub mod store;
mod sync;
pub mod tls;

uniffi::setup_scaffolding!();

pub use client::{
    Client, Datum, FixInput, GridInfo, KeyPoint, Method, NewProblemInput, Observer, Options,
    PatrolSummary, ProblemDisposition, ReviewInfo, SyncState,
};
pub use error::SdkError;
pub use photos::{PhotoOptions, PhotoStatus};
pub use sync::{Backoff, SyncReport};
pub use tls::Trust;
