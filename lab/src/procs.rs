//! Processes the lab starts: pidfiles that carry a process's identity (pid and
//! start time, so a recycled pid is never mistaken for ours) and the choice of
//! which processes belong to a host when tearing it down.

use std::collections::{BTreeSet, HashMap};

use crate::ops::ProcInfo;

/// Contents of an apiary pidfile: `"<pid> <start time>\n"`.
pub fn format_pidfile(pid: u32, start_time: u64) -> String {
    format!("{pid} {start_time}\n")
}

/// Parses a pidfile; a bare pid (no start time) is accepted and then matches any start time.
pub fn parse_pidfile(text: &str) -> Option<(u32, Option<u64>)> {
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = match it.next() {
        Some(s) => Some(s.parse().ok()?),
        None => None,
    };
    Some((pid, start))
}

/// Whether `info` is the live process a pidfile names.
pub fn is_same_live_process(info: Option<&ProcInfo>, start_time: Option<u64>) -> bool {
    match info {
        Some(p) => p.alive() && start_time.is_none_or(|t| t == p.start_time),
        None => false,
    }
}

/// Which processes belong to a host: those in its network namespace, those
/// whose command line names its run directory (dockerd, its containerd and
/// the containerd shims, which pass `-address <exec root>/containerd/containerd.sock`),
/// the `seeds` (pids from its pidfiles), and all their descendants (container
/// processes live in namespaces of their own but are children of the shims).
/// Never pid 1 nor `exclude` (the caller).
pub fn host_processes(
    table: &[ProcInfo],
    netns_inode: Option<u64>,
    markers: &[String],
    seeds: &[u32],
    exclude: u32,
) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = table
        .iter()
        .filter(|p| p.alive())
        .filter(|p| {
            seeds.contains(&p.pid)
                || (netns_inode.is_some() && p.netns_inode == netns_inode)
                || markers
                    .iter()
                    .any(|m| !m.is_empty() && p.cmdline.contains(m.as_str()))
        })
        .map(|p| p.pid)
        .collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in table.iter().filter(|p| p.alive()) {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut stack: Vec<u32> = set.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if set.insert(c) {
                stack.push(c);
            }
        }
    }
    set.remove(&1);
    set.remove(&0);
    set.remove(&exclude);
    set
}

/// A live dockerd of the host that has no (valid) apiary pidfile: started by a
/// coordinator killed before it wrote the pidfile. Its pid is the same through
/// the exec chain setsid → ip netns exec → nsenter → wrapper → dockerd, so any
/// stage that carries dockerd's `--exec-root <exec root>` arguments counts.
pub fn find_dockerd(table: &[ProcInfo], exec_root: &str) -> Option<u32> {
    let marker = format!(" --exec-root {exec_root} ");
    table
        .iter()
        .filter(|p| p.alive() && p.cmdline.contains(&marker))
        .filter(|p| {
            p.cmdline
                .split(' ')
                .any(|t| t.rsplit('/').next() == Some("dockerd"))
        })
        .map(|p| p.pid)
        .min()
}

/// containerd daemons started by an earlier dockerd of the host (found by
/// their config under the exec root). dockerd kills its containerd when it dies,
/// but a new dockerd that starts while the old containerd is still exiting reads
/// its pidfile, takes it for alive, and waits for it until it gives up.
pub fn stale_containerd(table: &[ProcInfo], exec_root: &str) -> Vec<u32> {
    let marker = format!("{exec_root}/containerd/");
    table
        .iter()
        .filter(|p| {
            let prog = p.cmdline.split(' ').next().unwrap_or("");
            prog.rsplit('/').next() == Some("containerd") && p.cmdline.contains(&marker)
        })
        .map(|p| p.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, ns: u64, cmd: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            state: 'S',
            start_time: 100 + u64::from(pid),
            netns_inode: Some(ns),
            cmdline: cmd.into(),
        }
    }

    #[test]
    fn stale_containerd_is_only_the_daemon_of_this_host() {
        let table = vec![
            p(
                10,
                1,
                9,
                "containerd --config /run/apiary/bees/q/exec/containerd/containerd.toml --log-level info",
            ),
            p(
                11,
                1,
                9,
                "/usr/bin/containerd-shim-runc-v2 -address /run/apiary/bees/q/exec/containerd/containerd.sock",
            ),
            p(
                12,
                1,
                9,
                "containerd --config /run/apiary/bees/qq/exec/containerd/containerd.toml",
            ),
            p(
                13,
                1,
                9,
                "/usr/bin/containerd --config /run/apiary/bees/q/exec/containerd/containerd.toml",
            ),
        ];
        assert_eq!(
            stale_containerd(&table, "/run/apiary/bees/q/exec"),
            vec![10, 13]
        );
    }

    #[test]
    fn finds_an_unrecorded_dockerd_of_this_host_only() {
        let table = vec![
            p(
                10,
                1,
                9,
                "dockerd --data-root /s/q/docker --exec-root /run/apiary/bees/q/exec --pidfile x",
            ),
            p(
                11,
                10,
                9,
                "containerd --config /run/apiary/bees/q/exec/containerd/containerd.toml",
            ),
            p(
                12,
                1,
                9,
                "dockerd --data-root /s/qq/docker --exec-root /run/apiary/bees/qq/exec --pidfile y",
            ),
        ];
        assert_eq!(find_dockerd(&table, "/run/apiary/bees/q/exec"), Some(10));
        assert_eq!(find_dockerd(&table, "/run/apiary/bees/w/exec"), None);
        // still in the wrapper, before exec
        let early = vec![p(
            20,
            1,
            1,
            "ip netns exec bees.q nsenter --uts=/run/apiary/bees/q/uts -- /bin/sh /run/apiary/bees/q/in-host.sh dockerd --data-root /s/q/docker --exec-root /run/apiary/bees/q/exec --pidfile x",
        )];
        assert_eq!(find_dockerd(&early, "/run/apiary/bees/q/exec"), Some(20));
    }

    #[test]
    fn pidfile_round_trip() {
        assert_eq!(
            parse_pidfile(&format_pidfile(42, 777)),
            Some((42, Some(777)))
        );
        assert_eq!(parse_pidfile("42\n"), Some((42, None)));
        assert_eq!(parse_pidfile(""), None);
        assert_eq!(parse_pidfile("x y"), None);
        assert_eq!(parse_pidfile("42 y"), None);
    }

    #[test]
    fn identity_needs_start_time_and_life() {
        let live = p(42, 1, 5, "dockerd");
        assert!(is_same_live_process(Some(&live), Some(142)));
        assert!(is_same_live_process(Some(&live), None));
        assert!(
            !is_same_live_process(Some(&live), Some(141)),
            "recycled pid"
        );
        let mut zombie = live.clone();
        zombie.state = 'Z';
        assert!(!is_same_live_process(Some(&zombie), Some(142)));
        assert!(!is_same_live_process(None, Some(142)));
    }

    #[test]
    fn host_processes_follow_netns_markers_and_children() {
        let table = vec![
            p(1, 0, 1, "/sbin/init"),
            p(50, 1, 1, "coordinator serve"),
            p(100, 50, 9, "dockerd --exec-root /run/apiary/bees/q/exec"),
            p(
                101,
                100,
                9,
                "containerd --config /run/apiary/bees/q/exec/containerd/containerd.toml",
            ),
            // shim re-parented to init, in the host netns? no: found by its -address
            p(
                200,
                1,
                1,
                "containerd-shim-runc-v2 -namespace moby -address /run/apiary/bees/q/exec/containerd/containerd.sock",
            ),
            // container process: own netns, child of the shim
            p(201, 200, 33, "sleep 600"),
            p(202, 201, 33, "sh"),
            // the agent: same netns
            p(300, 1, 9, "agent --coordinator 10.231.0.1"),
            // another host and unrelated processes
            p(400, 1, 10, "dockerd --exec-root /run/apiary/bees/w/exec"),
            p(500, 1, 1, "sshd"),
        ];
        let got = host_processes(
            &table,
            Some(9),
            &["/run/apiary/bees/q/".to_string()],
            &[],
            50,
        );
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![100, 101, 200, 201, 202, 300]
        );
        // seeds alone, and the caller and init are never chosen
        let got = host_processes(&table, None, &[], &[50, 1], 50);
        assert!(!got.contains(&50) && !got.contains(&1));
    }
}
