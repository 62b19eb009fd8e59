//! `ctl tunnel` on loopback: an HTTP server behind an agent, fetched through
//! ctl ⇄ coordinator ⇄ agent byte for byte, many connections at once, and the
//! refusals (agent certificate, target outside the allow-list, unknown node).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use apiary_coordinator::admin_conf::AdminConf;
use apiary_tests::*;

fn byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Serves `GET /N` with N deterministic bytes, HTTP/1.0, one thread per connection.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let n: usize = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let body: Vec<u8> = (0..n.min(1 << 20)).map(byte).collect();
                let mut sent = 0;
                while sent < n {
                    let chunk = (n - sent).min(body.len());
                    // The pattern repeats every 251 bytes; chunks start on a multiple of 1 MiB.
                    let start = sent % 251;
                    let slice: Vec<u8> = (0..chunk).map(|i| byte(start + i)).collect();
                    if conn.write_all(&slice).is_err() {
                        return;
                    }
                    sent += chunk;
                }
            });
        }
    });
    port
}

fn fetch(port: u16, n: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /{n} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = Vec::with_capacity(n + 128);
    s.read_to_end(&mut all).map_err(|e| e.to_string())?;
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header")?
        + 4;
    let body = &all[head_end..];
    if body.len() != n {
        return Err(format!("got {} bytes, expected {n}", body.len()));
    }
    if let Some(i) = body.iter().enumerate().position(|(i, b)| *b != byte(i)) {
        return Err(format!("byte {i} differs"));
    }
    Ok(())
}

fn start_tunnel(c: &Coordinator, conf: &std::path::Path, target: &str) -> (Proc, u16) {
    let local = free_port();
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config").arg(conf).args([
        "tunnel",
        target,
        "--local",
        &format!("127.0.0.1:{local}"),
    ]);
    let p = Proc::spawn(cmd, &c.dir.path().join(format!("tunnel-{local}.log")));
    eventually("tunnel listening", Duration::from_secs(15), || {
        p.log_text().contains("forwarding").then_some(())
    });
    (p, local)
}

#[test]
fn http_through_the_tunnel_byte_for_byte_and_50_at_once() {
    let c = Coordinator::start("");
    let token = c.token();
    let _agent = c.agent("bee-1", Some(&token));
    eventually("agent ready", Duration::from_secs(15), || {
        (c.node_state("bee-1")? == "ready").then_some(())
    });
    let server = http_server();
    let (_tunnel, local) = start_tunnel(&c, &c.admin_conf(), &format!("bee-1:{server}"));

    fetch(local, 1_000_000).expect("1 MB");
    fetch(local, 100_000_000).expect("100 MB");
    let handles: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || fetch(local, 1_000_000)))
        .collect();
    for h in handles {
        h.join().expect("thread").expect("concurrent fetch");
    }
}

#[test]
fn tunnels_are_refused_for_agents_outside_the_allow_list_and_to_unknown_nodes() {
    let c = Coordinator::start("");
    let token = c.token();
    let agent = c.agent("bee-1", Some(&token));
    eventually("agent ready", Duration::from_secs(15), || {
        (c.node_state("bee-1")? == "ready").then_some(())
    });

    let run = |conf: &std::path::Path, target: &str| {
        Command::new(bin("ctl"))
            .arg("--config")
            .arg(conf)
            .args(["tunnel", target])
            .output()
            .expect("ctl")
    };
    // Outside the agent's allow-list (loopback and the overlay).
    let out = run(&c.admin_conf(), "bee-1:198.18.0.1:80");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("allow-list"), "{}", stderr(&out));
    // Unknown node.
    let out = run(&c.admin_conf(), "nobody:80");
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no node named"), "{}", stderr(&out));
    // An agent certificate may not open tunnels.
    let admin = AdminConf::load(&c.admin_conf()).expect("admin.conf");
    let id = apiary_certs::Identity::load(&agent.state).expect("identity");
    let path = c.dir.path().join("agent-as-admin.conf");
    AdminConf {
        key: id.key_pem.clone(),
        cert: id.cert_pem(),
        ..admin
    }
    .save(&path)
    .expect("save");
    let out = run(&path, "bee-1:80");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin certificates"),
        "{}",
        stderr(&out)
    );
}
