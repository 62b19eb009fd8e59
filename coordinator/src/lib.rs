//! apiary's coordinator: owns the cluster's desired state and CA, enrolls
//! agents, serves the agent and admin APIs over mutual TLS, drives the
//! providers that create hosts, and runs the cluster round.
//!
//! Map (imports flow down this list, never up; `scripts/check-layers` checks
//! it):
//! - [`serve`] — `coordinator serve` / `teardown`: open, listen, run providers and the round;
//! - [`backup`] — `coordinator backup` / `restore`: the state directory as one
//!   file (format pure in [`backup::format`]), online through the admin API;
//! - [`metrics`] — Prometheus, over the parts below;
//! - [`provider`] — hosts from the lab or DigitalOcean;
//! - [`api`] — the gRPC services (the only place errors become `tonic::Status`,
//!   [`api::require_role`]), sessions' handler, `ctl status`, the tunnel relay;
//! - [`scale`] — `ctl scale hosts=N`: the count recorded, the provider's
//!   [`scale::HostProvider`] makes or drains hosts; [`reboot`] — `ctl hosts
//!   reboot`, one host at a time through the same provider;
//! - [`core`] — [`core::Coordinator`], the composition root, and the glue
//!   between its parts;
//! - [`reconcile`] — the cluster round: observe, decide ([`reconcile::plan`], pure), act;
//! - [`database`] — all database control: specs and flavours, membership, converge, scale;
//! - [`context`] — what the round and the database need ([`context::ClusterContext`]);
//! - [`pki`] — CA, join token, enroll/renew/revoke, admin.conf, database peer certificates;
//! - [`sessions`] — live sessions and the one request/reply waiter for agent calls;
//! - [`state`] — the in-memory cluster view: checks, database, host configuration, images;
//! - [`events`] — [`events::EventKind`] and the event channel;
//! - [`untrusted`] — what agents report, held to its shape before anything keeps or shows it;
//! - [`store`] (redb, durable state), [`config`] (cluster.toml → validated
//!   spec), [`progress`], [`artifacts`] (the agent binary over HTTPS for
//!   hosts booting from cloud-init), [`cli`], [`docs`], [`error`], [`time`].

pub mod api;
pub mod artifacts;
pub mod backup;
pub mod cli;
pub mod config;
pub mod context;
pub mod core;
pub mod database;
pub mod docs;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod metrics;
pub mod pki;
pub mod progress;
pub mod provider;
pub mod reboot;
pub mod reconcile;
pub mod scale;
pub mod serve;
pub mod sessions;
pub mod state;
pub mod store;
pub mod time;
pub mod untrusted;
pub mod up;
pub mod upgrade;
