//! `apiary-fuzz`: list the targets, fuzz one or all of them, write the
//! generated seeds, or replay inputs. See fuzz/README.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apiary_fuzz::engine::{self, Hang, Watchdog};
use apiary_fuzz::{Failure, Options, Target};

/// SanitizerCoverage's constructor hands over the counters here (only in
/// a build from `build-coverage.sh`; otherwise nothing calls it).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    apiary_fuzz::coverage::register(start, stop);
}

const USAGE: &str = "usage:
  apiary-fuzz list
  apiary-fuzz run TARGET [--execs N] [--seconds S] [--seed X] [--keep-going] [--no-mask] [--hang-ms MS]
  apiary-fuzz all [--execs N] [--seconds S] [--seed X] [--only T1,T2] [--keep-going] [--no-mask]
  apiary-fuzz repro TARGET FILE...
  apiary-fuzz seeds";

/// Where failing inputs go.
fn crash_dir() -> PathBuf {
    engine::fuzz_dir().join("crashes")
}

static RUNNING: OnceLock<&'static str> = OnceLock::new();

fn on_hang(h: Hang) -> ! {
    let saved = engine::save_crash(&crash_dir(), h.target, &h.input)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"));
    let execs = engine::EXECS.load(Ordering::Relaxed);
    eprintln!(
        "\n{}: HANG after {execs} execs: {}\n  input: {}\n  saved: {saved}",
        h.target,
        h.why,
        engine::hex_preview(&h.input, 256)
    );
    println!(
        "RESULT\t{}\t{execs}\t-\t-\thang ({}), input {saved}",
        RUNNING.get().copied().unwrap_or(h.target),
        h.why
    );
    std::process::exit(1)
}

struct Args {
    execs: u64,
    seconds: f64,
    seed: u64,
    keep_going: bool,
    mask: bool,
    hang_ms: u64,
    only: Option<Vec<String>>,
    rest: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        execs: 1_000_000,
        seconds: 600.0,
        seed: 1,
        keep_going: false,
        mask: true,
        hang_ms: 1000,
        only: None,
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--execs" => {
                a.execs = value("--execs")?
                    .parse()
                    .map_err(|e| format!("--execs: {e}"))?
            }
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--hang-ms" => {
                a.hang_ms = value("--hang-ms")?
                    .parse()
                    .map_err(|e| format!("--hang-ms: {e}"))?
            }
            "--only" => a.only = Some(value("--only")?.split(',').map(str::to_string).collect()),
            "--keep-going" => a.keep_going = true,
            "--no-mask" => a.mask = false,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => a.rest.push(s.to_string()),
        }
    }
    Ok(a)
}

fn target(name: &str) -> Result<&'static Target, String> {
    apiary_fuzz::find(name)
        .ok_or_else(|| format!("no target {name:?}; `apiary-fuzz list` shows them"))
}

/// Runs this command again with the cheap TLS environment, unless it has it.
fn with_cheap_tls() -> Option<ExitCode> {
    if std::env::var_os("SSL_CERT_FILE").is_some() {
        return None;
    }
    let env = engine::cheap_tls_env().ok()?;
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(env)
        .status()
        .ok()?;
    Some(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn run(t: &'static Target, a: &Args) -> ExitCode {
    if let Some(code) = with_cheap_tls() {
        return code;
    }
    let _ = RUNNING.set(t.name);
    // A parser that allocates without bound must not take the machine down.
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, 16 << 30, 16 << 30);
    // CPU time bounds a finished execution; the watchdog, which can only
    // see wall-clock time, allows ten times that on a busy machine.
    Watchdog::start(Duration::from_millis(a.hang_ms * 10), 2 << 30, on_hang);
    let opts = Options {
        execs: a.execs,
        time: Duration::from_secs_f64(a.seconds),
        seed: a.seed,
        hang_after: Duration::from_millis(a.hang_ms),
        progress: Some(Duration::from_secs(30)),
        keep_going: a.keep_going,
        mask_known: a.mask,
    };
    let r = apiary_fuzz::fuzz(t, &opts);
    let coverage = r
        .coverage
        .map(|(e, n)| format!(", {e} edges of {n}"))
        .unwrap_or_else(|| ", blind (no coverage instrumentation)".into());
    let mut found = Vec::new();
    for (f, input) in &r.failures {
        let saved = engine::save_crash(&crash_dir(), t.name, input)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("(not saved: {e})"));
        eprintln!(
            "{}: {f}\n  input: {}\n  saved: {saved}",
            t.name,
            engine::hex_preview(input, 256)
        );
        let kind = match f {
            Failure::Panic(_) => "panic",
            Failure::Hang(_) => "hang",
        };
        found.push(format!("{kind}: {saved}"));
    }
    let mut result = if found.is_empty() {
        "ok".to_string()
    } else {
        found.join("; ")
    };
    if r.masked > 0 {
        result.push_str(&format!(" ({} inputs of known findings skipped)", r.masked));
    }
    let secs = r.elapsed.as_secs_f64();
    eprintln!(
        "{}: {} execs in {secs:.1} s ({:.0}/s), corpus {} → {}{coverage}, slowest {:.1} ms: {result}",
        t.name,
        r.execs,
        r.rate(),
        r.seeds,
        r.corpus,
        r.slowest.as_secs_f64() * 1000.0
    );
    println!(
        "RESULT\t{}\t{}\t{secs:.1}\t{:.0}\t{result}",
        t.name,
        r.execs,
        r.rate()
    );
    if r.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each target in a process of its own, so that a hang or an abort ends
/// that target's run only; a Markdown table of the results on stdout.
fn all(a: &Args, raw: &[String]) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let env = engine::cheap_tls_env()?;
    let mut pass: Vec<String> = Vec::new();
    let mut skip = false;
    for r in raw {
        if skip {
            skip = false;
            continue;
        }
        if r == "--only" {
            skip = true;
            continue;
        }
        pass.push(r.clone());
    }
    let mut failed = false;
    let mut rows = Vec::new();
    for t in apiary_fuzz::ALL {
        if a.only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == t.name))
        {
            continue;
        }
        eprintln!("== {}", t.name);
        let out = std::process::Command::new(&exe)
            .arg("run")
            .arg(t.name)
            .args(&pass)
            .envs(env.clone())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let row = match stdout.lines().find_map(|l| l.strip_prefix("RESULT\t")) {
            Some(line) => {
                let f: Vec<&str> = line.split('\t').collect();
                format!("| {} |", f.join(" | "))
            }
            None => format!("| {} | - | - | - | died: {} |", t.name, out.status),
        };
        failed |= !out.status.success();
        println!("{row}");
        rows.push(row);
    }
    println!("\n| target | executions | seconds | execs/s | result |\n|---|---:|---:|---:|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn repro(t: &'static Target, files: &[String]) -> ExitCode {
    let mut failed = false;
    for f in files {
        let Ok(input) = std::fs::read(Path::new(f)) else {
            eprintln!("{f}: cannot read");
            failed = true;
            continue;
        };
        match apiary_fuzz::execute(t, &input, Duration::from_secs(10)) {
            Ok(took) => eprintln!("{f}: ok in {:.2} ms", took.as_secs_f64() * 1000.0),
            Err(e) => {
                eprintln!("{f}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn seeds() -> Result<ExitCode, String> {
    for (target, name, data) in apiary_fuzz::seeds::all()? {
        let dir = engine::fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let outcome = parse(rest).and_then(|a| match (command.as_str(), a.rest.as_slice()) {
        ("list", []) => {
            for t in apiary_fuzz::ALL {
                println!("{:<20} {}", t.name, t.covers);
            }
            Ok(ExitCode::SUCCESS)
        }
        ("run", [name]) => Ok(run(target(name)?, &a)),
        ("all", []) => all(&a, rest),
        ("repro", [name, files @ ..]) if !files.is_empty() => Ok(repro(target(name)?, files)),
        ("seeds", []) => seeds(),
        _ => Err(USAGE.to_string()),
    });
    outcome.unwrap_or_else(|e| {
        eprintln!("{e}");
        ExitCode::from(64)
    })
}
