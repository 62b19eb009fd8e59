//! apiary's coordinator: owns the cluster's desired state and CA, enrolls
//! agents, serves the agent and admin APIs over mutual TLS, and drives the
//! providers that create hosts. `ctl`, the operator's CLI, lives here too: it
//! shares the admin API's types and the exit codes.
//!
//! Map: [`config`] (cluster.toml → validated spec), [`store`] (redb, durable
//! state), [`registry`] (live sessions), [`server`] (the gRPC services and the
//! TLS listener), [`serve`] (`coordinator serve`: open, listen, run providers),
//! [`cli`] (the command lines of both binaries), [`ctl`] (the CLI's commands),
//! [`admin_conf`] (the operator's credentials),
//! [`artifacts`] (the agent binary over HTTPS for hosts booting from cloud-init).

pub mod admin_conf;
pub mod artifacts;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod database;
pub mod docs;
pub mod error;
pub mod metrics;
pub mod progress;
pub mod provider;
pub mod registry;
pub mod serve;
pub mod server;
pub mod store;
pub mod tunnel;
pub mod tunnel_client;
