//! `apiary-bench`: measurements, never assertions. Prints the tables of
//! docs/performance.md.
//!
//! `apiary-bench agents --counts 1000,10000`: starts the real coordinator binary,
//! then N simulated agents in this one process, each with its own key,
//! certificate, TLS connection and session stream; reports enrollments per
//! second, heartbeat round trips (p50/p99) at 5 s heartbeats, and the
//! coordinator's RSS and CPU.
//!
//! `apiary-bench docker`: the operator's docker CLI through `ctl
//! docker-proxy`, beside Docker's SSH transport and the engine's socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apiary_certs::{
    COORDINATOR_SERVER_NAME, Identity, JoinToken, enrollment_client_config, mtls_client_config,
    new_key_and_csr,
};
use apiary_proto::agent_api_client::AgentApiClient;
use apiary_proto::enrollment_client::EnrollmentClient;
use apiary_proto::{
    AgentMessage, EnrollRequest, Facts, Heartbeat, Hello, agent_message, coordinator_message, dial,
};
use apiary_tests::{Proc, bin, eventually, free_port};
use clap::{Parser, Subcommand};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
#[command(name = "apiary-bench")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Coordinator scale: enrollments/s, heartbeat RTT, coordinator RSS and CPU.
    Agents {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        counts: Vec<usize>,
        /// How long heartbeats are measured once all agents are connected.
        #[arg(long, default_value = "30s", value_parser = humantime_parse)]
        measure: Duration,
        #[arg(long, default_value = "5s", value_parser = humantime_parse)]
        heartbeat: Duration,
    },
    /// Agent footprint (root): one lab host with its configuration applied,
    /// idle for `duration`: the agent's RSS and CPU, and the time of one full
    /// host-configuration re-check (20 requested rounds).
    Agent {
        #[arg(long, default_value = "300s", value_parser = humantime_parse)]
        duration: Duration,
    },
    /// Tunnel throughput and added latency, beside a direct connection and
    /// `ssh -L` (Debian's OpenSSH, its own sshd on 127.0.0.1:2222) in one run.
    Tunnel {
        /// Bytes per throughput transfer.
        #[arg(long, default_value_t = 1_000_000_000)]
        bytes: usize,
        /// Small requests for the latency figure.
        #[arg(long, default_value_t = 100)]
        requests: usize,
        /// Which paths to measure (`apiary` alone, long, is handy under a
        /// profiler).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,floor,tls-floor,apiary,ssh"
        )]
        paths: Vec<TunnelPath>,
        /// Throughput transfers per path; the paths take turns, so a change
        /// in the machine's speed during the run touches them all alike.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The Docker CLI path (root): `docker info` and `docker service ls`
    /// latency and `docker load` throughput to one lab host's engine (the
    /// manager of a 2-host lab) through `ctl docker-proxy`, Docker's own SSH
    /// transport (its own sshd in the host's namespace) and the engine's
    /// socket, transports in turn.
    Docker {
        /// Sequential calls per command and transport.
        #[arg(long, default_value_t = 100)]
        calls: usize,
        /// `docker load` runs per transport.
        #[arg(long, default_value_t = 3)]
        loads: usize,
        /// Megabytes (10^6 bytes) of random data in the loaded image's layer.
        #[arg(long, default_value_t = 200)]
        image_mb: usize,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "apiary,ssh,ssh-mux,local"
        )]
        transports: Vec<DockerTransport>,
    },
    /// Lab bring-up (root): wall time and peak memory per phase until every
    /// host is ready, beside the hand recipe's host steps in the same run.
    Lab {
        #[arg(long, value_delimiter = ',', default_value = "4,8")]
        hosts: Vec<usize>,
    },
    /// The main job (root): `coordinator serve` on 4 fresh lab hosts until
    /// the database is 4/4 healthy, alternating with the hand recipe doing
    /// the same steps (tests/bench/hand-recipe-KIND.sh), `runs` times each;
    /// medians and their ratio.
    Database {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// etcd (lab/etcd:1, built by the lab) or rethinkdb (the real
        /// 2.4.4 server from --rethinkdb-archive).
        #[arg(long, value_enum, default_value = "etcd")]
        kind: BenchDatabase,
        /// The RethinkDB image archive (a docker save of rethinkdb:2.4).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/rethinkdb/rethinkdb-2.4.4.tar"))]
        rethinkdb_archive: std::path::PathBuf,
    },
    /// Grow and heal (root), on one 4-host lab with etcd: `ctl scale
    /// hosts=8 --wait` and back to 4, a rolling `ctl hosts reboot` of the 4
    /// hosts timed per host and phase from the event stream, and `kills`
    /// kills of a database server's container, each timed to its
    /// `database_server_failed` event.
    Heal {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Skip `ctl scale hosts=8` and back, and the rolling reboot.
        #[arg(long)]
        kills_only: bool,
    },
    /// Upgrade and recover (root), on one 4-host lab with etcd: `ctl hosts
    /// upgrade` of the 4 agents (total and per host) beside restarting each
    /// agent by hand (kill, the lab's supervision starts it again, wait
    /// until it is ready: a binary swapped over SSH at best); `coordinator
    /// backup` (online, plain and encrypted) beside `tar` of the same
    /// files; `coordinator restore`; and the time until every agent is back
    /// under the restored coordinator beside a plain restart on its own
    /// state. `rounds` of each, medians.
    Recover {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// DigitalOcean from a laptop (root), on simulated droplets: `coordinator
    /// up` (4 hosts, etcd) from the command to the database healthy, by
    /// phase, beside the same cluster served by a coordinator already inside
    /// the VPC (`serve` in the simulator's VPC mode), runs alternating.
    Up {
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// What `apiary-bench heal` measured.
struct HealFigures {
    grow: f64,
    shrink: f64,
    reboot_total: f64,
    /// Per host: (drain and power off, until the agent is back, until the
    /// host and the database are healthy again), seconds.
    reboot_phases: Vec<(String, f64, f64, f64)>,
    /// Kill of a database server's container to its `database_server_failed` event, ms.
    to_event_ms: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchDatabase {
    Etcd,
    Rethinkdb,
}

impl BenchDatabase {
    fn name(self) -> &'static str {
        match self {
            BenchDatabase::Etcd => "etcd",
            BenchDatabase::Rethinkdb => "rethinkdb",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TunnelPath {
    Direct,
    /// The tunnel's topology with nothing but copying: three plain TCP relays
    /// (ctl's, the coordinator's and the agent's places), so the same four
    /// loopback hops and no TLS, framing or flow control. What the kernel
    /// alone costs along that path: no tunnel can beat it on this machine.
    Floor,
    /// The floor with the tunnel's security: the same three relays, the two
    /// middle legs over mTLS with the tunnel's rustls configuration (the
    /// coordinator's and an admin's certificates, AES-128-GCM), each relay a
    /// tokio runtime with two workers as the tunnel's processes are. No
    /// HTTP/2, no framing, no flow control: what a relay built on the same
    /// TLS stack costs at least, so the tunnel's own overhead is the gap to it.
    TlsFloor,
    Apiary,
    Ssh,
}

/// How `apiary-bench docker` reaches the engine.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DockerTransport {
    /// `docker -H unix://S` where `ctl docker-proxy --socket S` serves S:
    /// each connection travels ctl ⇄ coordinator ⇄ agent ⇄ the engine.
    Apiary,
    /// `docker -H ssh://root@ADDR`: an ssh process per connection, `docker
    /// system dial-stdio` on the far side.
    Ssh,
    /// The same with OpenSSH's connection sharing (`ControlMaster auto`,
    /// `ControlPersist`), as Docker's documentation suggests for it: one
    /// SSH connection for the run, a session on it per docker connection.
    SshMux,
    /// `docker -H unix://` the engine's own socket: the floor.
    Local,
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(f64::NAN)
}

/// One core's AES-128-GCM rate here, in bytes/s: sealing then opening
/// 16 KiB records (TLS's record size) with ring, the library under rustls.
/// One byte through the tunnel is sealed and opened once per TLS leg.
fn aes_gcm_seal_open_rate() -> f64 {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let Ok(key) = UnboundKey::new(&AES_128_GCM, &[7u8; 16]) else {
        return f64::NAN;
    };
    let key = LessSafeKey::new(key);
    let mut record = vec![0x5au8; 16 << 10];
    let total: usize = 1 << 30;
    let t = Instant::now();
    for i in 0..total / record.len() {
        let nonce = || {
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&(i as u64).to_be_bytes());
            Nonce::assume_unique_for_key(n)
        };
        let Ok(tag) = key.seal_in_place_separate_tag(nonce(), Aad::empty(), &mut record) else {
            return f64::NAN;
        };
        record.extend_from_slice(tag.as_ref());
        if key
            .open_in_place(nonce(), Aad::empty(), &mut record)
            .is_err()
        {
            return f64::NAN;
        }
        record.truncate(16 << 10);
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// A plain TCP relay to `next` on loopback: each connection copied both ways
/// by two threads through 256 KiB buffers, half-close passed on.
fn plain_relay(next: u16) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    fn copy(mut from: TcpStream, mut to: TcpStream) {
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let Ok(out) = TcpStream::connect(("127.0.0.1", next)) else {
                continue;
            };
            let _ = (conn.set_nodelay(true), out.set_nodelay(true));
            let (Ok(conn2), Ok(out2)) = (conn.try_clone(), out.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || copy(conn, out));
            std::thread::spawn(move || copy(out2, conn2));
        }
    });
    port
}

/// The TLS floor's three relays (see [`TunnelPath::TlsFloor`]); returns the
/// port a client connects to. The runtimes live as long as the process.
fn tls_relays(server: u16) -> anyhow::Result<u16> {
    use apiary_certs::{ClusterCa, RevocationSet, Role, server_config};
    use rustls_pki_types::ServerName;
    use tokio::net::{TcpListener, TcpStream};

    let ca = ClusterCa::generate("bench")?;
    let (server_cert, server_key) =
        ca.issue_with_key("coordinator", Role::Coordinator, Duration::from_secs(3600))?;
    let (client_cert, client_key) =
        ca.issue_with_key("admin", Role::Admin, Duration::from_secs(3600))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
        ca.cert_der(),
        &server_cert.der,
        &server_key,
        RevocationSet::default(),
    )?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(mtls_client_config(
        ca.cert_der(),
        &client_cert.der,
        &client_key,
    )?));
    let name = ServerName::try_from(COORDINATOR_SERVER_NAME)?;

    // One relay: accept on a fresh port (TLS or not), dial `next` (TLS or
    // not), copy both ways with the tunnel's buffer size.
    fn relay<A, D, AF, DF>(accept: A, dial: D) -> anyhow::Result<u16>
    where
        A: Fn(TcpStream) -> AF + Send + Sync + 'static,
        D: Fn() -> DF + Send + Sync + 'static,
        AF: Future<Output = std::io::Result<Box<dyn Stream>>> + Send,
        DF: Future<Output = std::io::Result<Box<dyn Stream>>> + Send,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let (accept, dial) = (Arc::new(accept), Arc::new(dial));
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (accept, dial) = (accept.clone(), dial.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let (Ok(mut a), Ok(mut b)) = (accept(tcp).await, dial().await) {
                        let _ = tokio::io::copy_bidirectional_with_sizes(
                            &mut a,
                            &mut b,
                            512 << 10,
                            512 << 10,
                        )
                        .await;
                    }
                });
            }
        });
        std::mem::forget(rt);
        Ok(port)
    }
    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
    use std::future::Future;

    async fn plain(port: u16) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        Ok(Box::new(tcp))
    }
    let tls_dial = move |port: u16| {
        let (connector, name) = (connector.clone(), name.clone());
        move || {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, dial::BufferedTcp::new(tcp)).await?;
                Ok(Box::new(tls) as Box<dyn Stream>)
            }
        }
    };
    let tls_accept = move |tcp: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let tls = acceptor.accept(dial::BufferedTcp::new(tcp)).await?;
            Ok(Box::new(tls) as Box<dyn Stream>)
        }
    };
    let agent_side = relay(tls_accept.clone(), move || plain(server))?;
    let coordinator_side = relay(tls_accept, tls_dial(agent_side))?;
    relay(
        |tcp| async move { Ok(Box::new(tcp) as Box<dyn Stream>) },
        tls_dial(coordinator_side),
    )
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|e| format!("{e}"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err("use s or ms".into()),
    }
}

fn main() -> anyhow::Result<()> {
    raise_fd_limit();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        Cmd::Agents {
            counts,
            measure,
            heartbeat,
        } => {
            println!(
                "| agents | enroll/s | connect s | heartbeat RTT p50 ms | p99 ms | samples | coordinator RSS MiB (peak) | coordinator CPU % of one core |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            for n in counts {
                let row = rt.block_on(agents(n, measure, heartbeat))?;
                println!("{row}");
            }
        }
        Cmd::Tunnel {
            bytes,
            requests,
            paths,
            rounds,
        } => tunnel_bench(bytes, requests, &paths, rounds)?,
        Cmd::Docker {
            calls,
            loads,
            image_mb,
            transports,
        } => docker_bench(calls, loads, image_mb, &transports)?,
        Cmd::Agent { duration } => println!("{}", agent_footprint(duration)?),
        Cmd::Database {
            runs,
            kind,
            rethinkdb_archive,
        } => println!("{}", database_bench(runs, kind, &rethinkdb_archive)?),
        Cmd::Heal { kills, kills_only } => {
            println!("{}", heal_table(&heal_bench(kills, kills_only)?))
        }
        Cmd::Recover { rounds } => println!("{}", recover_bench(rounds)?),
        Cmd::Up { runs } => println!("{}", up_bench(runs)?),
        Cmd::Lab { hosts } => {
            println!(
                "| hosts | apiary: network | engines | images | agents | enrollment | all ready (wall) | peak memory | hand recipe: network | engines | images | hand total | apiary host steps / hand |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for n in hosts {
                println!("{}", lab(n)?);
            }
            println!();
            println!(
                "| hosts | pre-swarm checks | swarm | overlay + probe containers | enrolled to checked overlay | serve to checked overlay |"
            );
            println!("|---|---|---|---|---|---|");
            for row in SWARM_ROWS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                println!("{row}");
            }
        }
    }
    Ok(())
}

fn agent_footprint(duration: Duration) -> anyhow::Result<String> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut lab = apiary_tests::LabCluster::new("benchagent", 1, "host_recheck_interval = \"60s\"");
    lab.start();
    lab.wait_all_ready(Duration::from_secs(120));
    eventually("configuration applied", Duration::from_secs(60), || {
        (lab.node(&lab.hosts[0])?["config_state"] == "ok").then_some(())
    });
    let host = lab.hosts[0].clone();
    let pid = lab
        .pid(&host, "agent")
        .ok_or_else(|| anyhow::anyhow!("no agent pid"))?;
    // Re-check time: requested rounds, as the agent measures them.
    let mut took = Vec::new();
    for _ in 0..20 {
        let out = apiary_tests::ctl_with(&lab.admin_conf(), &["hosts", "apply", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if let Some(us) = v["hosts"][0]["took_us"].as_u64() {
            took.push(us as f64 / 1000.0);
        }
    }
    took.sort_by(|a, b| a.total_cmp(b));
    let before = proc_stat(pid);
    let t0 = Instant::now();
    let mut peak = before.rss_kib;
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(proc_stat(pid).rss_kib);
    }
    let after = proc_stat(pid);
    let ticks_per_sec = ticks_per_sec();
    let cpu =
        (after.cpu_ticks - before.cpu_ticks) as f64 / ticks_per_sec / t0.elapsed().as_secs_f64()
            * 100.0;
    lab.stop();
    Ok(format!(
        "| agent idle {:.0} s | RSS {:.1} MiB (peak {:.1}) | CPU {cpu:.3} % of one core | re-check p50 {:.1} ms, max {:.1} ms ({} rounds) |",
        duration.as_secs_f64(),
        after.rss_kib as f64 / 1024.0,
        peak as f64 / 1024.0,
        took.get(took.len() / 2).copied().unwrap_or(f64::NAN),
        took.last().copied().unwrap_or(f64::NAN),
        took.len()
    ))
}

/// One GET through `port`; returns (bytes, seconds).
fn bench_get(port: u16, n: usize) -> anyhow::Result<(usize, f64)> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    write!(s, "GET /{n} HTTP/1.0\r\n\r\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            break;
        }
        total += k;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

fn tunnel_bench(
    bytes: usize,
    requests: usize,
    which: &[TunnelPath],
    rounds: usize,
) -> anyhow::Result<()> {
    let server = apiary_tests::sized_http_server();
    // apiary: coordinator + agent on loopback, ctl tunnel.
    let c = apiary_tests::Coordinator::start("");
    let token = c.token();
    let _agent = c.agent("bee-1", Some(&token));
    c.wait_ready("bee-1", Duration::from_secs(30));
    let local = free_port();
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config").arg(c.admin_conf()).args([
        "tunnel",
        &format!("bee-1:{server}"),
        "--local",
        &format!("127.0.0.1:{local}"),
    ]);
    let tunnel = Proc::spawn(cmd, &c.dir.path().join("tunnel.log"));
    eventually("tunnel up", Duration::from_secs(15), || {
        tunnel.log_text().contains("forwarding").then_some(())
    });

    // ssh -L, its own sshd on 127.0.0.1:2222 with throwaway keys.
    let ssh_dir = tempfile::tempdir()?;
    let mut paths: Vec<(String, u16, Option<Proc>)> = Vec::new();
    if which.contains(&TunnelPath::Direct) {
        paths.push(("direct".into(), server, None));
    }
    if which.contains(&TunnelPath::Floor) {
        let agent_side = plain_relay(server);
        let coordinator_side = plain_relay(agent_side);
        paths.push((
            "floor: 3 plain relays, no TLS".into(),
            plain_relay(coordinator_side),
            None,
        ));
    }
    if which.contains(&TunnelPath::TlsFloor) {
        paths.push((
            "TLS floor: 3 relays, 2 mTLS legs, no HTTP/2".into(),
            tls_relays(server)?,
            None,
        ));
    }
    if which.contains(&TunnelPath::Apiary) {
        paths.push(("apiary tunnel".into(), local, None));
    }
    let mut sshd = None;
    if !which.contains(&TunnelPath::Ssh) {
    } else if Path::new(SSHD).exists() {
        let d = ssh_dir.path();
        let started = Sshd::start(
            d,
            std::net::Ipv4Addr::LOCALHOST.into(),
            2222,
            None,
            "AllowTcpForwarding yes\n",
        )?;
        let key = started.key.clone();
        sshd = Some(started);
        for cipher in ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"] {
            let port = free_port();
            let mut cmd = Command::new("ssh");
            cmd.args([
                "-N",
                "-p",
                "2222",
                "-c",
                cipher,
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-i",
            ])
            .arg(&key)
            .args([
                "-L",
                &format!("127.0.0.1:{port}:127.0.0.1:{server}"),
                "root@127.0.0.1",
            ]);
            let p = Proc::spawn(cmd, &d.join(format!("ssh-{port}.log")));
            eventually("ssh -L up", Duration::from_secs(15), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            });
            paths.push((
                format!("ssh -L ({})", cipher.split('@').next().unwrap_or(cipher)),
                port,
                Some(p),
            ));
        }
    } else {
        eprintln!("no {SSHD}: `./scripts/setup-host --bench` installs it for the ssh -L baseline");
    }
    println!(
        "| path | throughput MB/s (median of {rounds}, {} MB each, paths in turn) | small GET p50 ms | p99 ms |",
        bytes / 1_000_000
    );
    println!("|---|---|---|---|");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    // CPU seconds per byte along the floor: client, server and the three
    // relays all run in this process, so its own CPU time is the whole cost.
    let mut floor_cpu_per_byte = Vec::new();
    // CPU seconds per byte of ctl, the coordinator and the agent: steadier
    // than throughput on a shared machine, so the figure to compare builds by.
    let tunnel_pids = [
        c.proc.as_ref().map_or(0, Proc::pid),
        _agent.proc.pid(),
        tunnel.pid(),
    ];
    let tunnel_cpu = || -> f64 {
        let ticks: u64 = tunnel_pids.iter().map(|p| proc_stat(*p).cpu_ticks).sum();
        ticks as f64 / ticks_per_sec()
    };
    let mut tunnel_cpu_per_byte = Vec::new();
    for _ in 0..rounds.max(1) {
        for ((name, port, _), r) in paths.iter().zip(&mut rates) {
            let (cpu, processes) = (cpu_seconds(), tunnel_cpu());
            r.push(
                bench_get(*port, bytes)
                    .map(|(b, s)| b as f64 / s / 1e6)
                    .unwrap_or(f64::NAN),
            );
            if name.starts_with("floor") {
                floor_cpu_per_byte.push((cpu_seconds() - cpu) / bytes as f64);
            }
            if name.starts_with("apiary") {
                tunnel_cpu_per_byte.push((tunnel_cpu() - processes) / bytes as f64);
            }
        }
    }
    let mut results = Vec::new();
    for ((name, port, _), mut rates) in paths.iter().zip(rates) {
        rates.sort_by(|a, b| a.total_cmp(b));
        let mut lat: Vec<f64> = (0..requests)
            .map(|_| {
                bench_get(*port, 100)
                    .map(|(_, s)| s * 1000.0)
                    .unwrap_or(f64::NAN)
            })
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let median = rates[rates.len() / 2];
        println!("| {name} | {median:.0} | {:.2} | {:.2} |", p(0.5), p(0.99));
        results.push((name.clone(), median, p(0.5)));
    }
    let get = |n: &str| {
        results
            .iter()
            .find(|r| r.0.starts_with(n))
            .map(|r| (r.1, r.2))
    };
    if let (Some(t), Some(d)) = (get("apiary"), get("direct")) {
        println!(
            "\ntunnel / direct throughput: {:.2}; added p50 latency: {:.2} ms",
            t.0 / d.0,
            t.1 - d.1
        );
    }
    if !tunnel_cpu_per_byte.is_empty() {
        tunnel_cpu_per_byte.sort_by(|a, b| a.total_cmp(b));
        println!(
            "tunnel CPU (ctl + coordinator + agent): {:.2} core-s/GB (median of {})",
            tunnel_cpu_per_byte[tunnel_cpu_per_byte.len() / 2] * 1e9,
            tunnel_cpu_per_byte.len()
        );
    }
    if let (Some(t), Some(s)) = (get("apiary"), get("ssh -L (aes128-gcm")) {
        println!(
            "tunnel / ssh -L (aes128-gcm, its fastest cipher) throughput: {:.2}",
            t.0 / s.0
        );
    }
    if let (Some(t), Some(f)) = (get("apiary"), get("TLS floor")) {
        println!(
            "tunnel / TLS floor (the same TLS stack with nothing above it) throughput: {:.2}",
            t.0 / f.0
        );
    }
    if let (Some(f), Some(s)) = (get("TLS floor"), get("ssh -L (aes128-gcm")) {
        println!("TLS floor / ssh -L (aes128-gcm): {:.2}", f.0 / s.0);
    }
    if let (Some(f), Some(s)) = (get("floor"), get("ssh -L (aes128-gcm")) {
        println!(
            "floor (the tunnel's four hops, copying only) / ssh -L (aes128-gcm): {:.2}",
            f.0 / s.0
        );
        // The most any tunnel with two TLS legs could carry here: the floor's
        // CPU per byte plus two AES-GCM seals and opens per byte, spread
        // perfectly over every core, and nothing else (no framing, no
        // copies beyond the floor's, no waiting).
        floor_cpu_per_byte.sort_by(|a, b| a.total_cmp(b));
        let floor_cpu = floor_cpu_per_byte[floor_cpu_per_byte.len() / 2];
        let aes = aes_gcm_seal_open_rate();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ceiling = cores / (floor_cpu + 2.0 / aes) / 1e6;
        println!(
            "floor CPU: {:.2} core-s/GB; AES-128-GCM seal+open here: {:.0} MB/s per core; ceiling for two TLS legs on {cores} cores: {ceiling:.0} MB/s = {:.2} x ssh -L (aes128-gcm)",
            floor_cpu * 1e9,
            aes / 1e6,
            ceiling / s.0
        );
    }
    // 100 concurrent connections through the tunnel, none may fail.
    let t = Instant::now();
    let handles: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || bench_get(local, 1_000_000)))
        .collect();
    let failed = handles
        .into_iter()
        .filter(|_| true)
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("panic"))
                .and_then(|r| r)
        })
        .filter(|r| !matches!(r, Ok((n, _)) if *n > 1_000_000))
        .count();
    println!(
        "100 concurrent 1 MB GETs through the tunnel: {failed} failed, {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(paths);
    drop(sshd);
    Ok(())
}

/// Debian's OpenSSH server, for the SSH baselines (`./scripts/setup-host --bench`).
const SSHD: &str = "/usr/sbin/sshd";

/// A throwaway sshd for an SSH baseline: host and user keys made fresh in
/// its directory, root by that key only, its log in `sshd.log` there;
/// killed (by PID) when dropped.
struct Sshd {
    proc: Proc,
    /// The private key its authorized_keys accepts.
    key: PathBuf,
}

impl Sshd {
    /// Starts sshd on `listen:port` with `extra` sshd_config lines, inside
    /// the network namespace `netns` when given (a lab host's: `ip netns
    /// exec` execs sshd, so the PID held is sshd's own), and returns once
    /// the port accepts connections.
    fn start(
        dir: &Path,
        listen: std::net::IpAddr,
        port: u16,
        netns: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Sshd> {
        for key in ["host", "user"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()?;
            anyhow::ensure!(made.success(), "ssh-keygen failed to make the {key} key");
        }
        std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys"))?;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress {listen}\nHostKey {0}/host\nAuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nPidFile {0}/sshd.pid\nStrictModes no\n{extra}",
                dir.display()
            ),
        )?;
        // sshd's privilege separation directory, which its package's unit
        // would make (the unit is disabled).
        std::fs::create_dir_all("/run/sshd")?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.args(["-D", "-e", "-f"]).arg(dir.join("sshd_config"));
        let proc = Proc::spawn(cmd, &dir.join("sshd.log"));
        eventually("sshd listening", Duration::from_secs(15), || {
            std::net::TcpStream::connect((listen, port)).ok()
        });
        Ok(Sshd {
            proc,
            key: dir.join("user"),
        })
    }

    /// Connections it has authenticated so far (from its log).
    fn accepted(&self) -> usize {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }
}

/// The image `apiary-bench docker` loads; removed after every load.
const LOAD_IMAGE: &str = "apiary-bench/random:1";

/// The docker CLI as `apiary-bench docker` runs it: the operator's `docker`
/// on PATH, with a configuration directory of its own (no context or
/// setting of the operator's in the way), and `ssh` found first in the
/// benchmark's own directory (a wrapper giving OpenSSH the benchmark's key:
/// Docker's SSH transport passes no ssh options, and the operator's
/// ~/.ssh/config is not the benchmark's to change).
struct DockerCli {
    path_env: std::ffi::OsString,
    config_dir: PathBuf,
}

impl DockerCli {
    fn command(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(host)
            .args(args)
            .env("PATH", &self.path_env)
            .env("DOCKER_CONFIG", &self.config_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Each would send docker somewhere else than `-H` or change how.
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_TLS",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `docker -H host ARGS` to its end: the seconds from spawn to
    /// exit (what the operator waits), or what docker said if it failed.
    fn timed(&self, host: &str, args: &[&str]) -> anyhow::Result<f64> {
        let t = Instant::now();
        let out = self.command(host, args).output()?;
        let took = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            out.status.success(),
            "docker -H {host} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(took)
    }

    /// `docker -H host ARGS`'s first line of output.
    fn line(&self, host: &str, args: &[&str]) -> String {
        self.command(host, args)
            .stdout(Stdio::piped())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    }
}

/// The `q` quantile of sorted samples (nearest rank); NaN when there are none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Writes a `docker load` archive of `reference`: one layer holding one
/// file of `bytes` random bytes (incompressible, so that no transport gains
/// by compressing), with the lab's own archive writer. Returns its size.
fn random_image_archive(path: &Path, reference: &str, bytes: usize) -> anyhow::Result<u64> {
    use apiary_lab::image::{ImageConfig, LayerEntry, layer_tar, write_image_archive};
    use std::io::Read;
    let mut data = Vec::with_capacity(bytes);
    std::fs::File::open("/dev/urandom")?
        .take(bytes as u64)
        .read_to_end(&mut data)?;
    anyhow::ensure!(data.len() == bytes, "short read from /dev/urandom");
    let layer = layer_tar(&[LayerEntry::File {
        path: "random.bin".into(),
        mode: 0o644,
        data,
    }])?;
    let out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write_image_archive(reference, &ImageConfig::default(), &layer, out)?;
    Ok(std::fs::metadata(path)?.len())
}

/// `apiary-bench docker`: the docker CLI to one lab host's engine (the
/// manager's) through `ctl docker-proxy`, Docker's SSH transport and the
/// engine's own socket; transports take turns call by call, so the
/// machine's noise touches them all alike.
fn docker_bench(
    calls: usize,
    loads: usize,
    image_mb: usize,
    which: &[DockerTransport],
) -> anyhow::Result<()> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // Two hosts, a swarm of one manager (queenbee): all `service ls` needs.
    let mut lab = apiary_tests::LabCluster::new("benchdocker", 2, "\n[swarm]\nmanagers = 1\n");
    lab.start();
    // Long: another lab on this machine holds the lab lock until it ends.
    let status = lab.wait_all_ready(Duration::from_secs(1800));
    let host = lab.hosts[0].clone();
    let node = status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == host.as_str()))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{host} is not in ctl status"))?;
    let socket = node["docker_socket"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{host} has no docker_socket in ctl status"))?
        .to_string();
    let private_ip: std::net::IpAddr = node["private_ip"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{host} has no private_ip in ctl status"))?
        .parse()?;
    let netns = node["netns"]
        .as_str()
        .map_or_else(|| lab.netns(&host), str::to_string);

    let dir = tempfile::tempdir()?;
    let bin_dir = dir.path().join("bin");
    let config_dir = dir.path().join("docker-config");
    let ssh_dir = dir.path().join("ssh");
    for d in [&bin_dir, &config_dir, &ssh_dir] {
        std::fs::create_dir(d)?;
    }
    // The SSH transports differ only in the `ssh` docker finds first.
    let mux_bin_dir = dir.path().join("bin-mux");
    std::fs::create_dir(&mux_bin_dir)?;
    let cli_with = |first: &Path| {
        let mut path_env = std::ffi::OsString::from(first);
        if let Some(path) = std::env::var_os("PATH") {
            path_env.push(":");
            path_env.push(path);
        }
        DockerCli {
            path_env,
            config_dir: config_dir.clone(),
        }
    };
    let (cli, mux_cli) = (cli_with(&bin_dir), cli_with(&mux_bin_dir));
    let local = format!("unix://{socket}");

    // The swarm has formed and the coordinator knows its manager once
    // `ctl docker` gets an answer; the proxy's start-up check needs as much.
    eventually(
        "ctl docker reaches the manager",
        Duration::from_secs(300),
        || {
            apiary_tests::ctl_with(&lab.admin_conf(), &["docker", "--", "service", "ls"])
                .status
                .success()
                .then_some(())
        },
    );
    let proxy_socket = dir.path().join("apiary.sock");
    let mut cmd = Command::new(bin("ctl"));
    cmd.arg("--config")
        .arg(lab.admin_conf())
        .arg("docker-proxy")
        .arg("--socket")
        .arg(&proxy_socket);
    let proxy = Proc::spawn(cmd, &dir.path().join("docker-proxy.log"));
    eventually("ctl docker-proxy serving", Duration::from_secs(30), || {
        proxy
            .log_text()
            .contains("export DOCKER_HOST=")
            .then_some(())
    });

    // Docker's SSH transport runs `ssh ADDR docker system dial-stdio`: an
    // sshd in the host's namespace on its private address, whose sessions
    // get the host's engine as DOCKER_HOST (the far side's docker is this
    // machine's, found on sshd's default PATH).
    let mut sshd = None;
    let control_path = ssh_dir.join("cm-%C");
    if !which.contains(&DockerTransport::Ssh) && !which.contains(&DockerTransport::SshMux) {
    } else if Path::new(SSHD).exists() {
        let started = Sshd::start(
            &ssh_dir,
            private_ip,
            22,
            Some(&netns),
            &format!("SetEnv DOCKER_HOST=unix://{socket}\n"),
        )?;
        std::fs::write(
            ssh_dir.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n",
                started.key.display()
            ),
        )?;
        // The shared connection's master lingers 60 s after its last use
        // (ControlPersist): calls use it every few seconds, and after a
        // failed run it ends by itself soon.
        for (wrapper, options) in [
            (bin_dir.join("ssh"), String::new()),
            (
                mux_bin_dir.join("ssh"),
                format!(
                    "-o ControlMaster=auto -o ControlPath={} -o ControlPersist=60 ",
                    control_path.display()
                ),
            ),
        ] {
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec /usr/bin/ssh -F {} {options}\"$@\"\n",
                    ssh_dir.join("ssh_config").display()
                ),
            )?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        }
        sshd = Some(started);
    } else {
        eprintln!(
            "no {SSHD}: `./scripts/setup-host --bench` installs it for Docker's SSH transport"
        );
    }

    let mut paths: Vec<(DockerTransport, &str, String)> = Vec::new();
    for t in which {
        match t {
            DockerTransport::Apiary => paths.push((
                *t,
                "apiary (ctl docker-proxy)",
                format!("unix://{}", proxy_socket.display()),
            )),
            DockerTransport::Ssh if sshd.is_some() => {
                paths.push((*t, "docker's ssh://", format!("ssh://root@{private_ip}")))
            }
            DockerTransport::SshMux if sshd.is_some() => paths.push((
                *t,
                "docker's ssh://, ControlMaster",
                format!("ssh://root@{private_ip}"),
            )),
            DockerTransport::Ssh | DockerTransport::SshMux => {}
            DockerTransport::Local => paths.push((*t, "engine's socket", local.clone())),
        }
    }
    println!(
        "docker CLI {} against {host}'s engine {} (Swarm manager; 2-host lab); transports in turn, {calls} sequential calls each",
        cli.line(&local, &["version", "--format", "{{.Client.Version}}"]),
        cli.line(&local, &["version", "--format", "{{.Server.Version}}"]),
    );
    // One untimed call each: a transport that does not work stops the run
    // here, and first-use costs (page cache, the proxy's first stream) are
    // not counted.
    let cli_for = |t: DockerTransport| {
        if t == DockerTransport::SshMux {
            &mux_cli
        } else {
            &cli
        }
    };
    for (t, name, h) in &paths {
        cli_for(*t)
            .timed(h, &["info"])
            .map_err(|e| anyhow::anyhow!("{name} does not work: {e}"))?;
    }

    // Latency: sequential calls, transports in turn; the order rotates each
    // round so that none always follows the same other one.
    let commands: [&[&str]; 2] = [&["info"], &["service", "ls"]];
    let mut p50s = Vec::new();
    let accepted_before = sshd.as_ref().map_or(0, Sshd::accepted);
    println!();
    println!("| command | transport | p50 ms | p90 ms | max ms | failed |");
    println!("|---|---|---|---|---|---|");
    for args in commands {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut failed: Vec<(usize, String)> = vec![(0, String::new()); paths.len()];
        for round in 0..calls {
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                match cli_for(paths[i].0).timed(&paths[i].2, args) {
                    Ok(s) => samples[i].push(s * 1000.0),
                    Err(e) => failed[i] = (failed[i].0 + 1, e.to_string()),
                }
            }
        }
        for (i, (t, name, _)) in paths.iter().enumerate() {
            let s = &mut samples[i];
            s.sort_by(f64::total_cmp);
            println!(
                "| docker {} | {name} | {:.1} | {:.1} | {:.1} | {} |",
                args.join(" "),
                quantile(s, 0.5),
                quantile(s, 0.9),
                s.last().copied().unwrap_or(f64::NAN),
                failed[i].0
            );
            if failed[i].0 > 0 {
                eprintln!("{name}, last failure: {}", failed[i].1);
            }
            p50s.push((args.join(" "), *t, quantile(s, 0.5)));
        }
    }
    let p50 = |cmd: &str, t: DockerTransport| {
        p50s.iter()
            .find(|(c, tt, _)| c == cmd && *tt == t)
            .map(|(_, _, v)| *v)
    };
    // Why the SSH transport costs what it does: its connections per docker
    // call, and one bare connection (`ssh ADDR true`) timed alone.
    if let Some(sshd) = &sshd
        && which.contains(&DockerTransport::Ssh)
    {
        // The shared connection, if measured too, is one more at most.
        let per_call =
            (sshd.accepted() - accepted_before) as f64 / (calls * commands.len()).max(1) as f64;
        let mut bare: Vec<f64> = (0..20)
            .filter_map(|_| {
                let t = Instant::now();
                let ok = Command::new(bin_dir.join("ssh"))
                    .args([&format!("root@{private_ip}"), "true"])
                    .stdin(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                ok.then(|| t.elapsed().as_secs_f64() * 1000.0)
            })
            .collect();
        bare.sort_by(f64::total_cmp);
        println!(
            "\nssh connections per docker call (plain ssh://): {per_call:.2}; one `ssh root@{private_ip} true` alone: p50 {:.1} ms ({} of 20 succeeded)",
            quantile(&bare, 0.5),
            bare.len()
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "| command | apiary p50 / ssh p50 (target ≤ 0.30) | apiary p50 / ssh with ControlMaster p50 | apiary p50 − engine's socket p50 (target ≤ 5 ms) |"
    );
    println!("|---|---|---|---|");
    for args in commands {
        let cmd = args.join(" ");
        let a = p50(&cmd, DockerTransport::Apiary);
        let vs_ssh = match (a, p50(&cmd, DockerTransport::Ssh)) {
            (Some(a), Some(s)) => format!("{:.2}: {}", a / s, verdict(a <= 0.3 * s)),
            _ => "-".into(),
        };
        let vs_mux = match (a, p50(&cmd, DockerTransport::SshMux)) {
            (Some(a), Some(s)) => format!("{:.2}", a / s),
            _ => "-".into(),
        };
        let vs_local = match (a, p50(&cmd, DockerTransport::Local)) {
            (Some(a), Some(l)) => format!("{:+.1} ms: {}", a - l, verdict(a - l <= 5.0)),
            _ => "-".into(),
        };
        println!("| docker {cmd} | {vs_ssh} | {vs_mux} | {vs_local} |");
    }

    // Throughput: `docker load -i` of one incompressible image, transports
    // in turn; the image is removed after every load (through the engine's
    // socket, untimed), so each load writes its layer afresh.
    if loads > 0 {
        let archive = dir.path().join("random-image.tar");
        let size = random_image_archive(&archive, LOAD_IMAGE, image_mb * 1_000_000)?;
        let archive_arg = archive.display().to_string();
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 0..loads {
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let rate = match cli_for(paths[i].0)
                    .timed(&paths[i].2, &["load", "-q", "-i", &archive_arg])
                {
                    Ok(s) => size as f64 / s / 1e6,
                    Err(e) => {
                        eprintln!("{}: {e}", paths[i].1);
                        f64::NAN
                    }
                };
                rates[i].push(rate);
                // Absent after a failed load: nothing to remove then.
                let _ = cli.timed(&local, &["rmi", "-f", LOAD_IMAGE]);
            }
        }
        println!();
        println!(
            "| transport | docker load -i of {:.0} MB (one random layer), MB/s per run | median |",
            size as f64 / 1e6
        );
        println!("|---|---|---|");
        for ((_, name, _), mut r) in paths.iter().zip(rates) {
            let runs: Vec<String> = r.iter().map(|v| format!("{v:.0}")).collect();
            r.sort_by(f64::total_cmp);
            println!(
                "| {name} | {} | {:.0} |",
                runs.join(", "),
                quantile(&r, 0.5)
            );
        }
    }

    drop(proxy);
    // The shared connection's master outlives the calls (ControlPersist):
    // asked to exit through its own socket (nothing to do if none started).
    if sshd.is_some() {
        let _ = Command::new("/usr/bin/ssh")
            .arg("-F")
            .arg(ssh_dir.join("ssh_config"))
            .arg("-o")
            .arg(format!("ControlPath={}", control_path.display()))
            .args(["-O", "exit", &format!("root@{private_ip}")])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    drop(sshd);
    lab.stop();
    let out = lab.teardown();
    anyhow::ensure!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

static SWARM_ROWS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn used_memory_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:") - field("MemAvailable:")) / 1024
}

fn lab(n: usize) -> anyhow::Result<String> {
    use std::collections::BTreeMap;
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut lab = apiary_tests::LabCluster::new("bench", n, "");
    let baseline = used_memory_mib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(used_memory_mib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let start = Instant::now();
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&lab.config)
        .arg("--state-dir")
        .arg(&lab.state);
    let log = lab.dir.path().join("bench-coordinator.log");
    lab.coordinator = Some(Proc::spawn(cmd, &log));
    lab.wait_all_ready(Duration::from_secs(300));
    let wall = start.elapsed();
    // Then Swarm, the overlay and the first full check round.
    eventually(
        "swarm and overlay checked",
        Duration::from_secs(300),
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("swarm and overlay checked")
                .then_some(())
        },
    );
    let swarm_wall = start.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut phases = BTreeMap::new();
    for line in std::fs::read_to_string(&log)?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(p), Some(ms)) = (
            v["fields"]["phase"].as_str(),
            v["fields"]["elapsed_ms"].as_u64(),
        ) {
            phases.insert(p.to_string(), ms as f64 / 1000.0);
        }
    }
    lab.stop();
    let out = lab.teardown();
    anyhow::ensure!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lab);

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/hand-recipe-hosts.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(n.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hand recipe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hand: BTreeMap<String, f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .and_then(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        })
        .collect();
    let p = |k: &str| phases.get(k).copied().unwrap_or(f64::NAN);
    let h = |k: &str| hand.get(k).copied().unwrap_or(f64::NAN);
    let ours_hosts = p("network") + p("engines") + p("images");
    let swarm_row = format!(
        "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s |",
        p("checks"),
        p("swarm"),
        p("overlay"),
        swarm_wall.as_secs_f64() - wall.as_secs_f64(),
        swarm_wall.as_secs_f64()
    );
    SWARM_ROWS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(swarm_row);
    let hand_total = h("network") + h("engines") + h("images");
    Ok(format!(
        "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | +{} MiB | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} |",
        p("network"),
        p("engines"),
        p("images"),
        p("agents"),
        p("enrollment"),
        wall.as_secs_f64(),
        peak.load(Ordering::Relaxed).saturating_sub(baseline),
        h("network"),
        h("engines"),
        h("images"),
        hand_total,
        ours_hosts / hand_total,
    ))
}

/// One apiary bring-up to a healthy 4-server database: seconds from
/// spawning `coordinator serve` to `ctl status` saying healthy.
fn apiary_database_once(kind: BenchDatabase, archive: &std::path::Path) -> anyhow::Result<f64> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let database = match kind {
        BenchDatabase::Etcd => "\n[database]\nkind = \"etcd\"\n".to_string(),
        BenchDatabase::Rethinkdb => format!(
            "\n[database]\nkind = \"rethinkdb\"\nimage_archive = \"{}\"\n",
            archive.display()
        ),
    };
    let mut lab = apiary_tests::LabCluster::new("benchdb", 4, &database);
    let start = Instant::now();
    lab.start();
    eventually(
        &format!("{} 4/4 healthy", kind.name()),
        Duration::from_secs(300),
        || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        },
    );
    let took = start.elapsed().as_secs_f64();
    lab.stop();
    let out = lab.teardown();
    anyhow::ensure!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// One run of the hand recipe: its own "4/4" time.
fn hand_database_once(kind: BenchDatabase, archive: &std::path::Path) -> anyhow::Result<f64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("bench/hand-recipe-{}.sh", kind.name()));
    // The recipe makes namespaces and bridges of its own: under the lab lock.
    let out = Command::new("flock")
        .arg(apiary_lab::plan::DEFAULT_RUN_BASE.to_string() + "/lab.lock")
        .arg("bash")
        .arg(&script)
        .arg(archive)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hand recipe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(" 4/4 "))
        .and_then(|l| l.strip_prefix("HAND ")?.split(' ').next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the hand recipe printed no healthy time"))
}

fn database_bench(
    runs: usize,
    kind: BenchDatabase,
    archive: &std::path::Path,
) -> anyhow::Result<String> {
    if kind == BenchDatabase::Rethinkdb {
        anyhow::ensure!(
            archive.is_file(),
            "--rethinkdb-archive {}: no such file (../shared/rethinkdb/README.md says how it is built)",
            archive.display()
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut ours, mut hand) = (Vec::new(), Vec::new());
    let mut table = format!(
        "| run | apiary: serve → {} 4/4 healthy | hand recipe | ratio |\n|---:|---:|---:|---:|\n",
        kind.name()
    );
    for run in 1..=runs.max(1) {
        let a = apiary_database_once(kind, archive)?;
        let h = hand_database_once(kind, archive)?;
        table.push_str(&format!("| {run} | {a:.1} s | {h:.1} s | {:.2} |\n", a / h));
        eprintln!("run {run}: apiary {a:.1} s, hand {h:.1} s");
        ours.push(a);
        hand.push(h);
    }
    let (a, h) = (median(&mut ours), median(&mut hand));
    table.push_str(&format!(
        "| median | {a:.1} s | {h:.1} s | {:.2} |\n",
        a / h
    ));
    Ok(table)
}

/// The events `ctl events --json` wrote so far: (at_unix_ms, kind, node).
fn events_in(file: &Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| {
            (
                e["at_unix_ms"].as_u64().unwrap_or(0),
                e["kind"].as_str().unwrap_or("").to_string(),
                e["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn heal_bench(kills: usize, kills_only: bool) -> anyhow::Result<HealFigures> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut lab = apiary_tests::LabCluster::new(
        "benchheal",
        4,
        "\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\n",
    );
    lab.start();
    let healthy = |lab: &apiary_tests::LabCluster| {
        eventually("the database healthy", Duration::from_secs(600), || {
            let s = lab.status()?;
            (s["database"]["healthy"] == true).then_some(())
        })
    };
    healthy(&lab);
    let events_file = lab.dir.path().join("events.jsonl");
    let mut events = Command::new(bin("ctl"))
        .arg("--config")
        .arg(lab.admin_conf())
        .args(["events", "--json"])
        .stdout(std::fs::File::create(&events_file)?)
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let ctl = |args: &[&str]| -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = lab.ctl(args);
        anyhow::ensure!(
            out.status.success(),
            "ctl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(start.elapsed().as_secs_f64())
    };
    let (mut grow, mut shrink, mut reboot_total) = (0.0, 0.0, 0.0);
    let mut reboot_phases = Vec::new();
    if !kills_only {
        grow = ctl(&["scale", "hosts=8", "--wait"])?;
        eprintln!("hosts 4 -> 8: {grow:.1} s");
        shrink = ctl(&["scale", "hosts=4", "--wait"])?;
        eprintln!("hosts 8 -> 4: {shrink:.1} s");
        healthy(&lab);

        let reboot_from = unix_ms_now();
        reboot_total = ctl(&["hosts", "reboot"])?;
        eprintln!("rolling reboot of 4 hosts: {reboot_total:.1} s");
        let seen = events_in(&events_file);
        let mut from = reboot_from;
        for (at, _, node) in seen
            .iter()
            .filter(|(at, kind, _)| *at >= reboot_from && kind == "host_rebooted")
        {
            let first = |kind: &str| {
                seen.iter()
                    .find(|(t, k, n)| *t >= from && *t <= *at && k == kind && n == node)
                    .map(|(t, _, _)| *t)
            };
            let down = first("node_down").unwrap_or(from);
            let back = first("node_connected").unwrap_or(down);
            let s = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
            reboot_phases.push((node.clone(), s(from, down), s(down, back), s(back, *at)));
            from = *at;
        }
    }
    let mut to_event_ms = Vec::new();
    let kills_result = (|| -> anyhow::Result<()> {
        for i in 0..kills {
            let host = lab.hosts[i % lab.hosts.len()].clone();
            let socket = lab
                .node(&host)
                .and_then(|n| n["docker_socket"].as_str().map(str::to_string))
                .ok_or_else(|| anyhow::anyhow!("{host} has no docker_socket"))?;
            let docker = format!("unix://{socket}");
            let server = lab
                .node(&host)
                .and_then(|n| n["database_server"].as_str().map(str::to_string))
                .unwrap_or_default();
            let (ok, container) = apiary_tests::sh(&[
                "docker",
                "-H",
                &docker,
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.swarm.service.name={server}"),
            ]);
            let container = container.lines().next().unwrap_or("").to_string();
            anyhow::ensure!(
                ok && !container.is_empty(),
                "no container of {server} on {host}"
            );
            let killed_at = unix_ms_now();
            anyhow::ensure!(apiary_tests::sh(&["docker", "-H", &docker, "kill", &container]).0);
            let at = eventually("database_server_failed", Duration::from_secs(30), || {
                events_in(&events_file)
                    .into_iter()
                    .find(|(t, k, n)| {
                        *t >= killed_at && k == "database_server_failed" && *n == host
                    })
                    .map(|(t, _, _)| t)
            });
            to_event_ms.push(at.saturating_sub(killed_at));
            eprintln!(
                "kill {} on {host}: event after {} ms",
                i + 1,
                at.saturating_sub(killed_at)
            );
            // Swarm restarts it after its 10 s delay; the next kill waits
            // for that, then for a health round after it (the status from
            // before the kill said healthy too).
            eventually("database_server_restarted", Duration::from_secs(60), || {
                events_in(&events_file)
                    .into_iter()
                    .find(|(t, k, n)| *t >= at && k == "database_server_restarted" && *n == host)
            });
            std::thread::sleep(Duration::from_secs(3));
            healthy(&lab);
        }
        Ok(())
    })();
    if let Err(e) = kills_result {
        let log = lab.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("coordinator log, last lines:");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        return Err(e);
    }
    let _ = events.kill();
    let _ = events.wait();
    lab.stop();
    let out = lab.teardown();
    anyhow::ensure!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(HealFigures {
        grow,
        shrink,
        reboot_total,
        reboot_phases,
        to_event_ms,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Writes an executable aside and renames it over `path`.
fn install_build(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes)?;
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

fn recover_bench(rounds: usize) -> anyhow::Result<String> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir()?;
    let build = tmp.path().join("agent");
    let source = std::fs::read(bin("agent"))?;
    install_build(&build, &source)?;
    let mut lab = apiary_tests::LabCluster::new(
        "benchrecover",
        4,
        "\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\n",
    );
    let config = std::fs::read_to_string(&lab.config)?.replace(
        &bin("agent").display().to_string(),
        &build.display().to_string(),
    );
    std::fs::write(&lab.config, config)?;
    lab.start();
    let all_ready = |lab: &apiary_tests::LabCluster| {
        eventually("every host ready", Duration::from_secs(600), || {
            let s = lab.status()?;
            let nodes = s["nodes"].as_array()?;
            (nodes.len() == 4 && nodes.iter().all(|n| n["state"] == "ready")).then_some(())
        })
    };
    eventually("the database healthy", Duration::from_secs(900), || {
        let s = lab.status()?;
        (s["database"]["healthy"] == true).then_some(())
    });
    let base = apiary_api::version::current().to_string();
    let (mut upgrade_total, mut upgrade_host, mut by_hand_total, mut by_hand_host) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // apiary: the whole rollout, and each host's "back in" from its step.
        let mut bytes = source.clone();
        apiary_api::version::restamp(&mut bytes, &format!("{base}-bench.{round}"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        install_build(&build, &bytes)?;
        let start = Instant::now();
        let out = lab.ctl(&["hosts", "upgrade", "--json"]);
        anyhow::ensure!(
            out.status.success(),
            "ctl hosts upgrade: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        upgrade_total.push(start.elapsed().as_secs_f64());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for step in report["steps"].as_array().into_iter().flatten() {
            if let Some(secs) = step
                .as_str()
                .and_then(|s| s.rsplit_once(" in "))
                .and_then(|(_, t)| t.trim_end_matches(" s").parse::<f64>().ok())
            {
                upgrade_host.push(secs);
            }
        }
        // By hand: each agent stopped and started again, one at a time,
        // each waited for until ready.
        let start = Instant::now();
        for host in lab.hosts.clone() {
            let host_start = Instant::now();
            let pid = lab
                .pid(&host, "agent")
                .ok_or_else(|| anyhow::anyhow!("no agent pid for {host}"))?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            eventually("the agent restarted", Duration::from_secs(60), || {
                (lab.pid(&host, "agent").is_some_and(|p| p != pid)).then_some(())
            });
            eventually("the agent ready again", Duration::from_secs(60), || {
                let n = lab.node(&host)?;
                (n["state"] == "ready"
                    && n["last_seen_unix_ms"].as_u64()? > unix_ms_now().saturating_sub(500))
                .then_some(())
            });
            by_hand_host.push(host_start.elapsed().as_secs_f64());
        }
        by_hand_total.push(start.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: upgrade {:.1} s, by hand {:.1} s",
            upgrade_total[round], by_hand_total[round]
        );
    }

    // Backup and restore, beside tar of the same files.
    let coordinator = |args: &[&str]| -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = Command::new(bin("coordinator")).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "coordinator {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(start.elapsed().as_secs_f64())
    };
    let state = lab.state.display().to_string();
    let pass = tmp.path().join("passphrase");
    std::fs::write(&pass, "bench passphrase")?;
    let pass = pass.display().to_string();
    let (mut backup, mut sealed, mut tar, mut restore, mut back_restored, mut back_restart) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut backup_bytes, mut tar_bytes) = (0u64, 0u64);
    for round in 0..rounds {
        let plain = tmp.path().join(format!("plain-{round}.backup"));
        let enc = tmp.path().join(format!("sealed-{round}.backup"));
        backup.push(coordinator(&[
            "backup",
            "--state-dir",
            &state,
            "--out",
            &plain.display().to_string(),
        ])?);
        sealed.push(coordinator(&[
            "backup",
            "--state-dir",
            &state,
            "--out",
            &enc.display().to_string(),
            "--passphrase-file",
            &pass,
        ])?);
        backup_bytes = std::fs::metadata(&plain)?.len();
        // tar of what the backup holds (the lab's hosts left out), store
        // included: a copy taken under a running store is not consistent,
        // which is why the backup reads it through the running coordinator.
        let tarball = tmp.path().join(format!("state-{round}.tar.gz"));
        let start = Instant::now();
        let ok = Command::new("tar")
            .arg("czf")
            .arg(&tarball)
            .arg("--exclude=./lab")
            .arg("-C")
            .arg(&lab.state)
            .arg(".")
            .status()?
            .success();
        anyhow::ensure!(ok, "tar failed");
        tar.push(start.elapsed().as_secs_f64());
        tar_bytes = std::fs::metadata(&tarball)?.len();

        // The coordinator lost: restored into a new directory, served.
        lab.kill_coordinator();
        let restored = tmp.path().join(format!("restored-{round}"));
        restore.push(coordinator(&[
            "restore",
            &enc.display().to_string(),
            "--state-dir",
            &restored.display().to_string(),
            "--passphrase-file",
            &pass,
        ])?);
        // The hosts' disks (other machines) where the new directory's lab looks.
        let hosts_dir = std::fs::canonicalize(lab.state.join("lab"))?;
        std::os::unix::fs::symlink(&hosts_dir, restored.join("lab"))?;
        lab.state = restored;
        let start = Instant::now();
        lab.start();
        all_ready(&lab);
        back_restored.push(start.elapsed().as_secs_f64());

        // The floor for "agents back": a plain restart on its own state
        // after the same time away as the restore took (agents back off
        // while nothing answers, so the time away counts in both).
        lab.kill_coordinator();
        std::thread::sleep(Duration::from_secs_f64(restore[round]));
        let start = Instant::now();
        lab.start();
        all_ready(&lab);
        back_restart.push(start.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: backup {:.2} s, restore {:.2} s, agents back {:.1} s (restart {:.1} s)",
            backup[round], restore[round], back_restored[round], back_restart[round]
        );
    }
    lab.stop();
    let (ut, uh, bt, bh) = (
        median(upgrade_total),
        median(upgrade_host),
        median(by_hand_total),
        median(by_hand_host),
    );
    let (b, s, t, r, ar, rs) = (
        median(backup),
        median(sealed),
        median(tar),
        median(restore),
        median(back_restored),
        median(back_restart),
    );
    Ok(format!(
        "| step ({rounds} rounds, medians) | apiary | baseline | apiary / baseline |\n|---|---:|---:|---:|\n\
         | 4 agents upgraded, one at a time (`ctl hosts upgrade` / each agent restarted by hand and waited for) | {ut:.1} s | {bt:.1} s | {:.2} |\n\
         | per host | {uh:.1} s | {bh:.1} s | {:.2} |\n\
         | backup, online (`coordinator backup` / `tar czf` of the same files) | {b:.2} s | {t:.2} s | {:.2} |\n\
         | backup, encrypted (scrypt passphrase) | {s:.2} s | | |\n\
         | backup size | {} KiB | {} KiB (tar.gz) | {:.2} |\n\
         | `coordinator restore` (encrypted) | {r:.2} s | | |\n\
         | serve to every agent back: restored / restarted on its own state after as long away | {ar:.1} s | {rs:.1} s | {:.2} |\n",
        ut / bt,
        uh / bh,
        b / t,
        backup_bytes / 1024,
        tar_bytes / 1024,
        backup_bytes as f64 / tar_bytes.max(1) as f64,
        ar / rs,
    ))
}

/// One `coordinator up` on a fresh simulated account: its phases (from its
/// `phases:` line) and the wall time of the command; torn down after.
fn up_once(images: &[std::path::PathBuf]) -> anyhow::Result<(Vec<(String, f64)>, f64)> {
    use apiary_tests::simworld::LaptopWorld;
    let dir = tempfile::tempdir()?;
    let world = LaptopWorld::start(&dir.path().join("droplets"), images.to_vec());
    let spec = dir.path().join("cluster.toml");
    std::fs::write(&spec, world.spec("benchup", 4))?;
    let laptop = dir.path().join("laptop");
    let start = Instant::now();
    let out = LaptopWorld::up(&spec, &laptop, &["--timeout", "15m"]).output()?;
    let wall = start.elapsed().as_secs_f64();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "coordinator up: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phases = said
        .lines()
        .find_map(|l| l.strip_prefix("phases: "))
        .unwrap_or_default()
        .split(", ")
        .filter_map(|p| {
            let (name, secs) = p.rsplit_once(' ')?.0.rsplit_once(' ')?;
            Some((name.to_string(), secs.parse().ok()?))
        })
        .collect();
    let torn = LaptopWorld::teardown(&spec, &laptop).output()?;
    anyhow::ensure!(torn.status.success(), "teardown failed");
    world.stop();
    Ok((phases, wall))
}

/// The baseline: the same cluster from a coordinator already inside the VPC
/// (`serve` in the root namespace, the simulator's VPC mode): serve's start
/// to each milestone in `ctl status`.
fn in_vpc_once(images: &[std::path::PathBuf]) -> anyhow::Result<Vec<(String, f64)>> {
    use apiary_tests::simworld::TOKEN;
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(apiary_digitalocean::fake::FakeServer::start(
        Default::default(),
    ))?;
    let sim = apiary_tests::dosim::DropletSim::new(
        &dir.path().join("droplets"),
        std::net::Ipv4Addr::new(10, 231, 0, 1),
        24,
    )
    .map_err(|e| anyhow::anyhow!(e))?
    .with_engine(images.to_vec());
    sim.follow(fake.api().clone());
    let (port, artifacts) = (free_port(), free_port());
    let spec = dir.path().join("cluster.toml");
    std::fs::write(
        &spec,
        format!(
            "[cluster]\nname = \"benchvpc\"\n\n[coordinator]\nlisten = \"10.231.0.1:{port}\"\nadvertise = \"10.231.0.1:{port}\"\nartifacts_listen = \"10.231.0.1:{artifacts}\"\nheartbeat_interval = \"1s\"\n\n[provider]\nkind = \"digitalocean\"\nhosts = 4\n\n[digitalocean]\napi_url = \"{}\"\nregion = \"nyc3\"\npoll_interval = \"100ms\"\nvpc_ip_range = \"10.231.0.0/24\"\nfirewall = true\n\n[swarm]\nchecks_interval = \"2s\"\n\n[database]\nkind = \"etcd\"\nimage = \"lab/etcd:1\"\nservers = 3\n",
            fake.url()
        ),
    )?;
    let state = dir.path().join("state");
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["serve", "--config"])
        .arg(&spec)
        .arg("--state-dir")
        .arg(&state)
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN);
    let start = Instant::now();
    let serve = Proc::spawn(cmd, &dir.path().join("serve.log"));
    let admin = state.join("admin.conf");
    let mut seen: Vec<(String, f64)> = Vec::new();
    let names = ["enrollment", "database", "swarm", "overlay"];
    eventually(
        "the in-VPC cluster healthy",
        Duration::from_secs(900),
        || {
            let out = apiary_tests::ctl_with(&admin, &["status", "--json"]);
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = s["nodes"].as_array()?;
            let all =
                |f: &dyn Fn(&serde_json::Value) -> bool| nodes.len() == 4 && nodes.iter().all(f);
            let met = [
                all(&|n| n["state"] == "ready"),
                s["database"]["healthy"] == true,
                all(&|n| n["swarm_status"] == "ready"),
                all(&|n| n["overlay_attached"] == true),
            ];
            for (name, ok) in names.iter().zip(met) {
                if ok && !seen.iter().any(|(n, _)| n == name) {
                    seen.push((name.to_string(), start.elapsed().as_secs_f64()));
                }
            }
            (seen.len() == names.len()).then_some(())
        },
    );
    drop(serve);
    let _ = Command::new(bin("coordinator"))
        .args(["teardown", "--config"])
        .arg(&spec)
        .arg("--state-dir")
        .arg(&state)
        .env("DIGITALOCEAN_ACCESS_TOKEN", TOKEN)
        .output()?;
    sim.teardown();
    rt.block_on(fake.shutdown());
    Ok(seen)
}

fn up_bench(runs: usize) -> anyhow::Result<String> {
    let _serial = apiary_tests::LAB_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let images_dir = tempfile::tempdir()?;
    let images = apiary_tests::simworld::images(images_dir.path());
    let mut up: Vec<(Vec<(String, f64)>, f64)> = Vec::new();
    let mut vpc: Vec<Vec<(String, f64)>> = Vec::new();
    for run in 0..runs {
        let (phases, wall) = up_once(&images)?;
        eprintln!("run {run}: coordinator up {wall:.1} s: {phases:?}");
        up.push((phases, wall));
        let seen = in_vpc_once(&images)?;
        eprintln!("run {run}: in the VPC: {seen:?}");
        vpc.push(seen);
    }
    let of = |phases: &[(String, f64)], name: &str| {
        phases
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, s)| *s)
    };
    // The laptop flow's milestones are counted from when its coordinator
    // answered; the command's own time to there is the sum of the steps
    // before.
    let steps = ["preflight", "api", "boot", "install", "coordinator"];
    let before = |p: &[(String, f64)]| steps.iter().map(|s| of(p, s)).sum::<f64>();
    let mut out = format!(
        "| phase ({runs} runs, medians) | `coordinator up` from the laptop | coordinator already in the VPC (`serve`) |\n|---|---:|---:|\n"
    );
    for s in steps {
        out.push_str(&format!(
            "| {s} | {:.1} s | |\n",
            median(up.iter().map(|(p, _)| of(p, s)).collect())
        ));
    }
    for m in ["enrollment", "database", "swarm", "overlay"] {
        out.push_str(&format!(
            "| to {m} (from the command) | {:.1} s | {:.1} s |\n",
            median(up.iter().map(|(p, _)| before(p) + of(p, m)).collect()),
            median(vpc.iter().map(|p| of(p, m)).collect())
        ));
    }
    let total_up = median(up.iter().map(|(_, w)| *w).collect());
    let total_vpc = median(
        vpc.iter()
            .map(|p| {
                ["enrollment", "database", "swarm", "overlay"]
                    .iter()
                    .map(|m| of(p, m))
                    .fold(0.0, f64::max)
            })
            .collect(),
    );
    out.push_str(&format!(
        "| **the command to everything healthy** | **{total_up:.1} s** | **{total_vpc:.1} s** |\n\nratio (laptop / in the VPC): {:.2}\n",
        total_up / total_vpc.max(0.001)
    ));
    Ok(out)
}

fn heal_table(f: &HealFigures) -> String {
    let mut out = format!(
        "| step | seconds |\n|---|---:|\n| `ctl scale hosts=8 --wait` (4 → 8) | {:.1} |\n| `ctl scale hosts=4 --wait` (8 → 4) | {:.1} |\n| `ctl hosts reboot` (4 hosts, one at a time) | {:.1} |\n\n",
        f.grow, f.shrink, f.reboot_total
    );
    out.push_str("| host | drained and power-cycled (agent gone) | → agent connected again | → host config ok, Swarm ready, database healthy, active |\n|---|---:|---:|---:|\n");
    for (host, a, b, c) in &f.reboot_phases {
        out.push_str(&format!("| {host} | {a:.1} s | {b:.1} s | {c:.1} s |\n"));
    }
    let mut ms = f.to_event_ms.clone();
    ms.sort_unstable();
    if !ms.is_empty() {
        out.push_str(&format!(
            "\nkill of a database server's container → `database_server_failed`: {} kills, p50 {} ms, max {} ms\n",
            ms.len(),
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        ));
    }
    out
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Clock ticks per second, the unit of CPU times in /proc/PID/stat.
fn ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

struct ProcStat {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_ticks: u64,
}

fn proc_stat(pid: i32) -> ProcStat {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ProcStat {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: ticks,
    }
}

async fn agents(n: usize, measure: Duration, heartbeat: Duration) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"bench\"\n[coordinator]\nheartbeat_interval = \"{}ms\"\n[provider]\nkind = \"manual\"\n",
            heartbeat.as_millis()
        ),
    )?;
    let state = dir.path().join("state");
    let mut cmd = Command::new(bin("coordinator"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    cmd.env("RUST_LOG", "warn");
    let coordinator = Proc::spawn(cmd, &dir.path().join("coordinator.log"));
    eventually("coordinator up", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let token = token(&state)?;
    let endpoint = format!("127.0.0.1:{port}");

    // Enrollment: 64 at a time, each over its own pinned TLS connection, as real agents do.
    let parsed: JoinToken = token.parse()?;
    let enroll_tls = enrollment_client_config(parsed.ca_digest)?;
    let sem = Arc::new(Semaphore::new(64));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (endpoint, token, tls) = (endpoint.clone(), token.clone(), enroll_tls.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let name = format!("sim-{i:05}");
            let (key, csr) = new_key_and_csr(&name)?;
            let channel = dial::channel(&endpoint, COORDINATOR_SERVER_NAME, tls)?;
            let resp = EnrollmentClient::new(channel)
                .enroll(EnrollRequest {
                    token,
                    node_name: name,
                    csr_der: csr,
                })
                .await?
                .into_inner();
            anyhow::Ok(Identity {
                key_pem: key.serialize_pem(),
                cert_der: resp.cert_der,
                ca_der: resp.ca_der,
            })
        }));
    }
    let mut identities = Vec::with_capacity(n);
    for t in tasks {
        identities.push(t.await??);
    }
    let enroll_rate = n as f64 / start.elapsed().as_secs_f64();

    // Sessions: one connection and stream per agent.
    let rtts = Arc::new(Mutex::new(Vec::<f64>::new()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let connect_start = Instant::now();
    let sem = Arc::new(Semaphore::new(128));
    for id in identities {
        let permit = sem.clone().acquire_owned().await?;
        let (endpoint, rtts, measuring, connected) = (
            endpoint.clone(),
            rtts.clone(),
            measuring.clone(),
            connected.clone(),
        );
        tokio::spawn(async move {
            let tls = mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem)?;
            let channel = dial::channel(&endpoint, COORDINATOR_SERVER_NAME, tls)?;
            let (tx, rx) = mpsc::channel(4);
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Hello(Hello {
                    agent_version: apiary_api::version::current().into(),
                    facts: Some(Facts::default()),
                    ..Default::default()
                })),
            })
            .await?;
            let mut inbound = AgentApiClient::new(channel)
                .session(ReceiverStream::new(rx))
                .await?
                .into_inner();
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            // Random phase, as real agents started at different times would have.
            let phase = Duration::from_millis(rand_ms(heartbeat.as_millis() as u64));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
            let mut sent: Option<(u64, Instant)> = None;
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        seq += 1;
                        sent = Some((seq, Instant::now()));
                        tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat { seq, last_rtt_us: 0 })) }).await?;
                    }
                    msg = inbound.message() => match msg? {
                        Some(m) => if let Some(coordinator_message::Msg::HeartbeatAck(ack)) = m.msg
                            && let Some((s, at)) = sent
                            && s == ack.seq
                            && measuring.load(Ordering::Relaxed)
                        {
                            rtts.lock().await.push(at.elapsed().as_secs_f64() * 1000.0);
                        },
                        None => break,
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while connected.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if connect_start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "only {} of {n} agents connected",
                connected.load(Ordering::Relaxed)
            );
        }
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let before = proc_stat(coordinator.pid());
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let after = proc_stat(coordinator.pid());
    let ticks_per_sec = ticks_per_sec();
    let cpu =
        (after.cpu_ticks - before.cpu_ticks) as f64 / ticks_per_sec / t0.elapsed().as_secs_f64()
            * 100.0;
    let mut samples = rtts.lock().await.clone();
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(format!(
        "| {n} | {enroll_rate:.0} | {connect_secs:.1} | {:.2} | {:.2} | {} | {} ({}) | {cpu:.1} |",
        pct(0.50),
        pct(0.99),
        samples.len(),
        after.rss_kib / 1024,
        after.hwm_kib / 1024
    ))
}

fn rand_ms(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max);
    h.finish() % max.max(1)
}

fn token(state: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin("coordinator"))
        .args(["token", "--state-dir"])
        .arg(state)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "coordinator token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
