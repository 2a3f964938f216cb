//! Simulated inspectors for demos, load tests and benchmarks.

pub mod track;
