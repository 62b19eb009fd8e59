//! The fuzz corpus as regression tests: for every target, each seed in
//! `corpus/<target>/` and each input in `regressions/<target>/` (the
//! crashes found so far), then a fixed number of deterministic mutations
//! of them (less those that reach a finding already in `regressions/`).
//! Any panic, broken property or hang fails the target's test with the
//! input (saved to `fuzz/crashes/`).

use std::time::{Duration, Instant};

use apiary_fuzz::engine::{self, Hang, Watchdog};
use apiary_fuzz::mutate::Mutator;
use apiary_fuzz::{ALL, execute, find};

/// Debug builds on a busy machine: generous, a real hang is far longer.
const HANG: Duration = Duration::from_secs(10);

fn on_hang(h: Hang) -> ! {
    eprintln!(
        "target {}: HANG ({}) on input {}",
        h.target,
        h.why,
        engine::hex_preview(&h.input, 512)
    );
    std::process::exit(101)
}

fn check(name: &str) {
    Watchdog::start(HANG, 4 << 30, on_hang);
    let t = find(name).unwrap_or_else(|| panic!("no target {name}"));
    let started = Instant::now();
    let seeds = engine::seeds(t);
    assert!(
        !seeds.is_empty(),
        "target {name} has no seeds in fuzz/corpus/{name}/"
    );
    let mut failures = Vec::new();
    for (path, data) in &seeds {
        if let Err(f) = execute(t, data, HANG) {
            failures.push(format!("{}: {f}", path.display()));
        }
    }
    let corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, d)| d).collect();
    let mut m = Mutator::new(0x5eed, t.dict, t.max_len);
    for i in 0..t.test_mutations {
        let input = m.mutate(&corpus, i % corpus.len());
        // A finding already reported has its regression input above;
        // its variants (some abort the process) are not run again.
        if t.known.is_some_and(|known| known(&input)) {
            continue;
        }
        if let Err(f) = execute(t, &input, HANG) {
            let saved = engine::save_crash(&engine::fuzz_dir().join("crashes"), name, &input)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("not saved: {e}"));
            failures.push(format!(
                "mutation {i}: {f}\n    input ({saved}): {}",
                engine::hex_preview(&input, 256)
            ));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "target {name} failed ({} inputs):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!(
        "{name}: {} inputs in {:.1} s",
        corpus.len() + t.test_mutations,
        started.elapsed().as_secs_f64()
    );
}

/// Each target is checked in a process of its own: a hang can only be
/// reported by ending the process, and must not take the other targets'
/// results with it. The child also gets a small trust store (`do_client`
/// makes a DigitalOcean client per input, which otherwise loads the
/// system's: see `engine::cheap_tls_env`).
fn check_in_env(name: &str) {
    if std::env::var_os("APIARY_FUZZ_CHILD").is_some() {
        return check(name);
    }
    let env = engine::cheap_tls_env().unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env)
        .env("APIARY_FUZZ_CHILD", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the test again: {e}"));
    let said = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| {
                !l.starts_with("running ") && !l.starts_with("test result") && !l.is_empty()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "target {name} failed ({}):\n{}\n{}",
        out.status,
        said(&out.stdout),
        said(&out.stderr)
    );
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_in_env(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_tested() {
            let tested = [$(stringify!($name)),*];
            let all: Vec<&str> = ALL.iter().map(|t| t.name).collect();
            assert_eq!(all, tested, "targets and tests differ: add the new target here");
        }
    };
}

targets!(
    join_token,
    cluster_toml,
    agent_toml,
    admin_conf,
    csr_sign,
    enroll,
    names,
    tunnel_frames,
    tunnel_relay,
    tunnel_target,
    op_request,
    op_reply,
    coordinator_message,
    agent_message,
    host_config,
    host_files,
    do_models,
    do_client,
    rethinkdb,
    etcd_health,
    etcd_membership,
    docker_network,
    docker_node,
    busybox_output,
    reach_probe,
    ctl_text,
);
