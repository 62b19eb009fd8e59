//! The typed contract between apiary's coordinator and its agents, and the
//! names both sides agree on.
//!
//! The coordinator decides; an agent acts on its own host and reports. What
//! crosses between them is defined here and nowhere else: each operation the
//! coordinator can ask for ([`ops`]) with the reply type it gets back, the
//! host configuration ([`hostconfig`]: raw spec and its one validation),
//! reachability cells and the matrix ([`reach`]), Swarm views and the overlay
//! ([`swarm`]), database service specs and health ([`database`]), a tunnel's
//! allow-list ([`tunnel`]), the addresses agents reach their coordinator at
//! ([`endpoints`]), and node and cluster names ([`names`]: one rule
//! for config files, enrollment, the lab and DigitalOcean). [`exit`] holds the
//! exit codes every program shares.
//!
//! Pure data and logic: no I/O, no async, nothing that needs a Docker engine,
//! so `ctl`, the coordinator and the agent can all depend on it cheaply.
//!
//! ## Limitations
//! - The operations still travel as JSON inside the session's protobuf
//!   `AgentOp` / `OpResult` messages (typed on both ends through
//!   [`ops::Operation`], checked by serde); a proto message per operation
//!   would let other languages speak the contract, and is not done.

pub mod database;
pub mod endpoints;
pub mod exit;
pub mod hostconfig;
pub mod names;
pub mod ops;
pub mod reach;
pub mod swarm;
pub mod tunnel;
pub mod version;
