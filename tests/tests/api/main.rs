//! End-to-end API tests: a real server over real HTTP, each test on SQLite and on PostgreSQL.

mod auth;
mod compliance;
mod console;
mod crash;
mod grids;
mod import;
mod migrations;
mod ops;
mod people;
pub mod photos;
mod sdk;
mod sdk_photos;
mod sign_in;
mod sync;
