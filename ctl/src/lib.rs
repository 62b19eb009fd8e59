//! `ctl`, the operator's CLI: every command is one call (or one stream) on
//! the coordinator's admin API, over mutual TLS with the credentials of an
//! `admin.conf`. As a library so that the binary, its completions and man
//! pages, and the tests call the same code.
//!
//! Model:
//! - credentials: [`apiary_certs::AdminConf`] (endpoint, cluster CA, admin
//!   certificate and key; written 0600 by `coordinator serve` into its state
//!   directory), found by `--config`, `APIARY_CONFIG` or
//!   `~/.apiary/admin.conf`. The coordinator is verified by the cluster CA
//!   under one fixed server name (whatever address is dialled), and decides
//!   what `ctl` may do from the certificate's `admin` role;
//! - [`Ctl`] holds one HTTP/2 channel to the admin API and answers the wire
//!   types of `apiary_proto` unchanged; the output formats (tables, `--json`
//!   with stable field names documented in docs/json.md) are functions of
//!   those types, so they are tested without a coordinator;
//! - a failure becomes a [`CtlError`] that says why in the user's terms (a
//!   refused call is probed with a bare handshake to tell a revoked,
//!   expired or foreign certificate from an unreachable coordinator) and
//!   carries the exit code shared by every program ([`apiary_api::exit`]);
//! - `ctl tunnel` ([`tunnel`]): a local listener whose every connection
//!   becomes one stream through the coordinator to a host's agent, which
//!   connects to the target;
//! - `ctl docker`, `docker-proxy`, `docker-env` ([`docker`]): the same
//!   streams to a Docker engine's socket, behind a local unix socket that
//!   the operator's own `docker` CLI is pointed at.
//!
//! Map: [`cli`] (the command line), [`run()`] (one command, start to end),
//! [`commands`] (the admin client, [`CtlError`] and the output formats),
//! [`tunnel`] (`ctl tunnel`), [`docker`] (`ctl docker` and its proxy),
//! [`database`] (`ctl database credentials`).
//!
//! Limitations:
//! - one coordinator endpoint, no failover; a call that fails is not retried;
//! - every admin certificate may do everything (no finer roles);
//! - `ctl events` ends when the coordinator goes away (no reconnect), and
//!   `ctl status --watch` polls rather than streams;
//! - `ctl tunnel` carries TCP only, and a connection the target refuses is
//!   reset (as with `ssh -L`) with the reason on stderr.

pub mod cli;
pub mod commands;
pub mod database;
pub mod docker;
mod run;
pub mod text;
pub mod tunnel;

pub use commands::{Ctl, CtlError};
pub use run::run;
