//! Progress of long work (bringing a cluster up): a bar per phase on a
//! terminal, plain timestamped lines otherwise (logs, CI, `--quiet` pipes).
//! Every phase also ends with a structured tracing event (`phase`,
//! `elapsed_ms`) that benchmarks and log shippers read.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

#[derive(Debug, Clone)]
pub struct Progress {
    tty: bool,
    /// `--quiet`: no progress output at all (the `phase done` events remain).
    quiet: bool,
    start: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
}

/// One phase of the work, over `total` items (hosts).
pub struct Phase {
    name: &'static str,
    quiet: bool,
    bar: Option<ProgressBar>,
    start: Instant,
    origin: Instant,
}

impl Progress {
    pub fn new(tty: bool) -> Self {
        Progress {
            tty,
            quiet: false,
            start: Instant::now(),
        }
    }

    /// For `serve`: bars on a terminal, plain lines when not on one or when
    /// logs are JSON (bars would tear the JSON lines), nothing with `--quiet`.
    pub fn for_serve(quiet: bool, json_logs: bool) -> Self {
        let mut p = Progress::default();
        p.tty &= !json_logs;
        p.quiet = quiet;
        p
    }

    pub fn phase(&self, name: &'static str, total: usize) -> Phase {
        let bar = (self.tty && !self.quiet).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<12} [{bar:20}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(name);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Phase {
            name,
            quiet: self.quiet,
            bar,
            start: Instant::now(),
            origin: self.start,
        }
    }
}

impl Phase {
    /// One item done (`host`), with what happened to it.
    pub fn step(&self, host: &str, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{host}: {what}"));
            }
            None if self.quiet => {}
            None => eprintln!(
                "[{:>6.1}s] {:<12} {host}: {what}",
                self.origin.elapsed().as_secs_f64(),
                self.name
            ),
        }
    }

    pub fn finish(self) -> Duration {
        let elapsed = self.start.elapsed();
        match &self.bar {
            Some(bar) => bar.finish_with_message(format!("done in {:.1}s", elapsed.as_secs_f64())),
            None if self.quiet => {}
            None => eprintln!(
                "[{:>6.1}s] {:<12} done in {:.1}s",
                self.origin.elapsed().as_secs_f64(),
                self.name,
                elapsed.as_secs_f64()
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
