//! Check-matrix time and its growth with N (root): probe-only lab hosts
//! (network namespaces on the lab's bridges, no Docker engine: 64 engines
//! would not fit this machine), each running the agent's real `Responder`
//! on the cluster ports, then every host probing every other at once with
//! the agent's real `probe_all` and the coordinator's settings (1 s timeout,
//! 32 probes in flight per host), gathered into the coordinator's `Matrix`.
//! What it leaves out is the coordinator's fan-out of the request and the
//! cells over the mTLS sessions (one message each way per host).
//!
//!   cargo bench -p apiary-agent --bench matrix -- 4,8,16,32,64
//!
//! Measurements only: it prints a Markdown table for docs/performance.md.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use apiary_agent::reach::{self, Coverage, Matrix, Member, PortState, Responder, Target};
use apiary_lab::{HostPlan, Lab, LabSpec};

const CLUSTER: &str = "matrixbench";
/// The coordinator's probe timeout and each agent's probes in flight.
const TIMEOUT: Duration = Duration::from_millis(1000);
const CONCURRENCY: usize = 32;
const RUNS: usize = 3;

/// Runs `f` on a thread inside `netns`: sockets made there stay there.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            let fd = File::open(netns)?;
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

fn responder_in(
    rt: &tokio::runtime::Handle,
    h: &HostPlan,
    manager: bool,
) -> anyhow::Result<Responder> {
    let r = in_netns(&h.netns_path(), || {
        let _guard = rt.enter();
        Responder::start(h.private_ip, &reach::cluster_ports(manager))
    })??;
    anyhow::ensure!(
        r.ports()
            .iter()
            .all(|p| matches!(p.state, PortState::Listening(_))),
        "{}: {:?}",
        h.name,
        r.ports()
    );
    Ok(r)
}

async fn probe_from(h: &HostPlan, targets: Vec<Target>) -> anyhow::Result<Vec<reach::Cell>> {
    let (name, ns) = (h.name.clone(), h.netns_path());
    tokio::task::spawn_blocking(move || {
        in_netns(&ns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(reach::probe_all(&name, &targets, TIMEOUT, CONCURRENCY)))
        })
    })
    .await?
    .and_then(|r| Ok(r?))
}

/// One full matrix over `hosts` (the first three are managers): wall time,
/// cells, failing cells.
async fn one_matrix(hosts: &[HostPlan]) -> anyhow::Result<(Duration, usize, usize)> {
    let members: Vec<Member> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Member {
            name: h.name.clone(),
            ip: h.private_ip,
            manager: i < 3,
        })
        .collect();
    let (mut matrix, plan) = Matrix::planned(&members, Coverage::for_cluster(hosts.len()), 0);
    let t = Instant::now();
    let rounds = hosts
        .iter()
        .map(|h| probe_from(h, plan.get(&h.name).cloned().unwrap_or_default()));
    for cells in futures::future::join_all(rounds).await {
        matrix.extend(cells?);
    }
    let took = t.elapsed();
    let failures = matrix.failures();
    if !failures.is_empty() {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for f in &failures {
            let o = f
                .outcome
                .as_ref()
                .map(|o| o.to_string())
                .unwrap_or_default();
            *by.entry(format!("{}/{} {o}", f.port, f.proto)).or_default() += 1;
        }
        eprintln!(
            "{} hosts, failing by port and outcome: {by:?}; first: {:?}",
            hosts.len(),
            failures.first()
        );
    }
    Ok((took, matrix.cells().count(), failures.len()))
}

async fn body(lab: &Lab, counts: &[usize]) -> anyhow::Result<String> {
    let hosts = lab.hosts().to_vec();
    let t = Instant::now();
    lab.ensure_network().await?;
    for h in &hosts {
        lab.ensure_host_network(h).await?;
    }
    eprintln!(
        "{} probe-only hosts up in {:.1} s",
        hosts.len(),
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Handle::current();
    let mut table = String::from(
        "| hosts | cells (N·(N−1)·ports) | full matrix, median of 3 | slowest | failing |\n|---:|---:|---:|---:|---:|\n",
    );
    for &n in counts {
        let subset = &hosts[..n];
        let responders: Vec<Responder> = subset
            .iter()
            .enumerate()
            .map(|(i, h)| responder_in(&rt, h, i < 3))
            .collect::<anyhow::Result<_>>()?;
        let mut times = Vec::new();
        let (mut cells, mut failing) = (0, 0);
        for _ in 0..RUNS {
            let (took, c, f) = one_matrix(subset).await?;
            times.push(took);
            cells = c;
            failing = failing.max(f);
        }
        for r in responders {
            r.stop().await;
        }
        times.sort();
        let line = format!(
            "| {n} | {cells} | {:.0} ms | {:.0} ms | {failing} |\n",
            times[RUNS / 2].as_secs_f64() * 1000.0,
            times[RUNS - 1].as_secs_f64() * 1000.0
        );
        eprint!("{line}");
        table.push_str(&line);
    }
    Ok(table)
}

fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the matrix benchmark needs root (network namespaces)"
    );
    // `cargo bench` passes `--bench`; the host counts are the one other argument.
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .flat_map(|a| {
            a.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect::<Vec<usize>>()
        })
        .collect();
    if counts.is_empty() {
        counts = vec![4, 8, 16, 32, 64];
    }
    counts.sort();
    let max = *counts.last().unwrap_or(&4);
    anyhow::ensure!(max >= 2, "at least 2 hosts");
    let state = tempfile::tempdir()?;
    let lab = Lab::new(LabSpec {
        cluster: CLUSTER.into(),
        hosts: (1..=max).map(|i| format!("probe-{i}")).collect(),
        state_dir: state.path().join("state"),
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _lock = {
            let l = lab.clone();
            tokio::task::spawn_blocking(move || l.lock()).await??
        };
        lab.check_safety()?;
        lab.teardown().await?;
        let result = body(&lab, &counts).await;
        let report = lab.teardown().await;
        let table = result?;
        report?;
        println!("{table}");
        Ok(())
    })
}
