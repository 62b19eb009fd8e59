//! Progress of long work (bringing a cluster up). On a terminal: one line per
//! host showing the steps it went through (`h2  engine up → agent started →
//! enrolled, ready → host config ok → swarm manager`) with a spinner while the
//! bring-up runs, and one bar per phase below them. Elsewhere (logs, CI, pipes,
//! `NO_COLOR`) and with `--quiet` on a terminal: plain timestamped lines, one
//! per host event, which `scripts/lab-up` filters. With `--log-format json`
//! the same lines are tracing events (fields `phase`, `node`), so stderr stays
//! one JSON object per line. Every phase also ends with a structured tracing
//! event (`phase`, `elapsed_ms`) that benchmarks and log shippers read.
//!
//! The cluster logic only calls this API ([`Progress::phase`],
//! [`Phase::step`], [`Phase::host`], [`Progress::host`]); it never writes
//! terminal codes itself. Log lines written while bars are drawn go through
//! [`log_writer`], which lifts the bars out of the way so neither tears.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::info;

/// Progress output for one run of long work; clones share it.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    start: Instant,
    /// Bars and host lines: only in [`Mode::Bars`].
    multi: Option<MultiProgress>,
    hosts: Mutex<Vec<HostLine>>,
    /// The bring-up is over: host events are no longer shown.
    done: AtomicBool,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A line per host and a bar per phase, redrawn in place (a terminal).
    Bars,
    /// `[  12.3s] phase        host: what` on stderr.
    Lines,
    /// Each of those lines as a tracing event with `phase` and `node` fields
    /// (JSON logs: a plain line would break the one-object-per-line stream).
    Events,
}

struct HostLine {
    name: String,
    bar: Option<ProgressBar>,
    trail: Vec<String>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("mode", &self.inner.mode)
            .finish()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(Self::terminal())
    }
}

/// The bars of the one terminal this process draws on, for [`log_writer`].
static DRAWING: OnceLock<MultiProgress> = OnceLock::new();

/// A `tracing` writer for stderr that, while progress bars are drawn, prints
/// above them instead of through them.
pub fn log_writer() -> LogWriter {
    LogWriter
}

pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match DRAWING.get() {
            Some(multi) => multi.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One phase of the work, over `total` items (hosts).
pub struct Phase {
    name: &'static str,
    progress: Progress,
    bar: Option<ProgressBar>,
    start: Instant,
}

/// How many of a host's latest steps its line shows (older ones become `…`).
const TRAIL: usize = 4;

impl Progress {
    /// `tty`: draw bars and host lines (on stderr); otherwise plain lines.
    pub fn new(tty: bool) -> Self {
        Self::with_mode(if tty { Mode::Bars } else { Mode::Lines })
    }

    pub fn with_mode(mode: Mode) -> Self {
        let multi = (mode == Mode::Bars).then(|| {
            let multi = DRAWING.get_or_init(MultiProgress::new).clone();
            multi.set_move_cursor(true);
            multi
        });
        Progress {
            inner: Arc::new(Inner {
                mode,
                start: Instant::now(),
                multi,
                hosts: Mutex::new(Vec::new()),
                done: AtomicBool::new(false),
            }),
        }
    }

    /// For `serve`: events when logs are JSON, bars on a terminal, plain
    /// lines elsewhere or with `--quiet`.
    pub fn for_serve(quiet: bool, json_logs: bool) -> Self {
        Self::with_mode(Self::serve_mode(Self::terminal(), quiet, json_logs))
    }

    fn serve_mode(terminal: bool, quiet: bool, json_logs: bool) -> Mode {
        match (json_logs, terminal && !quiet) {
            (true, _) => Mode::Events,
            (false, true) => Mode::Bars,
            (false, false) => Mode::Lines,
        }
    }

    /// stderr is a terminal that may be drawn on (no `NO_COLOR`).
    fn terminal() -> bool {
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    }

    /// Bars are drawn (a terminal, not quiet).
    pub fn is_drawing(&self) -> bool {
        self.inner.multi.is_some()
    }

    /// A phase: a bar during the bring-up on a terminal; after it (a
    /// provider reconciling again later) and elsewhere, timestamped lines.
    pub fn phase(&self, name: &'static str, total: usize) -> Phase {
        let drawing = self
            .inner
            .multi
            .as_ref()
            .filter(|_| !self.inner.done.load(Ordering::Relaxed));
        let bar = drawing.map(|multi| {
            let bar = multi.add(ProgressBar::new(total as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:<12} [{bar:20}] {pos}/{len} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Phase {
            name,
            progress: self.clone(),
            bar,
            start: Instant::now(),
        }
    }

    /// The hosts being brought up, in the order their lines are shown; their
    /// spinners turn until [`Progress::finish`].
    pub fn hosts<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.host_line(name, true);
        }
    }

    /// Something happened to `host` outside any phase (hosts joining by
    /// themselves): its line on a terminal, a timestamped line otherwise.
    pub fn host(&self, host: &str, what: &str) {
        if self.inner.done.load(Ordering::Relaxed) {
            return;
        }
        if self.inner.multi.is_some() {
            self.host_line(host, false);
            self.note(host, what);
        } else {
            self.line("hosts", Some(host), what);
        }
    }

    /// A line that belongs in the output whatever the mode (a result, not
    /// progress): above the bars on a terminal, a log event with JSON logs,
    /// on stderr otherwise.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.inner.multi {
            Some(multi) if !multi.is_hidden() => multi.suspend(|| eprintln!("{}", line.as_ref())),
            _ if self.inner.mode == Mode::Events => info!("{}", line.as_ref()),
            _ => eprintln!("{}", line.as_ref()),
        }
    }

    /// The bring-up is over: host spinners stop (their lines stay), and host
    /// events are no longer shown (logs and `ctl events` carry them).
    pub fn finish(&self) {
        if self.inner.done.swap(true, Ordering::Relaxed) {
            return;
        }
        let done = ProgressStyle::with_template("✓ {prefix:<12} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        for line in self.hosts_lock().iter() {
            if let Some(bar) = &line.bar {
                bar.set_style(done.clone());
                bar.finish();
            }
        }
    }

    fn hosts_lock(&self) -> std::sync::MutexGuard<'_, Vec<HostLine>> {
        // A panic while holding the lock leaves only display state behind.
        self.inner
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `name`'s line if it has none (host lines sit above the phases).
    fn host_line(&self, name: &str, spinning: bool) {
        let Some(multi) = &self.inner.multi else {
            return;
        };
        let mut hosts = self.hosts_lock();
        if hosts.iter().any(|h| h.name == name) {
            return;
        }
        let bar = multi.insert(hosts.len(), ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<12} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name.to_string());
        if spinning {
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        hosts.push(HostLine {
            name: name.to_string(),
            bar: Some(bar),
            trail: Vec::new(),
        });
    }

    /// Adds a step to `host`'s line, if it has one.
    fn note(&self, host: &str, what: &str) {
        if self.inner.done.load(Ordering::Relaxed) {
            return;
        }
        let mut hosts = self.hosts_lock();
        let Some(line) = hosts.iter_mut().find(|h| h.name == host) else {
            return;
        };
        line.trail.push(what.to_string());
        if let Some(bar) = &line.bar {
            bar.set_message(trail(&line.trail));
            bar.tick();
        }
    }

    /// `[  12.3s] phase        host: text`: the form `scripts/lab-up`
    /// filters on; with JSON logs an event with `phase` and `node` fields.
    fn line(&self, phase: &str, host: Option<&str>, text: &str) {
        if self.inner.mode == Mode::Events {
            match host {
                Some(node) => info!(phase, node, "{text}"),
                None => info!(phase, "{text}"),
            }
            return;
        }
        let host = host.map(|h| format!("{h}: ")).unwrap_or_default();
        eprintln!(
            "[{:>6.1}s] {phase:<12} {host}{text}",
            self.inner.start.elapsed().as_secs_f64()
        );
    }
}

/// The latest steps, oldest first, joined by arrows.
fn trail(steps: &[String]) -> String {
    let skip = steps.len().saturating_sub(TRAIL);
    let shown = steps[skip..].join(" → ");
    if skip > 0 {
        format!("… → {shown}")
    } else {
        shown
    }
}

impl Phase {
    /// One item done (`host`, or `all` for every host at once), with what
    /// happened to it; shown on the host's line too.
    pub fn step(&self, host: &str, what: &str) {
        match &self.bar {
            Some(bar) => {
                if host == "all" {
                    bar.set_position(bar.length().unwrap_or(1));
                } else {
                    bar.inc(1);
                }
                bar.set_message(format!("{host}: {what}"));
                self.progress.note(host, what);
            }
            None => self.progress.line(self.name, Some(host), what),
        }
    }

    /// Something happened to `host` in this phase that is not one of its
    /// counted items (the bar does not move).
    pub fn host(&self, host: &str, what: &str) {
        match &self.bar {
            Some(_) => self.progress.note(host, what),
            None => self.progress.line(self.name, Some(host), what),
        }
    }

    pub fn finish(self) -> Duration {
        let elapsed = self.start.elapsed();
        match &self.bar {
            Some(bar) => bar.finish_with_message(format!("done in {:.1}s", elapsed.as_secs_f64())),
            // With JSON logs the `phase done` event below says it.
            None if self.progress.inner.mode == Mode::Events => {}
            None => self.progress.line(
                self.name,
                None,
                &format!("done in {:.1}s", elapsed.as_secs_f64()),
            ),
        }
        info!(
            phase = self.name,
            elapsed_ms = elapsed.as_millis() as u64,
            "phase done"
        );
        elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_line_keeps_its_latest_steps() {
        let steps: Vec<String> = ["engine up", "agent started", "enrolled, ready"]
            .map(String::from)
            .to_vec();
        assert_eq!(trail(&steps), "engine up → agent started → enrolled, ready");
        let mut more = steps.clone();
        more.extend(["host config ok", "swarm manager"].map(String::from));
        assert_eq!(
            trail(&more),
            "… → agent started → enrolled, ready → host config ok → swarm manager"
        );
    }

    #[test]
    fn bars_are_for_the_bring_up_only() {
        // A hidden draw target here (the test's stderr is not a terminal),
        // but the same bookkeeping as on one.
        let p = Progress::new(true);
        p.hosts(["h1"]);
        let phase = p.phase("engines", 1);
        assert!(phase.bar.is_some());
        phase.step("h1", "engine up");
        phase.finish();
        assert_eq!(p.hosts_lock()[0].trail, ["engine up"]);
        p.finish();
        // A provider reconciling later: lines, not a growing stack of bars.
        assert!(p.phase("droplets", 1).bar.is_none());
        p.host("h1", "down");
        assert_eq!(p.hosts_lock()[0].trail, ["engine up"]);
    }

    #[test]
    fn without_a_terminal_nothing_is_drawn() {
        let p = Progress::new(false);
        assert!(!p.is_drawing());
        p.hosts(["h1", "h2"]);
        let phase = p.phase("engines", 2);
        phase.step("h1", "engine up");
        phase.host("h2", "adopted");
        phase.finish();
        p.finish();
        p.host("h1", "down");
        assert!(p.hosts_lock().is_empty());
    }

    #[test]
    fn quiet_means_lines_on_a_terminal_and_json_logs_mean_events() {
        assert_eq!(Progress::serve_mode(true, false, false), Mode::Bars);
        assert_eq!(Progress::serve_mode(true, true, false), Mode::Lines);
        assert_eq!(Progress::serve_mode(false, false, false), Mode::Lines);
        assert_eq!(Progress::serve_mode(false, true, false), Mode::Lines);
        for (terminal, quiet) in [(true, false), (true, true), (false, false)] {
            assert_eq!(Progress::serve_mode(terminal, quiet, true), Mode::Events);
        }
    }
}
