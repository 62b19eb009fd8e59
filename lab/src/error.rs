//! The crate's one error type. Every variant names what failed (host, command,
//! path) and reads as advice to whoever runs the lab.

use std::path::PathBuf;

/// Everything that can go wrong while planning, building, adopting or tearing
/// down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },

    #[error("host name {0:?} appears twice in the lab spec: host names must be unique")]
    DuplicateHost(String),

    #[error(
        "the lab spec asks for {count} hosts, more than the {max} the lab's /24 ranges can hold"
    )]
    TooManyHosts { count: usize, max: usize },

    #[error(
        "path {path} is {len} bytes, longer than the {max} a unix socket path may have: use a shorter run directory, cluster name or host name"
    )]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    #[error("unknown host {0:?}: it is not in this lab's plan")]
    UnknownHost(String),

    #[error("the lab needs root ({action}): run as root")]
    NotRoot { action: &'static str },

    #[error("{tool} not found: install {package} (apt-get install {package})")]
    ToolMissing { tool: String, package: &'static str },

    #[error("`{command}` failed ({status}){}: {stderr}", host.as_ref().map(|h| format!(" for host {h}")).unwrap_or_default())]
    Command {
        host: Option<String>,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "lab range {range} collides with the route `{route}` on this machine: the lab refuses to shadow a real network; remove that route or run the lab on another machine"
    )]
    RouteCollision { range: String, route: String },

    #[error(
        "bridge {bridge} belongs to another lab ({owner}); only one lab may exist on a machine: tear that one down first (coordinator teardown)"
    )]
    LabInUse { bridge: String, owner: String },

    #[error("link {link} exists but {reason}: delete it (ip link del {link}) or free the name")]
    LinkConflict { link: String, reason: String },

    #[error(
        "this changes the machine's lab but the lab lock {path} is not held by this process: take it first (Lab::lock())"
    )]
    NotLocked { path: PathBuf },

    #[error("cannot take the lab lock {path}: {reason}")]
    Lock { path: PathBuf, reason: String },

    #[error("lab bridge {bridge} does not exist: call Lab::ensure_network first")]
    NetworkNotReady { bridge: String },

    #[error("host {host} is not up ({what}): call Lab::ensure_host first")]
    HostNotReady { host: String, what: String },

    #[error("dockerd of host {host} exited while starting; its log {log} ends with:\n{tail}")]
    EngineExited {
        host: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "dockerd of host {host} did not answer on {socket} within {waited_s} s; its log {log} ends with:\n{tail}"
    )]
    EngineTimeout {
        host: String,
        socket: PathBuf,
        waited_s: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("Docker engine of host {host}: {action} failed: {source}")]
    Docker {
        host: String,
        action: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    #[error(
        "{path} is not a statically linked busybox: the lab's images need Debian's busybox-static (apt-get install busybox-static)"
    )]
    BusyboxNotStatic { path: PathBuf },

    #[error(
        "after loading, image {reference} on host {host} has id {got}, not {expected}: remove the image there (docker rmi) and retry"
    )]
    ImageMismatch {
        host: String,
        reference: String,
        expected: String,
        got: String,
    },

    #[error(
        "invalid process name {0:?}: use letters, digits, '-' and '_' (at most 32), and not \"dockerd\" (the engine's)"
    )]
    InvalidProcessName(String),

    #[error("teardown left things behind:\n  {}", leftovers.join("\n  "))]
    TeardownIncomplete { leftovers: Vec<String> },

    #[error("internal task failed: {0}")]
    Join(String),
}

impl LabError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LabError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
