//! Answers of the database servers: RethinkDB's wire protocol as the
//! agent's health check speaks it, and etcdctl's output read by the agent
//! and by the coordinator.

use std::pin::Pin;
use std::task::{Context, Poll};

use apiary_agent::database::{ServerHealth, member_names, parse_etcd, rethinkdb};
use apiary_coordinator::database::membership::{EtcdctlFailure, etcd_member_id};
use apiary_coordinator::database::spec::etcd_initial_cluster;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Target, block_on, split_once, text};

/// The client nonce of the fuzzed conversation (the agent draws a random
/// one; a fixed one lets seeds carry a server nonce that extends it).
pub const CLIENT_NONCE: &str = "fuzzclientnonce0123456789";

/// A server that says `input` whatever it is asked, `step` bytes per read.
struct Server<'a> {
    input: &'a [u8],
    step: usize,
}

impl AsyncRead for Server<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.input.len()).min(buf.remaining());
        let (now, later) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Server<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

pub const RETHINKDB: Target = Target {
    name: "rethinkdb",
    covers: "agent/src/database/rethinkdb.rs: handshake (V1_0, SCRAM-SHA-256: Scram::client_final, verify), query (response frame), connected_servers",
    run: rethinkdb_server,
    dict: &[
        "\"success\"",
        "\"authentication\"",
        "\"server_version\"",
        "\"error\"",
        "r=",
        "s=",
        "i=",
        "v=",
        ",",
        "\"t\"",
        "\"r\"",
        "\"name\"",
        "\u{0}",
        CLIENT_NONCE,
    ],
    max_len: 16 << 10,
    test_mutations: 300,
    known: None,
};

/// Byte 0 sets the read size (1 to 256 bytes); the rest is everything
/// the server sends, handshake answers and the query's response.
fn rethinkdb_server(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let mut server = Server {
        input,
        step: usize::from(step) + 1,
    };
    block_on(async {
        if rethinkdb::handshake(&mut server, "admin", "", CLIENT_NONCE)
            .await
            .is_err()
        {
            return;
        }
        if let Ok(rows) = rethinkdb::query(&mut server, 1, rethinkdb::server_status_term()).await {
            let _ = rethinkdb::connected_servers(&rows);
        }
    });
}

pub const ETCD_HEALTH: Target = Target {
    name: "etcd_health",
    covers: "agent/src/database/mod.rs: parse_etcd (etcdctl endpoint health / status / member list, -w json, with log lines), member_names",
    run: etcd_health,
    dict: &[
        "@@",
        "\"health\"",
        "\"error\"",
        "\"Status\"",
        "\"header\"",
        "\"member_id\"",
        "\"leader\"",
        "\"members\"",
        "\"ID\"",
        "\"name\"",
        "\"peerURLs\"",
        "{\"level\":\"warn\"}",
    ],
    max_len: 8 << 10,
    test_mutations: 2000,
    known: None,
};

fn etcd_health(data: &[u8]) {
    let mut h = ServerHealth::default();
    parse_etcd(&text(data), &mut h);
    let _ = member_names(&h.members);
}

pub const ETCD_MEMBERSHIP: Target = Target {
    name: "etcd_membership",
    covers: "coordinator/src/database/membership.rs: etcd_member_id, EtcdctlFailure::of; coordinator/src/database/spec.rs: etcd_initial_cluster",
    run: etcd_membership,
    dict: &[
        "ETCD_INITIAL_CLUSTER=",
        "ETCD_NAME=",
        "\"members\"",
        "\"peerURLs\"",
        "\"ID\"",
        "http://etcd-2:2380",
        "unhealthy cluster",
        "\n@@\n",
    ],
    max_len: 32 << 10,
    test_mutations: 2000,
    known: None,
};

/// Before a `@@` line: the peer URL looked for; after: etcdctl's output.
fn etcd_membership(data: &[u8]) {
    let (peer, out) = split_once(data, b"\n@@\n");
    let (peer, out) = (text(peer), text(out));
    let _ = etcd_member_id(&out, &peer);
    let _ = etcd_initial_cluster(&out);
    let _ = EtcdctlFailure::of(&out);
}
