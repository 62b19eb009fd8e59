//! Running targets: one execution with its panic caught and its time
//! watched ([`execute`], [`Watchdog`]), a campaign of mutated executions
//! ([`fuzz`]), and the corpus on disk ([`load_dir`], [`save_crash`]).

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::coverage::CoverageMap;
use crate::mutate::Mutator;
use crate::targets::Target;

/// What went wrong in one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A panic (a crash for a fuzzer): its message and where it happened.
    Panic(String),
    /// The execution ran longer than the hang bound.
    Hang(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Hang(d) => write!(f, "hang: ran {d:?}"),
        }
    }
}

/// Panics seen during executions: from the executing thread (its id), or
/// from a helper thread (`None`: a target's server or writer thread),
/// which counts for whichever execution looks next.
static PANICS: Mutex<Vec<(Option<ThreadId>, String)>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

thread_local! {
    /// Whether this thread is inside [`execute`] now.
    static EXECUTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this thread ever ran [`execute`] (its panics outside one
    /// are its own: a failed test assertion, for instance).
    static WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records panics during executions instead of printing them (a broken
/// target panics thousands of times a second); any other panic goes to
/// the hook that was there before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let executing = EXECUTING.with(|e| e.get());
            if !executing && WORKER.with(|w| w.get()) {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed").to_string();
            let who = executing.then(|| thread.id());
            let caller = project_frame(&std::backtrace::Backtrace::force_capture().to_string());
            lock(&PANICS).push((who, format!("{message} at {at}{caller} (thread {name})")));
        }));
    });
}

/// The innermost frame of apiary's own code (not this crate's) in a
/// backtrace: where a panic inside std or a dependency was called from.
fn project_frame(backtrace: &str) -> String {
    let lines: Vec<&str> = backtrace.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        let Some((_, symbol)) = l.split_once(": ") else {
            continue;
        };
        if symbol.starts_with("apiary_") && !symbol.starts_with("apiary_fuzz") {
            let at = lines
                .get(i + 1)
                .and_then(|n| n.strip_prefix("at "))
                .map(|a| format!(" {a}"))
                .unwrap_or_default();
            return format!(", called from {symbol}{at}");
        }
    }
    String::new()
}

/// The panics that count for this thread's execution.
fn take_panics() -> Vec<String> {
    let me = std::thread::current().id();
    let mut all = lock(&PANICS);
    let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut *all)
        .into_iter()
        .partition(|(who, _)| who.is_none_or(|w| w == me));
    *all = others;
    mine.into_iter().map(|(_, m)| m).collect()
}

/// The execution each thread has in flight, for the watchdog.
struct Inflight {
    started: Instant,
    target: &'static str,
    input: Vec<u8>,
}

static INFLIGHT: Mutex<Option<HashMap<ThreadId, Inflight>>> = Mutex::new(None);

/// CPU time this thread has used (user and system).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(
                    tv.tv_sec().max(0) as u64,
                    (tv.tv_usec().max(0) as u32) * 1000,
                )
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or_default()
}

/// Runs `target` on `input` on this thread: `Ok(CPU time taken)`, or
/// what went wrong. An execution that finished but used more than
/// `hang_after` of CPU, or ten times that in wall-clock time, is a hang:
/// CPU time, so that a machine busy with other work does not make a slow
/// execution look like a hang.
pub fn execute(target: &Target, input: &[u8], hang_after: Duration) -> Result<Duration, Failure> {
    install_hook();
    let me = std::thread::current().id();
    let started = Instant::now();
    {
        let mut all = lock(&INFLIGHT);
        let slot = all
            .get_or_insert_with(HashMap::new)
            .entry(me)
            .or_insert_with(|| Inflight {
                started,
                target: target.name,
                input: Vec::new(),
            });
        slot.started = started;
        slot.target = target.name;
        slot.input.clear();
        slot.input.extend_from_slice(input);
    }
    WORKER.with(|w| w.set(true));
    EXECUTING.with(|e| e.set(true));
    let cpu = thread_cpu();
    let caught = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let cpu = thread_cpu().saturating_sub(cpu);
    EXECUTING.with(|e| e.set(false));
    let wall = started.elapsed();
    if let Some(all) = lock(&INFLIGHT).as_mut() {
        all.remove(&me);
    }
    let mut panics = take_panics();
    if caught.is_err() && panics.is_empty() {
        panics.push("(a panic without a message)".into());
    }
    if !panics.is_empty() {
        return Err(Failure::Panic(panics.join("; ")));
    }
    if cpu > hang_after || wall > hang_after * 10 {
        return Err(Failure::Hang(cpu.max(wall / 10)));
    }
    Ok(cpu)
}

/// An execution the watchdog stopped: still running past the time
/// bound, or the process's resident memory past its bound.
pub struct Hang {
    pub target: &'static str,
    pub input: Vec<u8>,
    /// What the bound was crossed by: "ran 1.2 s", "resident memory ...".
    pub why: String,
}

/// The process's resident memory, from /proc.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Watches every execution in flight; one that runs past `time` (wall
/// clock: give it room for a busy machine), or while the process holds
/// more than `memory` bytes, is a hang. It cannot
/// be interrupted (the target runs on the caller's thread), so `on_hang`
/// reports it and ends the process.
pub struct Watchdog;

impl Watchdog {
    pub fn start(time: Duration, memory: u64, on_hang: fn(Hang) -> !) {
        static STARTED: Once = Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("fuzz-watchdog".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_millis(50));
                        let rss = resident_bytes().unwrap_or(0);
                        let hung = lock(&INFLIGHT).as_ref().and_then(|all| {
                            all.values().find_map(|i| {
                                let ran = i.started.elapsed();
                                let why = if ran > time {
                                    format!("ran {ran:.1?} (bound {time:?})")
                                } else if rss > memory {
                                    format!(
                                        "resident memory {} MiB (bound {} MiB)",
                                        rss >> 20,
                                        memory >> 20
                                    )
                                } else {
                                    return None;
                                };
                                Some(Hang {
                                    target: i.target,
                                    input: i.input.clone(),
                                    why,
                                })
                            })
                        });
                        if let Some(h) = hung {
                            on_hang(h);
                        }
                    }
                });
            if let Err(e) = spawned {
                eprintln!("apiary-fuzz: no watchdog thread ({e}); hangs will not be caught");
            }
        });
    }
}

/// The files of `dir` (sorted by name, dot files skipped), or none.
pub fn load_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|d| (p, d)))
        .collect()
}

/// Where the fuzz crate's directories are: `fuzz/` of the source tree.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A target's seeds: `corpus/<target>/` and `regressions/<target>/`.
pub fn seeds(target: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = load_dir(&fuzz_dir().join("corpus").join(target.name));
    all.extend(load_dir(&fuzz_dir().join("regressions").join(target.name)));
    all
}

/// Environment that makes TLS set-up cheap: the DigitalOcean client loads
/// the system's trust store each time one is made (milliseconds, most of
/// a `do_client` execution); `SSL_CERT_FILE` and `SSL_CERT_DIR` pointed
/// at one throwaway certificate make that free. The fake API is plain
/// HTTP, so nothing is verified with them.
pub fn cheap_tls_env() -> Result<Vec<(&'static str, PathBuf)>, String> {
    let dir = std::env::temp_dir().join("apiary-fuzz-roots");
    let empty = dir.join("dir");
    std::fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
    let file = dir.join("ca.pem");
    if !file.exists() {
        let ca = apiary_certs::ClusterCa::generate("fuzz").map_err(|e| e.to_string())?;
        std::fs::write(&file, ca.cert_pem()).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(vec![("SSL_CERT_FILE", file), ("SSL_CERT_DIR", empty)])
}

/// Short content hash, for file names.
pub fn short_hash(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

/// Writes a failing input to `dir/<target>-<hash>`; its path.
pub fn save_crash(dir: &Path, target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{target}-{}", short_hash(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// An input for a message: hex, cut after `max` bytes.
pub fn hex_preview(input: &[u8], max: usize) -> String {
    let shown = hex::encode(&input[..input.len().min(max)]);
    if input.len() > max {
        format!("{shown}… ({} bytes)", input.len())
    } else {
        shown
    }
}

/// How long and how hard a campaign runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub execs: u64,
    pub time: Duration,
    pub seed: u64,
    pub hang_after: Duration,
    /// Progress lines on stderr every this often (`None`: quiet).
    pub progress: Option<Duration>,
    /// Go on after a panic (each distinct panic site is kept once); a
    /// hang always ends the run.
    pub keep_going: bool,
    /// Skip the inputs the target knows reach a reported finding.
    pub mask_known: bool,
}

/// What a campaign did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub elapsed: Duration,
    pub seeds: usize,
    pub corpus: usize,
    /// Edges reached and counters in the binary, when instrumented.
    pub coverage: Option<(usize, usize)>,
    pub slowest: Duration,
    /// Inputs skipped as reaching a known finding.
    pub masked: u64,
    /// What failed, and on which input: one per panic site.
    pub failures: Vec<(Failure, Vec<u8>)>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Executions of the campaign in progress (for the watchdog's report).
pub static EXECS: AtomicU64 = AtomicU64::new(0);

/// Largest in-memory corpus: past it, new finds replace random entries.
const MAX_CORPUS: usize = 20_000;

/// Fuzzes `target` from its seeds until `opts` says stop or an input
/// fails; the failing input is in the report.
pub fn fuzz(target: &Target, opts: &Options) -> Report {
    let started = Instant::now();
    let mut corpus: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, d)| d).collect();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seeds = corpus.len();
    let mut map = CoverageMap::new();
    let mut report = Report {
        target: target.name,
        execs: 0,
        elapsed: Duration::ZERO,
        seeds,
        corpus: seeds,
        coverage: None,
        slowest: Duration::ZERO,
        masked: 0,
        failures: Vec::new(),
    };
    let mut mutator = Mutator::new(opts.seed, target.dict, target.max_len);
    let mut last_progress = Instant::now();
    let mut i = 0usize;
    while report.execs < opts.execs && started.elapsed() < opts.time {
        // The seeds run once as they are, then mutations of the corpus.
        let input = if i < seeds {
            corpus[i].clone()
        } else {
            let from = mutator.below(corpus.len());
            mutator.mutate(&corpus, from)
        };
        i += 1;
        if opts.mask_known && target.known.is_some_and(|known| known(&input)) {
            report.masked += 1;
            continue;
        }
        if let Some(m) = map.as_mut() {
            m.clear();
        }
        let result = execute(target, &input, opts.hang_after);
        report.execs += 1;
        EXECS.store(report.execs, Ordering::Relaxed);
        match result {
            Ok(took) => report.slowest = report.slowest.max(took),
            Err(f) => {
                let stop = !opts.keep_going || matches!(f, Failure::Hang(_));
                let site = |f: &Failure| match f {
                    Failure::Panic(m) => m.split(" at ").nth(1).map(str::to_string),
                    Failure::Hang(_) => None,
                };
                let new_site = site(&f);
                if new_site.is_none() || report.failures.iter().all(|(g, _)| site(g) != new_site) {
                    report.failures.push((f, input));
                }
                if stop {
                    break;
                }
                continue;
            }
        }
        if let Some(m) = map.as_mut()
            && m.collect() > 0
            && i > seeds
        {
            if corpus.len() < MAX_CORPUS {
                corpus.push(input);
            } else {
                let slot = seeds + mutator.below(MAX_CORPUS - seeds);
                corpus[slot] = input;
            }
        }
        if let Some(every) = opts.progress
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let cov = map
                .as_ref()
                .map(|m| format!(", {} edges", m.edges()))
                .unwrap_or_default();
            eprintln!(
                "  {}: {} execs, {:.0}/s, corpus {}{cov}",
                target.name,
                report.execs,
                report.execs as f64 / secs,
                corpus.len()
            );
        }
    }
    report.elapsed = started.elapsed();
    report.corpus = corpus.len();
    report.coverage = map.as_ref().map(|m| (m.edges(), m.size()));
    report
}
