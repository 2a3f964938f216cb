//! GridPatrol's sync protocol, sans IO: the Automerge document schemas, the wire messages, and
//! both halves of the algorithm (the phone's and the server's) as plain data in, plain data out.
//! No runtime, no network, no database: `README.md` is the specification.
//!
//! - [`schema`]: the patrol and problem documents, written and read without raw Automerge;
//! - [`wire`]: `SyncRequest` / `SyncResponse` and their CBOR encoding;
//! - [`changes`]: decoding untrusted change chunks in bounded memory;
//! - [`client`]: what the phone sends and what a response means;
//! - [`server`]: request checks, merging, and per-change authorisation.

pub mod changes;
pub mod client;
pub mod schema;
pub mod server;
pub mod wire;

pub use changes::Limits;
pub use wire::{CONTENT_TYPE, PROTOCOL_VERSION};
