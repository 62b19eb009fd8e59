//! apiary's agent: runs on every cluster host (under systemd, or started by the
//! lab provider inside a namespace host).
//!
//! Life of an agent: it enrolls once with a join token (verifying the
//! coordinator's CA against the token's digest before sending anything), keeps
//! its key and certificate 0600 in its state directory, then holds one mutual
//! TLS session to the coordinator: hello with facts, heartbeats, commands.
//! It renews its certificate at two thirds of its life without restarting, and
//! reconnects with capped, jittered backoff. Refusals that retrying cannot fix
//! (revoked, expired, wrong CA, bad token) end the process with a message that
//! says which.
//!
//! Limitations (tracked in the issues): host configuration, reachability
//! probes, Docker/Swarm commands and tunnels are not here yet.

pub mod config;
pub mod database;
pub mod facts;
pub mod hostconfig;
pub mod reach;
pub mod swarm;
mod host_runner;
pub mod ops;
mod session;
pub mod tunnel;

pub use session::{AgentError, run};
