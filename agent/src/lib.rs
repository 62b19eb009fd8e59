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
//! Besides the session it keeps the host configured ([`hostconfig`], through
//! `host_runner`, across sessions), answers the coordinator's operations
//! ([`ops`]: reachability responders and probes in [`reach`], Swarm and the
//! overlay through the local engine in [`swarm`], database services in
//! [`database`]) and carries tunnels ([`tunnel`]).
//!
//! It keeps the coordinator endpoints the coordinator tells it
//! ([`endpoints`]) and, when no session can be had, dials the next one, so
//! a coordinator restored onto another address is found.
//!
//! Limitations: Docker is reached only on its local unix socket (by design);
//! tunnel targets are limited to the allow-list; kernel features are read at
//! session start.

pub mod cli;
pub mod config;
pub mod database;
mod docker_exec;
pub mod endpoints;
pub mod facts;
mod host_runner;
pub mod hostconfig;
pub mod ops;
pub mod reach;
mod session;
pub mod swarm;
pub mod tunnel;
pub mod upgrade;

pub use session::{AgentError, RunEnd, run};
