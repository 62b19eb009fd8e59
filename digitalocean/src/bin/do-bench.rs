//! Benchmark: reconcile of N droplets against the fake DigitalOcean API with
//! random 429s and 500s; prints API calls made against the minimum, wall
//! time, time spent waiting, and duplicates (must be 0).
//!
//! `cargo run --release -p apiary-digitalocean --features fake --bin do-bench -- [--hosts 100]
//!  [--rate-limit 0.10] [--server-errors 0.05] [--runs 10] [--boot-ms 500] [--poll-ms 500]`

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_digitalocean::client::{RetryPolicy, SystemClock};
use apiary_digitalocean::fake::{FakeOptions, FakeServer, RandomFaults};
use apiary_digitalocean::{
    Client, ClusterTarget, DigitalOceanSpec, HostName, HostSpec, MAX_NAMES_PER_CREATE, TOKEN_VAR,
    TagName, reconcile, teardown,
};

struct Args {
    hosts: usize,
    rate_limit: f64,
    server_errors: f64,
    runs: u64,
    boot: Duration,
    poll: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        hosts: 100,
        rate_limit: 0.10,
        server_errors: 0.05,
        runs: 10,
        boot: Duration::from_millis(500),
        poll: Duration::from_millis(500),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--hosts" => a.hosts = value.parse().map_err(|e| bad(&e))?,
            "--rate-limit" => a.rate_limit = value.parse().map_err(|e| bad(&e))?,
            "--server-errors" => a.server_errors = value.parse().map_err(|e| bad(&e))?,
            "--runs" => a.runs = value.parse().map_err(|e| bad(&e))?,
            "--boot-ms" => a.boot = Duration::from_millis(value.parse().map_err(|e| bad(&e))?),
            "--poll-ms" => a.poll = Duration::from_millis(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

struct Row {
    label: String,
    calls: u64,
    minimum: u64,
    rate_limited: u64,
    server_errors: u64,
    recovered: usize,
    wall: Duration,
    waited: Duration,
    duplicates: usize,
    leaked: usize,
    violations: usize,
}

/// Calls a fault-free reconcile of `hosts` new droplets needs when they are
/// already active at the first poll: list by tag, create the tag, list and
/// create the VPC, one create per ten hosts, one list (200 per page) that
/// sees them active.
fn minimum(hosts: usize) -> u64 {
    let creates = hosts.div_ceil(MAX_NAMES_PER_CREATE) as u64;
    let pages = hosts.div_ceil(200).max(1) as u64;
    1 + 1 + 2 + creates + pages
}

async fn run(args: &Args, label: &str, random: Option<RandomFaults>) -> Result<Row, String> {
    let token = "dop_v1_bench";
    let fake = FakeServer::start(FakeOptions {
        token: Some(token.into()),
        boot_delay: args.boot,
        random,
        ..FakeOptions::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut spec = DigitalOceanSpec::new();
    spec.api_url = Some(fake.url());
    spec.poll_interval = args.poll;
    spec.boot_timeout = Duration::from_secs(120);
    let config = spec
        .validate(|k| (k == TOKEN_VAR).then(|| token.to_owned()))
        .map_err(|e| e.to_string())?;
    let policy = RetryPolicy {
        request_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    let client =
        Client::with_policy(&config, policy, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
    let tag = TagName::parse("apiary-bench")?;
    let user_data = "#cloud-config\n{}\n".to_owned();
    let hosts = (1..=args.hosts)
        .map(|i| {
            Ok(HostSpec {
                name: HostName::parse(&format!("bench-{i:03}")).map_err(|e| e.to_string())?,
                user_data: Some(user_data.clone()),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let target = ClusterTarget::new(&config, tag.clone(), hosts);

    let started = Instant::now();
    let report = reconcile(&client, &target)
        .await
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let stats = client.stats();
    if !report.is_ready() {
        return Err(format!("not ready:\n{report}"));
    }
    let mut seen = HashSet::new();
    let duplicates = fake
        .droplets()
        .iter()
        .filter(|d| !seen.insert(d.name.clone()))
        .count();
    teardown(&client, &tag).await.map_err(|e| e.to_string())?;
    let leaked = fake.droplets().len();
    let violations = fake.violations().len();
    fake.shutdown().await;
    Ok(Row {
        label: label.to_owned(),
        calls: stats.requests,
        minimum: minimum(args.hosts),
        rate_limited: stats.rate_limited,
        server_errors: stats.server_errors + stats.transport_errors,
        recovered: report.recovered.len(),
        wall,
        waited: stats.waited,
        duplicates,
        leaked,
        violations,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("do-bench: {e}");
            return ExitCode::from(64);
        }
    };
    let mut rows = Vec::new();
    match run(&args, "no faults", None).await {
        Ok(r) => rows.push(r),
        Err(e) => {
            eprintln!("do-bench: baseline failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    for seed in 1..=args.runs {
        let faults = RandomFaults {
            rate_limit: args.rate_limit,
            server_error: args.server_errors,
            server_error_after_apply: true,
            seed,
        };
        let label = format!(
            "{:.0}% 429, {:.0}% 500, seed {seed}",
            args.rate_limit * 100.0,
            args.server_errors * 100.0
        );
        match run(&args, &label, Some(faults)).await {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("do-bench: {label}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "reconcile of {} droplets (boot {:?}, poll {:?}), real clock",
        args.hosts, args.boot, args.poll
    );
    println!();
    println!(
        "| run | API calls | minimum | 429s | 5xx/lost | recovered creates | wall | waiting | duplicates | leaked | spec violations |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut bad = false;
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2}s | {:.2}s | {} | {} | {} |",
            r.label,
            r.calls,
            r.minimum,
            r.rate_limited,
            r.server_errors,
            r.recovered,
            r.wall.as_secs_f64(),
            r.waited.as_secs_f64(),
            r.duplicates,
            r.leaked,
            r.violations
        );
        bad |= r.duplicates > 0 || r.leaked > 0 || r.violations > 0;
    }
    let faulty: Vec<&Row> = rows.iter().skip(1).collect();
    if !faulty.is_empty() {
        let n = faulty.len() as f64;
        let sum = |f: &dyn Fn(&Row) -> f64| faulty.iter().map(|r| f(r)).sum::<f64>();
        let max = |f: &dyn Fn(&Row) -> f64| faulty.iter().map(|r| f(r)).fold(0.0, f64::max);
        println!(
            "| mean (max) of {} faulty runs | {:.1} ({}) | {} | {:.1} | {:.1} | {:.1} | {:.2}s ({:.2}s) | {:.2}s | {} | {} | {} |",
            faulty.len(),
            sum(&|r| r.calls as f64) / n,
            max(&|r| r.calls as f64),
            faulty[0].minimum,
            sum(&|r| r.rate_limited as f64) / n,
            sum(&|r| r.server_errors as f64) / n,
            sum(&|r| r.recovered as f64) / n,
            sum(&|r| r.wall.as_secs_f64()) / n,
            max(&|r| r.wall.as_secs_f64()),
            sum(&|r| r.waited.as_secs_f64()) / n,
            sum(&|r| r.duplicates as f64),
            sum(&|r| r.leaked as f64),
            sum(&|r| r.violations as f64),
        );
    }
    println!();
    println!(
        "minimum = list by tag + create tag + list/create VPC + ceil(n/10) creates + one listing that sees all active; \
         calls above it in the fault-free run are polls while droplets boot"
    );
    if bad {
        eprintln!("do-bench: duplicates, leaks or spec violations");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
