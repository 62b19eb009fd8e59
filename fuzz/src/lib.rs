//! apiary's fuzzing, on stable Rust.
//!
//! One target per parser that takes outside input ([`targets::ALL`]):
//! each is a `fn(&[u8])` that drives the project's own parsing code and
//! may return errors freely, but must not panic, hang or break the
//! property it states. [`engine::fuzz`] runs a target from its seed corpus
//! (`corpus/<target>/`, plus `regressions/<target>/`) with a seeded
//! mutational fuzzer ([`mutate::Mutator`]); built with
//! `build-coverage.sh` (SanitizerCoverage through stable codegen options)
//! it keeps inputs that reach new code ([`coverage`]), and otherwise
//! mutates the seeds blind. Every execution runs on the calling thread
//! with its panics caught; a watchdog flags one that runs too long or
//! grows memory without bound.
//!
//! `tests/corpus.rs` runs every seed and regression input, plus a fixed
//! number of deterministic mutations, as part of `cargo test`.
//!
//! Limitations: no comparison feedback (CMP tracing) and no structure
//! awareness beyond per-target dictionaries and input layouts; a hang
//! cannot be interrupted, so it ends the run (and is reported) instead of
//! being skipped.

pub mod coverage;
pub mod engine;
pub mod mutate;
pub mod seeds;
pub mod targets;

pub use engine::{Failure, Options, Report, execute, fuzz};
pub use targets::{ALL, Target, find};
