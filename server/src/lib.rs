//! GridPatrol server: an offline-first backend for eco-environment grid supervision
//! (生态环境监管网格化管理).
//!
//! Start reading at [`app`] (routes, state, launch), then [`grids`] (the grid tree and the spatial
//! index), [`auth`] (sign-in, enrollment, tokens) and [`people`] (roles, devices, staffing).
//! [`db`] is the one database code path over SQLite and PostgreSQL.

pub mod app;
pub mod audit;
pub mod auth;
pub mod body_timeout;
pub mod compliance;
pub mod config;
pub mod console;
pub mod db;
pub mod demo;
pub mod error;
pub mod faults;
pub mod grids;
pub mod metrics;
pub mod people;
pub mod photos;
pub mod policy;
pub mod schema;
pub mod sync;
pub mod wire;

pub use app::{AppState, build_state, launch, openapi};
pub use config::{Config, ServeConfig};

/// The OpenAPI document as YAML, as written to the repository's `openapi.yaml`.
pub fn openapi_yaml() -> String {
    openapi()
        .to_yaml()
        .unwrap_or_else(|e| panic!("OpenAPI document does not serialize: {e}"))
}
