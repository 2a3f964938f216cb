//! Simulated inspectors for demos, load tests and benchmarks.

pub mod api;
pub mod camera;
pub mod corpus;
pub mod track;
