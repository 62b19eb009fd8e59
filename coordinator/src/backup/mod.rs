//! `coordinator backup` and `coordinator restore`: the coordinator's state
//! directory (the store, the CA and its key, database peer keys, admin.conf)
//! as one file, and back.
//!
//! A backup is taken while `serve` runs or not, in one format:
//! - **serve running** (it holds the store: redb has one opener per file,
//!   and a second `Store::open` is refused with `InUse`): the store comes
//!   from the running coordinator over its admin API (`StoreSnapshot`, read
//!   in one read transaction), with the admin certificate of the directory's
//!   own admin.conf. Chosen over a unix socket in the state directory
//!   because the admin API already is the one authenticated way in (mutual
//!   TLS, `require_role`), ctl's client and refusals come with it, and it
//!   adds no second listener to secure; the answer holds nothing an admin
//!   cannot read already (the join token included). The CA key never
//!   crosses the wire: it is read from the directory, as are the other
//!   files, which `serve` writes once and never changes (admin.conf's
//!   endpoint aside);
//! - **serve not running**: the store is opened here, which takes its lock,
//!   so a `serve` started meanwhile stops with exit 75 instead of writing
//!   under the backup.
//!
//! The file is written 0600 from its creation, into a temporary sibling
//! renamed over the target, so a failure leaves no partial file. A restore
//! decodes (and decrypts) everything before it writes anything, writes into
//! a temporary sibling directory, and renames it into place.
//!
//! What a backup is not: the hosts' state (agents keep their own keys;
//! the lab keeps its hosts' disks under `STATE_DIR/lab`, which is not
//! copied), nor anything that happened after it was taken.

pub mod format;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use apiary_api::exit;
use apiary_certs::{AdminConf, AdminConfError, CertError, ClusterCa};
use apiary_ctl::{Ctl, CtlError};
use serde::Serialize;
use tracing::{info, warn};

use crate::store::{Snapshot, SnapshotEntry, SnapshotTable, Store, StoreError};
use format::{Contents, DATABASE_DIR, StateFile, StatePath};
pub use format::{FormatError, Passphrase, Summary};

/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "APIARY_BACKUP_PASSPHRASE";
/// The store's file in a state directory.
const STORE_FILE: &str = "state.redb";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no coordinator state in {dir} (no {STORE_FILE}): give the directory `coordinator serve --state-dir` uses"
    )]
    NoState { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The backup file is not one this coordinator can restore.
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: FormatError },
    #[error(
        "refusing to restore into {dir}: it is not empty; give a new or empty directory (nothing was written)"
    )]
    NotEmpty { dir: PathBuf },
    #[error("refusing to restore into {dir}: it is not a directory (nothing was written)")]
    NotADirectory { dir: PathBuf },
    #[error("the passphrase from {from} is empty; an empty passphrase protects nothing")]
    EmptyPassphrase { from: String },
    #[error("the running coordinator did not hand over its store (asked with {conf}): {source}")]
    Running { conf: PathBuf, source: CtlError },
    #[error(transparent)]
    AdminConf(#[from] AdminConfError),
    #[error("the CA in {dir}: {source}")]
    Ca { dir: PathBuf, source: CertError },
    #[error("state store in {dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error(
        "{path}: restored, the CA's digest is {found}, but the backup says {expected}; the backup is corrupt (nothing was kept)"
    )]
    CaMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

impl BackupError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BackupError::NoState { .. }
            | BackupError::NotEmpty { .. }
            | BackupError::NotADirectory { .. }
            | BackupError::EmptyPassphrase { .. } => exit::USAGE,
            BackupError::Format { source, .. } => match source {
                FormatError::NeedsPassphrase => exit::USAGE,
                // A credential that does not match, as a refused token.
                FormatError::WrongPassphrase => exit::REFUSED,
                _ => exit::FAILURE,
            },
            BackupError::Running { source, .. } => source.exit_code(),
            BackupError::Store {
                source: StoreError::InUse { .. },
                ..
            } => exit::IN_USE,
            _ => exit::FAILURE,
        }
    }
}

/// The passphrase to use: `--passphrase-file` if given, else
/// `APIARY_BACKUP_PASSPHRASE`, else none. Never a command-line value
/// (others can read a process's arguments). One trailing newline of the
/// file is not part of it (`echo secret > file`).
pub fn passphrase(file: Option<&Path>) -> Result<Option<Passphrase>, BackupError> {
    let (text, from) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| BackupError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            (text, path.display().to_string())
        }
        None => match std::env::var(PASSPHRASE_ENV) {
            Ok(text) => (text, PASSPHRASE_ENV.to_string()),
            Err(_) => return Ok(None),
        },
    };
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_string();
    let passphrase = Passphrase::new(text);
    if passphrase.is_empty() {
        return Err(BackupError::EmptyPassphrase { from });
    }
    Ok(Some(passphrase))
}

/// Where a backup's store came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The running coordinator, over its admin API.
    RunningCoordinator,
    /// The state directory itself (no coordinator was running).
    StateDirectory,
}

/// What `coordinator backup` did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub file: PathBuf,
    pub source: Source,
    #[serde(flatten)]
    pub summary: Summary,
}

/// What `coordinator restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub state_dir: PathBuf,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Backs up `state_dir` into `out` (see the module's docs).
pub async fn backup(
    state_dir: &Path,
    out: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<BackupReport, BackupError> {
    let (store, source) = store_snapshot(state_dir).await?;
    let contents = Contents {
        created_unix: crate::time::now_unix(),
        apiary_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster: AdminConf::load(&state_dir.join(format::ADMIN_CONF))?.cluster,
        ca_digest: ca_digest(&state_dir.join("pki"))?,
        files: state_files(state_dir)?,
        store,
    };
    let encrypted = passphrase.is_some();
    // scrypt takes about a second by design: off the runtime's workers.
    let passphrase = passphrase.cloned();
    let (bytes, contents) = tokio::task::spawn_blocking(move || {
        format::encode(&contents, passphrase.as_ref()).map(|b| (b, contents))
    })
    .await
    .map_err(|e| BackupError::Write {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?
    .map_err(|source| BackupError::Format {
        path: out.to_path_buf(),
        source,
    })?;
    write_new_private(out, &bytes)?;
    let summary = Summary::of(&contents, encrypted, bytes.len());
    info!(file = %out.display(), nodes = summary.nodes, bytes = summary.bytes, encrypted, ?source, "backup written");
    Ok(BackupReport {
        file: out.to_path_buf(),
        source,
        summary,
    })
}

/// The store: from the running coordinator if one holds it, else read here.
async fn store_snapshot(state_dir: &Path) -> Result<(Snapshot, Source), BackupError> {
    let path = state_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(BackupError::NoState {
            dir: state_dir.to_path_buf(),
        });
    }
    let store_err = |source| BackupError::Store {
        dir: state_dir.to_path_buf(),
        source,
    };
    match Store::open(&path) {
        Ok(store) => {
            let snapshot = store.snapshot().map_err(store_err)?;
            Ok((snapshot, Source::StateDirectory))
        }
        Err(StoreError::InUse { .. }) => {
            let conf_path = state_dir.join(format::ADMIN_CONF);
            let running = |source| BackupError::Running {
                conf: conf_path.clone(),
                source,
            };
            let conf = AdminConf::load(&conf_path)?;
            let mut ctl = Ctl::new(&conf).map_err(running)?;
            let answer = ctl.store_snapshot().await.map_err(running)?;
            Ok((from_wire(answer), Source::RunningCoordinator))
        }
        Err(e) => Err(store_err(e)),
    }
}

fn from_wire(answer: apiary_proto::StoreSnapshotResponse) -> Snapshot {
    Snapshot {
        tables: answer
            .tables
            .into_iter()
            .map(|t| SnapshotTable {
                name: t.name,
                entries: t
                    .entries
                    .into_iter()
                    .map(|e| SnapshotEntry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn ca_digest(pki: &Path) -> Result<String, BackupError> {
    ClusterCa::load(pki)
        .map(|ca| ca.digest().to_string())
        .map_err(|source| BackupError::Ca {
            dir: pki.to_path_buf(),
            source,
        })
}

/// The files beside the store: the CA, admin.conf, and every database peer
/// whose key and certificate are both there (serve writes the key first; a
/// key alone is one being made, which serve makes again when it needs it).
fn state_files(state_dir: &Path) -> Result<Vec<StateFile>, BackupError> {
    let read = |rel: &str| -> Result<StateFile, BackupError> {
        let path = state_dir.join(rel);
        let content = std::fs::read(&path).map_err(|source| BackupError::Read { path, source })?;
        let path = StatePath::parse(rel).map_err(|reason| BackupError::Format {
            path: state_dir.join(rel),
            source: FormatError::Corrupt { reason },
        })?;
        Ok(StateFile { path, content })
    };
    let mut files = format::REQUIRED
        .iter()
        .map(|rel| read(rel))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = state_dir.join(DATABASE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(source) => return Err(BackupError::Read { path: dir, source }),
    };
    let mut services: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".key").map(str::to_string))
        .collect();
    services.sort();
    for service in services {
        let (key, cert) = (
            format!("{DATABASE_DIR}/{service}.key"),
            format!("{DATABASE_DIR}/{service}.pem"),
        );
        if StatePath::parse(&key).is_err() {
            warn!(file = %dir.join(format!("{service}.key")).display(), "not a database peer key serve writes; not backed up");
            continue;
        }
        if !state_dir.join(&cert).exists() {
            warn!(
                service,
                "a database peer key without its certificate (being made?); not backed up"
            );
            continue;
        }
        files.push(read(&key)?);
        files.push(read(&cert)?);
    }
    Ok(files)
}

/// Writes `bytes` to `path`: created 0600 (never widened, never chmod-ed
/// after), under a temporary name in the same directory, synced, then
/// renamed over `path`; on failure the temporary file is removed, so
/// `path` is either the whole backup or untouched.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let err = |source| BackupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("not a file name")))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Restores `file` into `state_dir`, which must be missing or empty.
pub async fn restore(
    file: &Path,
    state_dir: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<RestoreReport, BackupError> {
    check_empty(state_dir)?;
    let bytes = std::fs::read(file).map_err(|source| BackupError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let size = bytes.len();
    let passphrase = passphrase.cloned();
    let (file, state) = (file.to_path_buf(), state_dir.to_path_buf());
    // Decryption (scrypt) and redb's writes are blocking.
    tokio::task::spawn_blocking(move || {
        let encrypted = format::is_encrypted(&bytes).unwrap_or(false);
        let contents =
            format::decode(&bytes, passphrase.as_ref()).map_err(|source| BackupError::Format {
                path: file.clone(),
                source,
            })?;
        // Checked again: the directory may have filled while decrypting.
        check_empty(&state)?;
        write_state(&contents, &state)?;
        info!(state_dir = %state.display(), cluster = %contents.cluster, "state directory restored");
        Ok(RestoreReport {
            state_dir: state,
            summary: Summary::of(&contents, encrypted, size),
        })
    })
    .await
    .map_err(|e| BackupError::Write {
        path: state_dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// A restore goes only into a directory that holds nothing (or none yet).
fn check_empty(dir: &Path) -> Result<(), BackupError> {
    if dir.exists() && !dir.is_dir() {
        return Err(BackupError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::NotEmpty {
                dir: dir.to_path_buf(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state directory into a temporary sibling (0700, as serve
/// creates it; keys and every other file 0600), checks that the CA loads
/// and is the one the backup names, and renames it into place (over an
/// empty directory, which rename allows). On failure the sibling is
/// removed and `state_dir` is as it was.
fn write_state(contents: &Contents, state_dir: &Path) -> Result<(), BackupError> {
    let name = state_dir
        .file_name()
        .ok_or_else(|| BackupError::NotADirectory {
            dir: state_dir.to_path_buf(),
        })?;
    let parent = match state_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(werr(&parent))?;
    let tmp = parent.join(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = fill(contents, &tmp).and_then(|()| {
        std::fs::rename(&tmp, state_dir)
            .and_then(|()| sync_parent(state_dir))
            .map_err(|source| match source.raw_os_error() {
                // Something appeared in it since it was checked.
                Some(code) if code == nix::libc::ENOTEMPTY => BackupError::NotEmpty {
                    dir: state_dir.to_path_buf(),
                },
                _ => BackupError::Write {
                    path: state_dir.to_path_buf(),
                    source,
                },
            })
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn fill(contents: &Contents, dir: &Path) -> Result<(), BackupError> {
    let werr = |path: PathBuf| move |source| BackupError::Write { path, source };
    for sub in [Path::new(""), Path::new("pki"), Path::new(DATABASE_DIR)] {
        let path = dir.join(sub);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(werr(path))?;
    }
    for f in &contents.files {
        // A fresh directory: created 0600, whole or (on failure) removed
        // with the directory.
        let path = dir.join(f.path.as_str());
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&f.content)?;
                file.sync_all()
            })
            .map_err(werr(path))?;
    }
    let found = ca_digest(&dir.join("pki"))?;
    if found != contents.ca_digest {
        return Err(BackupError::CaMismatch {
            path: dir.join(format::CA_CERT),
            expected: contents.ca_digest.clone(),
            found,
        });
    }
    Store::create_from(&dir.join(STORE_FILE), &contents.store).map_err(|source| {
        BackupError::Store {
            dir: dir.to_path_buf(),
            source,
        }
    })
}

/// `coordinator backup`'s lines for a person.
pub fn backup_text(r: &BackupReport) -> String {
    let s = &r.summary;
    let protection = if s.encrypted {
        "encrypted with a passphrase"
    } else {
        "NOT encrypted: it holds the cluster's CA key; keep it like one"
    };
    let source = match r.source {
        Source::RunningCoordinator => "the running coordinator's store",
        Source::StateDirectory => "the state directory (no coordinator was running)",
    };
    format!(
        "backup of cluster {} written to {} ({}, {protection})\n  {}\n  from {source}; backup format {}, CA sha256 {}",
        s.cluster,
        r.file.display(),
        human_size(s.bytes),
        holds(s),
        s.format,
        s.ca_digest,
    )
}

/// `coordinator restore`'s lines for a person.
pub fn restore_text(r: &RestoreReport) -> String {
    let s = &r.summary;
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.created_unix),
    );
    format!(
        "restored cluster {} into {} (backup taken {when} by apiary {})\n  {}\n  \
         start it with: coordinator serve --config CLUSTER.toml --state-dir {}\n  \
         nodes enrolled after the backup are unknown to it: each re-enrolls with a join token (see the operator guide)",
        s.cluster,
        r.state_dir.display(),
        s.apiary_version,
        holds(s),
        r.state_dir.display(),
    )
}

fn holds(s: &Summary) -> String {
    format!(
        "holds: the CA and its key, admin.conf, the join token, {} node(s), {} certificate(s), {} revocation(s), {} database peer key(s)",
        s.nodes, s.certificates, s.revocations, s.database_peer_keys
    )
}

fn human_size(bytes: usize) -> String {
    match bytes {
        b if b < 1024 => format!("{b} bytes"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeRecord, Op, RevocationRecord};
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    /// Waits until no store handle of this process holds the file (the
    /// writer thread lets go when its channel closes). Probes with redb
    /// itself, which lets go as soon as it is dropped.
    async fn released(path: &Path) {
        loop {
            match redb::Database::open(path) {
                Ok(_) => return,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn an_offline_backup_restores_the_same_state_and_refuses_a_full_directory() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("state");
        let config = crate::config::ClusterConfig::parse(
            Path::new("cluster.toml"),
            "[cluster]\nname = \"t\"\n[provider]\nkind = \"manual\"\n",
        )
        .expect("config");
        let (digest, token) = {
            let c = crate::core::Coordinator::open(config.clone(), &state)
                .await
                .expect("open");
            c.write_admin_conf("127.0.0.1:7443".parse().expect("addr"))
                .expect("admin.conf");
            c.pki
                .database_peer_tls("etcd-1", &["etcd-1".into()])
                .expect("peer");
            c.store
                .apply(vec![
                    Op::PutNode(NodeRecord {
                        name: "bee-1".into(),
                        enrolled_unix: 1,
                        cert_serial: "0a".into(),
                        cert_not_after_unix: 2,
                        last_seen_unix_ms: 3,
                        provider_id: String::new(),
                    }),
                    Op::Revoke(RevocationRecord {
                        serial: "0b".into(),
                        node: "bee-2".into(),
                        revoked_unix: 4,
                    }),
                ])
                .await
                .expect("apply");
            (c.pki.ca().digest().to_string(), c.pki.current_token().token)
        };
        released(&state.join(STORE_FILE)).await;

        let out = tmp.path().join("cluster.backup");
        let report = backup(&state, &out, None).await.expect("backup");
        assert_eq!(report.source, Source::StateDirectory);
        let s = &report.summary;
        assert_eq!((s.nodes, s.revocations, s.database_peer_keys), (1, 1, 1));
        assert_eq!(s.ca_digest, digest);
        assert!(!s.encrypted);
        assert_eq!(mode(&out), 0o600);
        assert!(backup_text(&report).contains("NOT encrypted"));

        // A directory with anything in it is refused, and left as it was.
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).expect("mkdir");
        std::fs::write(full.join("keep"), b"x").expect("write");
        let e = restore(&out, &full, None).await.expect_err("not empty");
        assert!(matches!(e, BackupError::NotEmpty { .. }), "{e}");
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains(&full.display().to_string()), "{e}");
        assert_eq!(std::fs::read_dir(&full).expect("ls").count(), 1);

        let new = tmp.path().join("new").join("state");
        let restored = restore(&out, &new, None).await.expect("restore");
        assert_eq!(restored.summary.nodes, 1);
        assert_eq!(mode(&new), 0o700);
        for f in [
            "pki/ca.key",
            "pki/ca.pem",
            "admin.conf",
            "pki/database/etcd-1.key",
            "pki/database/etcd-1.pem",
        ] {
            assert_eq!(mode(&new.join(f)), 0o600, "{f}");
            assert_eq!(
                std::fs::read(new.join(f)).expect("new"),
                std::fs::read(state.join(f)).expect("old"),
                "{f}"
            );
        }
        // No temporary sibling is left behind.
        assert_eq!(
            std::fs::read_dir(tmp.path().join("new"))
                .expect("ls")
                .count(),
            1
        );
        let (old, restored) = (
            Store::open(&state.join(STORE_FILE))
                .expect("old")
                .snapshot()
                .expect("snap"),
            Store::open(&new.join(STORE_FILE))
                .expect("new")
                .snapshot()
                .expect("snap"),
        );
        assert_eq!(old, restored);
        released(&new.join(STORE_FILE)).await;
        // The restored directory opens as the same cluster.
        let c = crate::core::Coordinator::open(config, &new)
            .await
            .expect("open");
        assert_eq!(c.pki.ca().digest().to_string(), digest);
        assert_eq!(c.pki.current_token().token, token);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(900), "900 bytes");
        assert_eq!(human_size(12 * 1024 + 300), "12.3 KiB");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn exit_codes_follow_the_readme() {
        let fmt = |source| BackupError::Format {
            path: "f".into(),
            source,
        };
        assert_eq!(fmt(FormatError::WrongPassphrase).exit_code(), exit::REFUSED);
        assert_eq!(fmt(FormatError::NeedsPassphrase).exit_code(), exit::USAGE);
        assert_eq!(
            fmt(FormatError::Corrupt { reason: "x".into() }).exit_code(),
            exit::FAILURE
        );
        assert_eq!(
            BackupError::NotEmpty { dir: "d".into() }.exit_code(),
            exit::USAGE
        );
    }
}
