//! Brings up an N-host lab and prints how long each phase took, then tears it down.
//!
//! ```text
//! cargo run -p apiary-lab --example lab_bench -- 4            # up, time, down
//! cargo run -p apiary-lab --example lab_bench -- 4 --keep     # leave it up (cluster "bench")
//! cargo run -p apiary-lab --example lab_bench -- 0 --down     # tear a kept one down
//! ```
//! Needs root. State in /tmp/apiary-lab-bench.

use std::time::Instant;

use apiary_lab::{HostPlan, Lab, LabSpec};

/// Resident memory of the lab's processes (dockerd, containerd: their command
/// lines name the lab's run directory), in MB, and how many there are.
fn lab_rss_mb(lab: &Lab) -> (f64, usize) {
    let marker = format!("{}/", lab.run_dir().display());
    let mut kb = 0.0;
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = e.path();
        let cmd = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(&marker)
        {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(v) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
        {
            kb += v;
            n += 1;
        }
    }
    (kb / 1024.0, n)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let keep = args.iter().any(|a| a == "--keep");
    let down = args.iter().any(|a| a == "--down");
    let hosts = (0..n)
        .map(|i| {
            if i == 0 {
                "queenbee".to_string()
            } else {
                format!("workerbee-{i}")
            }
        })
        .collect();
    let lab = Lab::new(LabSpec {
        cluster: "bench".into(),
        hosts,
        state_dir: "/tmp/apiary-lab-bench".into(),
    })?;
    let l = lab.clone();
    let _lock = tokio::task::spawn_blocking(move || l.lock()).await??;
    if down {
        println!("{}", lab.teardown().await?);
        return Ok(());
    }
    let t0 = Instant::now();
    let t = Instant::now();
    lab.ensure_network().await?;
    println!("network: {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let ups = futures::future::join_all(lab.hosts().iter().map(|h| lab.ensure_host(h))).await;
    for u in ups {
        u?;
    }
    println!("engines up ({n} hosts): {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let archive = lab.busybox_archive()?;
    println!("image build (or cache): {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let all: Vec<&HostPlan> = lab.hosts().iter().collect();
    lab.load_image(&all, &archive).await?;
    println!(
        "image load ({n} engines, parallel): {:.2}s",
        t.elapsed().as_secs_f64()
    );
    println!("total: {:.2}s", t0.elapsed().as_secs_f64());
    let (mb, procs) = lab_rss_mb(&lab);
    println!("lab processes: {procs}, RSS sum {mb:.0} MB (shared pages counted per process)");
    if !keep {
        let t = Instant::now();
        let report = lab.teardown().await?;
        println!("teardown: {:.2}s", t.elapsed().as_secs_f64());
        println!("{report}");
    }
    Ok(())
}
