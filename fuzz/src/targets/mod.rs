//! One target per parser that takes outside input. Each calls the
//! project's own parsing code (named in [`Target::covers`]) and may
//! return errors freely; it must not panic, hang, or break the property
//! it asserts (a round trip, a shape the output keeps).

mod certs;
mod config;
pub(crate) mod database;
mod digitalocean;
mod docker;
mod ops;
mod text;
mod tunnel;

/// A fuzz target.
pub struct Target {
    pub name: &'static str,
    /// The code it drives: `file: function`, for `apiary-fuzz list` and the README.
    pub covers: &'static str,
    pub run: fn(&[u8]),
    /// The format's own tokens, for the mutator.
    pub dict: &'static [&'static str],
    /// Longest input the mutator makes.
    pub max_len: usize,
    /// Mutations the regression test (`tests/corpus.rs`, a debug build)
    /// runs after the corpus: fewer for the slow targets.
    pub test_mutations: usize,
    /// Inputs that reach a finding already reported and not yet fixed
    /// (fuzz/README.md, "Findings"): campaigns skip them so that they can
    /// go on looking for others. The regression tests never skip.
    pub known: Option<fn(&[u8]) -> bool>,
}

/// Every target, in the README's order.
pub const ALL: &[Target] = &[
    certs::JOIN_TOKEN,
    config::CLUSTER_TOML,
    config::AGENT_TOML,
    certs::ADMIN_CONF,
    certs::CSR_SIGN,
    certs::ENROLL,
    text::NAMES,
    tunnel::TUNNEL_FRAMES,
    tunnel::TUNNEL_RELAY,
    tunnel::TUNNEL_TARGET,
    ops::OP_REQUEST,
    ops::OP_REPLY,
    ops::COORDINATOR_MESSAGE,
    ops::AGENT_MESSAGE,
    config::HOST_CONFIG,
    config::HOST_FILES,
    digitalocean::DO_MODELS,
    digitalocean::DO_CLIENT,
    database::RETHINKDB,
    database::ETCD_HEALTH,
    database::ETCD_MEMBERSHIP,
    docker::DOCKER_NETWORK,
    docker::DOCKER_NODE,
    docker::BUSYBOX_OUTPUT,
    text::REACH_PROBE,
    text::CTL_TEXT,
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    ALL.iter().find(|t| t.name == name)
}

/// `data` as text, the way a reader of untrusted bytes gets it.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Where `sep` (not empty) first occurs in `data`.
fn find_bytes(data: &[u8], sep: &[u8]) -> Option<usize> {
    let last = data.len().checked_sub(sep.len())?;
    (0..=last).find(|&i| data[i] == sep[0] && data[i..].starts_with(sep))
}

/// Splits `data` at the first `sep`: (before, after).
fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match find_bytes(data, sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}

/// Splits `data` at every `sep`.
fn split_all<'a>(mut data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    loop {
        match find_bytes(data, sep) {
            Some(i) => {
                parts.push(&data[..i]);
                data = &data[i + sep.len()..];
            }
            None => {
                parts.push(data);
                return parts;
            }
        }
    }
}

/// A current-thread tokio runtime for this thread (targets that drive
/// async parsers; each test thread gets its own).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("apiary-fuzz: no tokio runtime: {e}"));
    }
    RT.with(|rt| rt.block_on(f))
}

/// A directory for files a target writes, on tmpfs when there is one,
/// named after this process. Some live in statics, which are never
/// dropped: the first call removes those of processes that are gone.
fn scratch_dir() -> tempfile::TempDir {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let shm = std::path::Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    SWEPT.call_once(|| sweep(&parent));
    tempfile::Builder::new()
        .prefix(&format!("apiary-fuzz-{}-", std::process::id()))
        .tempdir_in(&parent)
        .unwrap_or_else(|e| panic!("apiary-fuzz: no scratch directory: {e}"))
}

/// Removes the scratch directories of processes that no longer run.
fn sweep(parent: &std::path::Path) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("apiary-fuzz-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
