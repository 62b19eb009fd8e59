//! The gRPC contract of apiary, generated from `proto/apiary.proto` at build
//! time (protox + tonic-prost-build; no system protoc).
//!
//! Three services share the coordinator's single TLS listener: `Enrollment`
//! (no client certificate; the join token is the credential), `AgentApi`
//! (agent certificates) and `Admin` (admin certificates).

#![allow(clippy::all)] // generated code

pub mod v1 {
    tonic::include_proto!("apiary.v1");
}

pub use v1::*;

/// Tunnels: ctl ⇄ coordinator ⇄ agent ⇄ target, one stream per connection.
pub mod tunnel {
    tonic::include_proto!("apiary.tunnel.v1");
}

pub mod dial;
pub mod malloc;
pub mod process;
pub mod tunnel_io;
pub mod tunnel_wire;
