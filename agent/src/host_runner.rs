//! Glue between the session and [`crate::hostconfig`]: keeps the desired host
//! configuration applied across sessions (drift is repaired even while the
//! coordinator is away) and hands each round's report to whichever session is
//! current.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_proto::{ApplyHostConfig, HostConfigReport, ItemReport as WireItem};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::hostconfig::{
    self, HostConfig, HostConfigSpec, HostEffects, HostFacts, ItemReport, Outcome, Round,
    RoundReason,
};

pub struct HostRunner {
    effects: Arc<dyn HostEffects>,
    desired: Mutex<Option<watch::Sender<Arc<HostConfig>>>>,
    /// The command the next round answers (0: none).
    pending_command: Arc<AtomicU64>,
    /// The latest report not yet sent, and a bell for the session.
    outbox: Arc<Mutex<Vec<HostConfigReport>>>,
    pub ready: Arc<Notify>,
}

impl HostRunner {
    pub fn new(effects: Arc<dyn HostEffects>) -> Self {
        HostRunner {
            effects,
            desired: Mutex::new(None),
            pending_command: Arc::default(),
            outbox: Arc::default(),
            ready: Arc::new(Notify::new()),
        }
    }

    /// Reports waiting to be sent (drained).
    pub fn take_reports(&self) -> Vec<HostConfigReport> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push(&self, report: HostConfigReport) {
        push(&self.outbox, &self.ready, report);
    }

    /// Handles the coordinator's command: a dry run is answered at once; a real
    /// apply becomes the configuration the loop keeps applied.
    pub async fn command(&self, id: u64, cmd: ApplyHostConfig, facts: HostFacts) {
        let config = match serde_json::from_str::<HostConfigSpec>(&cmd.spec_json)
            .map_err(|e| e.to_string())
            .and_then(|spec| HostConfig::new(spec).map_err(|e| e.to_string()))
        {
            Ok(c) => Arc::new(c),
            Err(reason) => {
                let item = ItemReport {
                    item: "host configuration".into(),
                    outcome: Outcome::Failed(format!(
                        "the coordinator sent a configuration this agent refuses: {reason}"
                    )),
                    diff: None,
                };
                self.push(wire(
                    id,
                    cmd.dry_run,
                    "refused",
                    &[item],
                    Duration::ZERO,
                    &[],
                ));
                return;
            }
        };
        if cmd.dry_run {
            let effects = self.effects.clone();
            let started = std::time::Instant::now();
            let reports = tokio::task::spawn_blocking(move || {
                hostconfig::apply(&config, effects.as_ref(), &facts, true)
            })
            .await
            .unwrap_or_else(|e| {
                vec![ItemReport {
                    item: "host configuration".into(),
                    outcome: Outcome::Failed(format!("dry run panicked: {e}")),
                    diff: None,
                }]
            });
            self.push(wire(id, true, "dry_run", &reports, started.elapsed(), &[]));
            return;
        }
        self.pending_command.store(id, Ordering::SeqCst);
        let mut desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        match desired.as_ref() {
            Some(tx) => {
                // Same or new spec: either way the loop runs a round now.
                let _ = tx.send(config);
            }
            None => {
                let (tx, rx) = watch::channel(config);
                *desired = Some(tx);
                let interval = Duration::from_millis(cmd.recheck_interval_ms.max(1000));
                let (outbox, ready, pending) = (
                    self.outbox.clone(),
                    self.ready.clone(),
                    self.pending_command.clone(),
                );
                let effects = self.effects.clone();
                info!(
                    interval_ms = interval.as_millis() as u64,
                    "host configuration received; keeping it applied"
                );
                tokio::spawn(hostconfig::keep_applied(
                    rx,
                    effects,
                    Arc::new(facts),
                    interval,
                    Arc::new(Notify::new()),
                    move |round: Round| {
                        let repaired: Vec<String> = round
                            .repaired_drift()
                            .iter()
                            .map(|r| r.item.clone())
                            .collect();
                        if !repaired.is_empty() {
                            warn!(items = ?repaired, "host configuration drifted; repaired");
                        }
                        let quiet = matches!(round.reason, RoundReason::Interval)
                            && repaired.is_empty()
                            && !round
                                .reports
                                .iter()
                                .any(|r| matches!(r.outcome, Outcome::Failed(_)));
                        let command = if matches!(round.reason, RoundReason::Interval) {
                            0
                        } else {
                            pending.swap(0, Ordering::SeqCst)
                        };
                        // An interval round that found everything in place is not news.
                        if !quiet || command != 0 {
                            push(
                                &outbox,
                                &ready,
                                wire(
                                    command,
                                    false,
                                    reason_name(round.reason),
                                    &round.reports,
                                    round.took,
                                    &repaired,
                                ),
                            );
                        }
                    },
                ));
            }
        }
    }
}

fn push(outbox: &Mutex<Vec<HostConfigReport>>, ready: &Notify, report: HostConfigReport) {
    let mut q = outbox.lock().unwrap_or_else(|p| p.into_inner());
    // Keep the queue short while no session drains it: the newest rounds matter.
    if q.len() >= 16 {
        q.remove(0);
    }
    q.push(report);
    ready.notify_one();
}

fn reason_name(r: RoundReason) -> &'static str {
    match r {
        RoundReason::First => "first",
        RoundReason::SpecChanged => "spec_changed",
        RoundReason::Interval => "interval",
        RoundReason::Requested => "requested",
    }
}

fn wire(
    command_id: u64,
    dry_run: bool,
    reason: &str,
    items: &[ItemReport],
    took: Duration,
    repaired: &[String],
) -> HostConfigReport {
    HostConfigReport {
        command_id,
        dry_run,
        reason: reason.into(),
        items: items
            .iter()
            .map(|r| {
                let (outcome, reason) = match &r.outcome {
                    Outcome::Ok => ("ok", String::new()),
                    Outcome::Changed => ("changed", String::new()),
                    Outcome::Failed(why) => ("failed", why.clone()),
                    Outcome::NeedsReboot => ("needs-reboot", String::new()),
                };
                WireItem {
                    item: r.item.clone(),
                    outcome: outcome.into(),
                    reason,
                    diff: r.diff.clone().unwrap_or_default(),
                }
            })
            .collect(),
        took_us: took.as_micros() as u64,
        repaired_drift: repaired.to_vec(),
    }
}
