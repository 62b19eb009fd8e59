//! The daemon.json item: the cluster config's keys merged into the engine's
//! file, the engine restarted only when the file changed, and a file the
//! engine refuses rolled back.

use serde_json::{Map, Value};

use super::effects::HostEffects;
use super::report::{ItemReport, unified_diff};

pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// A daemon.json the engine refused, kept for the operator to read. While
/// the desired file equals it, the applier does not try again: retrying
/// every drift interval would restart (and kill the containers of) a
/// healthy engine each minute for a config that cannot work.
pub const REFUSED: &str = "/etc/docker/daemon.json.apiary-refused";
const ITEM: &str = "daemon.json";

/// The file the engine should have: `current` with `desired`'s top-level
/// keys replacing its own, and any TCP listener in `hosts` removed (apiary
/// never lets the engine listen on TCP, whoever wrote the file).
pub fn merge(current: &Map<String, Value>, desired: &Map<String, Value>) -> Map<String, Value> {
    let mut out = current.clone();
    if let Some(Value::Array(hosts)) = out.get_mut("hosts") {
        hosts.retain(|h| {
            !h.as_str()
                .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("tcp://"))
        });
        if hosts.is_empty() {
            out.remove("hosts");
        }
    }
    for (k, v) in desired {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// How apiary writes daemon.json: pretty, two-space indent, final newline.
pub fn render(map: &Map<String, Value>) -> String {
    let mut s = serde_json::to_string_pretty(map).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

pub fn apply_daemon_json(
    desired: &Map<String, Value>,
    effects: &dyn HostEffects,
    dry_run: bool,
) -> ItemReport {
    let old_text = match effects.read_file(DAEMON_JSON) {
        Ok(t) => t,
        Err(e) => return ItemReport::failed(ITEM, format!("cannot read it: {e}")),
    };
    // Fatal for this item: an unreadable file is someone's; overwriting it
    // would lose their settings, and the engine cannot start with it anyway.
    let current = match old_text.as_deref().map(str::trim) {
        None | Some("") => Map::new(),
        Some(t) => match serde_json::from_str::<Map<String, Value>>(t) {
            Ok(m) => m,
            Err(e) => {
                return ItemReport::failed(
                    ITEM,
                    format!(
                        "{DAEMON_JSON} is not a JSON object ({e}); fix or remove it, apiary will not overwrite it"
                    ),
                );
            }
        },
    };
    let merged = merge(&current, desired);
    // Compared as JSON, not text: key order and spacing are not drift. An
    // absent file with nothing to put in it stays absent.
    if merged == current {
        return ItemReport::ok(ITEM);
    }
    let new_text = render(&merged);
    let existed = old_text.is_some();
    let old = old_text.unwrap_or_default();
    // Diffed as apiary would print both, so a one-line file still shows
    // which keys change rather than one replaced line.
    let shown_old = if existed {
        render(&current)
    } else {
        String::new()
    };
    let diff = Some(unified_diff(DAEMON_JSON, &shown_old, &new_text));
    if let Ok(Some(refused)) = effects.read_file(REFUSED)
        && refused == new_text
    {
        return ItemReport::failed(
            ITEM,
            format!(
                "the engine refused this daemon.json before (kept in {REFUSED}); not retried: fix daemon_json in the cluster config, or delete {REFUSED} to try again"
            ),
        )
        .with_diff(diff);
    }
    if dry_run {
        return ItemReport::new(ITEM, super::report::Outcome::Changed, diff);
    }
    if let Err(e) = effects.write_file(DAEMON_JSON, &new_text) {
        return ItemReport::failed(ITEM, format!("cannot write it: {e}")).with_diff(diff);
    }
    let came_back = effects
        .restart_engine()
        .and_then(|()| effects.engine_ready());
    let why = match came_back {
        Ok(()) => {
            // The refusal note is about an older desired file; forget it.
            let _ = effects.remove_file(REFUSED);
            return ItemReport::new(ITEM, super::report::Outcome::Changed, diff);
        }
        Err(e) => e,
    };
    // Roll back: the previous file (or none), the engine restarted on it,
    // and the refused file kept for the operator.
    let restore = if !existed {
        effects.remove_file(DAEMON_JSON)
    } else {
        effects.write_file(DAEMON_JSON, &old)
    };
    let _ = effects.write_file(REFUSED, &new_text);
    let back = restore.and_then(|()| {
        effects
            .restart_engine()
            .and_then(|()| effects.engine_ready())
    });
    let reason = match back {
        Ok(()) => format!(
            "the engine did not come back with the new daemon.json ({why}); rolled back to the previous file and the engine runs again; the refused file is kept in {REFUSED}"
        ),
        Err(e) => format!(
            "the engine did not come back with the new daemon.json ({why}); rolled back to the previous file, but the engine is still down ({e}): check the engine's log (journalctl -u docker)"
        ),
    };
    ItemReport::failed(ITEM, reason).with_diff(diff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostconfig::memory::MemoryEffects;
    use crate::hostconfig::report::Outcome;
    use serde_json::json;

    fn desired() -> Map<String, Value> {
        json!({"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}, "mtu": 1450})
            .as_object()
            .cloned()
            .expect("object")
    }

    #[test]
    fn merges_keeps_other_keys_and_restarts_only_on_change() {
        let m = MemoryEffects::new();
        m.state().files.insert(
            DAEMON_JSON.into(),
            "{\"debug\": true, \"log-driver\": \"syslog\", \"hosts\": [\"unix:///run/d.sock\", \"tcp://0.0.0.0:2375\"]}".into(),
        );
        let first = apply_daemon_json(&desired(), &m, false);
        assert_eq!(first.outcome, Outcome::Changed);
        let diff = first.diff.expect("diff");
        assert!(diff.contains("+  \"mtu\": 1450"), "{diff}");
        let now: Value = serde_json::from_str(&m.state().files[DAEMON_JSON]).expect("json written");
        assert_eq!(now["debug"], json!(true));
        assert_eq!(now["log-driver"], json!("json-file"));
        assert_eq!(
            now["hosts"],
            json!(["unix:///run/d.sock"]),
            "tcp listener removed"
        );
        assert_eq!(
            m.log(),
            ["write_file /etc/docker/daemon.json", "restart_engine"]
        );

        // Second apply: nothing to do, no restart.
        assert_eq!(
            apply_daemon_json(&desired(), &m, false).outcome,
            Outcome::Ok
        );
        assert_eq!(m.log().len(), 2);
        // Reformatting is not drift.
        let compact = serde_json::to_string(&now).expect("compact");
        m.state().files.insert(DAEMON_JSON.into(), compact);
        assert_eq!(
            apply_daemon_json(&desired(), &m, false).outcome,
            Outcome::Ok
        );
        // A changed value is drift: repaired, engine restarted.
        m.state().files.insert(
            DAEMON_JSON.into(),
            "{\"debug\": true, \"mtu\": 1500}".into(),
        );
        let repaired = apply_daemon_json(&desired(), &m, false);
        assert_eq!(repaired.outcome, Outcome::Changed);
        assert!(repaired.diff.expect("diff").contains("-  \"mtu\": 1500"));
        assert_eq!(m.log().last().map(String::as_str), Some("restart_engine"));
    }

    #[test]
    fn nothing_to_merge_creates_no_file() {
        let m = MemoryEffects::new();
        assert_eq!(
            apply_daemon_json(&Map::new(), &m, false).outcome,
            Outcome::Ok
        );
        assert!(m.log().is_empty());
    }

    #[test]
    fn dry_run_changes_nothing() {
        let m = MemoryEffects::new();
        let before = m.state().clone();
        let r = apply_daemon_json(&desired(), &m, true);
        assert_eq!(r.outcome, Outcome::Changed);
        assert!(
            r.diff
                .expect("diff")
                .contains("+  \"log-driver\": \"json-file\"")
        );
        assert_eq!(*m.state(), before);
    }

    #[test]
    fn a_refused_file_is_rolled_back_and_not_retried() {
        let m = MemoryEffects::new();
        let old = "{\"debug\": true}\n";
        m.state().files.insert(DAEMON_JSON.into(), old.into());
        m.set_engine_check(Box::new(|daemon| {
            daemon
                .is_some_and(|d| d.contains("\"mtu\""))
                .then(|| "invalid MTU for the default bridge".to_string())
        }));
        let r = apply_daemon_json(&desired(), &m, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("invalid MTU") && w.contains("rolled back") && w.contains("runs again")),
            "{r:?}"
        );
        assert_eq!(m.state().files[DAEMON_JSON], old, "previous file restored");
        assert!(m.state().engine_up);
        assert_eq!(m.log().iter().filter(|l| *l == "restart_engine").count(), 2);
        // Next round: same desired file, not retried, no restart.
        let again = apply_daemon_json(&desired(), &m, false);
        assert!(matches!(&again.outcome, Outcome::Failed(w) if w.contains("not retried")));
        assert_eq!(m.log().iter().filter(|l| *l == "restart_engine").count(), 2);
        // A fixed config is tried and clears the note.
        let mut fixed = desired();
        fixed.remove("mtu");
        assert_eq!(
            apply_daemon_json(&fixed, &m, false).outcome,
            Outcome::Changed
        );
        assert!(!m.state().files.contains_key(REFUSED));
    }

    #[test]
    fn an_engine_that_stays_down_is_reported() {
        let m = MemoryEffects::new();
        m.set_engine_check(Box::new(|_| Some("containerd is not running".into())));
        let r = apply_daemon_json(&desired(), &m, false);
        assert!(
            matches!(&r.outcome, Outcome::Failed(w) if w.contains("still down") && w.contains("journalctl")),
            "{r:?}"
        );
        assert!(
            !m.state().files.contains_key(DAEMON_JSON),
            "no file before, none after"
        );
    }

    #[test]
    fn a_broken_existing_file_is_not_overwritten() {
        let m = MemoryEffects::new();
        m.state()
            .files
            .insert(DAEMON_JSON.into(), "{\"debug\": tru".into());
        let r = apply_daemon_json(&desired(), &m, false);
        assert!(matches!(&r.outcome, Outcome::Failed(w) if w.contains("will not overwrite")));
        assert!(m.log().is_empty());
    }
}
