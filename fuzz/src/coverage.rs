//! Coverage feedback from LLVM's SanitizerCoverage, on stable Rust.
//!
//! `fuzz/build-coverage.sh` builds apiary's crates with
//! `-Cpasses=sancov-module` and inline 8-bit counters (stable codegen
//! options: cargo-fuzz's instrumentation without its nightly-only flags).
//! Each instrumented edge then increments a byte in one section, and a
//! constructor hands the section's bounds to
//! `__sanitizer_cov_8bit_counters_init`, which the `apiary-fuzz` binary
//! defines and forwards to [`register`]. In any other build nothing calls
//! it, [`CoverageMap::new`] returns `None` and the fuzzer runs blind.
//!
//! The counters are read and cleared after every execution, as libFuzzer
//! does; an input is kept when it reaches an edge, or an edge a number of
//! times (AFL's buckets), never seen before.
//!
//! This is the crate's only `unsafe`: the counters are memory LLVM owns,
//! known by two addresses. Instrumented code on other threads (a harness's
//! HTTP server, a store writer) may bump a counter while it is read, as
//! under libFuzzer: a count is then attributed to the wrong input, which
//! costs a useless corpus entry at worst.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

static START: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);

/// Called (through the binary's `__sanitizer_cov_8bit_counters_init`)
/// before `main`, once per instrumented module; with a single linked
/// section every call names the same bounds, so the widest is kept.
pub fn register(start: *mut u8, stop: *mut u8) {
    let (start, stop) = (start as usize, stop as usize);
    if stop <= start {
        return;
    }
    let known = START.load(Ordering::SeqCst);
    if known == 0 || stop - start > LEN.load(Ordering::SeqCst) {
        START.store(start, Ordering::SeqCst);
        LEN.store(stop - start, Ordering::SeqCst);
    }
}

/// AFL's hit-count buckets: one bit per order of magnitude.
fn bucket(count: u8) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        _ => 128,
    }
}

/// The counters and every bucket seen so far.
pub struct CoverageMap {
    counters: &'static mut [u8],
    seen: Vec<u8>,
    edges: usize,
}

impl CoverageMap {
    /// The map, when this binary is instrumented. Make one per process:
    /// it owns the counters.
    pub fn new() -> Option<Self> {
        let (start, len) = (START.load(Ordering::SeqCst), LEN.load(Ordering::SeqCst));
        if start == 0 || len == 0 {
            return None;
        }
        // SAFETY: LLVM's constructor passed the bounds of the counters
        // section, which lives as long as the process; `new` is called
        // once (the fuzz loop's), so this is the only slice over it.
        let counters = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
        counters.fill(0);
        Some(CoverageMap {
            counters,
            seen: vec![0; len],
            edges: 0,
        })
    }

    /// Counters in the binary.
    pub fn size(&self) -> usize {
        self.counters.len()
    }

    /// Edges ever reached.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// Forgets counts left by anything before the execution to measure.
    pub fn clear(&mut self) {
        self.counters.fill(0);
    }

    /// Folds the last execution's counts in (and clears them); how many
    /// new buckets it reached.
    pub fn collect(&mut self) -> usize {
        let mut new = 0;
        for (block, chunk) in self.counters.chunks_mut(64).enumerate() {
            // Most blocks are untouched: an OR over the block (which the
            // compiler vectorises) skips them.
            if chunk.iter().fold(0u8, |a, b| a | b) == 0 {
                continue;
            }
            let base = block * 64;
            for (i, c) in chunk.iter_mut().enumerate() {
                if *c == 0 {
                    continue;
                }
                let b = bucket(*c);
                *c = 0;
                let seen = &mut self.seen[base + i];
                if b & !*seen != 0 {
                    if *seen == 0 {
                        self.edges += 1;
                    }
                    *seen |= b;
                    new += 1;
                }
            }
        }
        new
    }
}
