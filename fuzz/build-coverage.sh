#!/bin/sh
# Builds apiary-fuzz with coverage feedback, on stable Rust: apiary's own
# crates are compiled with LLVM's SanitizerCoverage (inline 8-bit edge
# counters, through the stable `-C passes` and `-C llvm-args` options),
# plus debug assertions and overflow checks, so that an arithmetic
# overflow is a panic the fuzzer reports rather than a silent wrap. The
# dependencies and this crate are not instrumented: the feedback is about
# apiary's code (serde's derived code for apiary's types included).
#
#   fuzz/build-coverage.sh            # → target/fuzz-coverage/release/apiary-fuzz
#
# A separate target directory keeps these artifacts away from the normal
# release build. Seed it with a copy of target/release to save rebuilding
# the dependencies (`cp -a target/release target/fuzz-coverage/`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export RUSTC_WORKSPACE_WRAPPER="$here/sancov-rustc"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../target/fuzz-coverage}"
exec nice -n 10 cargo build --release -p apiary-fuzz "$@"
