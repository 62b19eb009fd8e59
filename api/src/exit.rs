//! Exit codes shared by `coordinator`, `ctl` and `agent` (documented in the
//! README; a test compares the README, every program's `--help` and these).

pub const OK: i32 = 0;
pub const FAILURE: i32 = 1;
/// A check failed (`ctl checks`).
pub const CHECK_FAILED: i32 = 2;
/// Usage or configuration error (sysexits EX_USAGE).
pub const USAGE: i32 = 64;
/// The coordinator cannot be reached, or nothing in the cluster that could
/// serve the request answers: no Swarm manager's engine for `ctl docker`, a
/// tunnel's target down (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// The state directory is in use by another coordinator (EX_TEMPFAIL).
pub const IN_USE: i32 = 75;
/// Refused: credentials revoked, expired, from another CA, wrong role (EX_NOPERM).
pub const REFUSED: i32 = 77;
