//! The backup file, encoded and decoded without I/O (so every refusal is
//! unit-tested on bytes).
//!
//! Layout: one line in clear, then the payload.
//!
//! ```text
//! apiary-backup 1 plain\n   SHA-256(body) ‖ body
//! apiary-backup 1 age\n     an age file (scrypt passphrase recipient) of SHA-256(body) ‖ body
//! ```
//!
//! `body` is the JSON of [`Contents`]. The first line says the format
//! version and whether a passphrase is needed, and nothing about the
//! cluster: a file from a newer apiary, or an encrypted one given without
//! its passphrase, is named as such before any decryption. The digest
//! inside the payload catches a damaged or truncated plain file (age
//! authenticates its own, and refuses a truncated stream).

use std::io::{Read, Write};

use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{CERTS_TABLE, NODES_TABLE, REVOKED_TABLE, Snapshot};

/// The format this coordinator writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "apiary-backup";
/// The first line is short; a file whose first 64 bytes hold no newline is
/// not a backup.
const MAX_HEADER: usize = 64;

/// Why a backup could not be made into bytes or read back. The I/O layer
/// adds the file's name.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an apiary backup (it does not start with `{MAGIC}`)")]
    NotABackup,
    #[error(
        "made by a newer apiary (backup format {found}; this coordinator reads format {FORMAT_VERSION} and older): restore it with that version"
    )]
    Newer { found: u32 },
    #[error(
        "encrypted with a passphrase: give it with --passphrase-file FILE or in APIARY_BACKUP_PASSPHRASE"
    )]
    NeedsPassphrase,
    #[error("wrong passphrase or not an apiary backup")]
    WrongPassphrase,
    #[error(
        "its passphrase encryption asks for more work (scrypt 2^{required}) than this machine allows (2^{allowed}); it was not made by apiary"
    )]
    ExcessiveWork { required: u8, allowed: u8 },
    #[error("corrupt or truncated: {reason}")]
    Corrupt { reason: String },
    #[error("incomplete: it holds no {missing}, which every coordinator needs")]
    Incomplete { missing: StatePath },
    #[error("cannot encrypt: {reason}")]
    Encrypt { reason: String },
    #[error("cannot encode: {reason}")]
    Encode { reason: String },
}

/// A passphrase, never printed (secrecy's `Debug` hides it).
#[derive(Debug, Clone)]
pub struct Passphrase {
    secret: SecretString,
    /// scrypt's work factor (log2 N); `None`: age's choice, about a second
    /// on this machine. Tests lower it.
    work_factor: Option<u8>,
}

impl Passphrase {
    pub fn new(secret: String) -> Self {
        Passphrase {
            secret: SecretString::from(secret),
            work_factor: None,
        }
    }

    #[cfg(test)]
    fn with_work_factor(secret: &str, log_n: u8) -> Self {
        Passphrase {
            secret: SecretString::from(secret.to_string()),
            work_factor: Some(log_n),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secret.expose_secret().is_empty()
    }
}

/// A file of the coordinator's state directory a backup carries, by its
/// path relative to that directory. Only the paths `serve` writes parse, so
/// a restore cannot be made to write anywhere else (no `..`, no absolute
/// path, no other name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatePath(String);

pub const CA_KEY: &str = "pki/ca.key";
pub const CA_CERT: &str = "pki/ca.pem";
pub const ADMIN_CONF: &str = "admin.conf";
pub const DATABASE_DIR: &str = "pki/database";

/// What every backup must hold: the CA (key and certificate) and the
/// operator's admin.conf.
pub const REQUIRED: [&str; 3] = [CA_KEY, CA_CERT, ADMIN_CONF];

impl StatePath {
    pub fn parse(path: &str) -> Result<Self, String> {
        if REQUIRED.contains(&path) {
            return Ok(StatePath(path.to_string()));
        }
        let file = path
            .strip_prefix(DATABASE_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| format!("{path:?} is not a file of a coordinator's state directory"))?;
        let stem = file
            .strip_suffix(".pem")
            .or_else(|| file.strip_suffix(".key"))
            .ok_or_else(|| format!("{path:?}: a database peer file ends in .pem or .key"))?;
        // Service names: a DNS label (etcd-1, rethinkdb-2).
        let label = !stem.is_empty()
            && stem.len() <= 63
            && stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !stem.starts_with('-');
        if !label {
            return Err(format!(
                "{path:?}: a database peer file is named after its service (a DNS label)"
            ));
        }
        Ok(StatePath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A database peer's key (`pki/database/NAME.key`).
    pub fn is_database_key(&self) -> bool {
        self.0.starts_with(DATABASE_DIR) && self.0.ends_with(".key")
    }
}

impl TryFrom<String> for StatePath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        StatePath::parse(&s)
    }
}

impl From<StatePath> for String {
    fn from(p: StatePath) -> String {
        p.0
    }
}

impl std::fmt::Display for StatePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of the state directory, as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub path: StatePath,
    #[serde(with = "crate::store::hex_bytes")]
    pub content: Vec<u8>,
}

/// Everything `serve` needs to serve the same cluster: the store and the
/// files beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    pub created_unix: u64,
    /// The apiary version that made it.
    pub apiary_version: String,
    pub cluster: String,
    /// SHA-256 of the CA certificate: the digest every join token carries.
    pub ca_digest: String,
    pub files: Vec<StateFile>,
    pub store: Snapshot,
}

impl Contents {
    /// Refuses contents that could not serve a cluster.
    fn check(&self) -> Result<(), FormatError> {
        for required in REQUIRED {
            if !self.files.iter().any(|f| f.path.as_str() == required) {
                return Err(FormatError::Incomplete {
                    missing: StatePath(required.to_string()),
                });
            }
        }
        Ok(())
    }

    pub fn file(&self, path: &str) -> Option<&StateFile> {
        self.files.iter().find(|f| f.path.as_str() == path)
    }
}

/// What a backup holds, as `coordinator backup` and `restore` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub format: u32,
    pub cluster: String,
    pub ca_digest: String,
    pub created_unix: u64,
    pub apiary_version: String,
    pub encrypted: bool,
    pub nodes: usize,
    pub certificates: usize,
    pub revocations: usize,
    pub database_peer_keys: usize,
    /// The file's size.
    pub bytes: usize,
}

impl Summary {
    pub fn of(contents: &Contents, encrypted: bool, bytes: usize) -> Self {
        Summary {
            format: FORMAT_VERSION,
            cluster: contents.cluster.clone(),
            ca_digest: contents.ca_digest.clone(),
            created_unix: contents.created_unix,
            apiary_version: contents.apiary_version.clone(),
            encrypted,
            nodes: contents.store.count(NODES_TABLE),
            certificates: contents.store.count(CERTS_TABLE),
            revocations: contents.store.count(REVOKED_TABLE),
            database_peer_keys: contents
                .files
                .iter()
                .filter(|f| f.path.is_database_key())
                .count(),
            bytes,
        }
    }
}

/// The file's bytes: encrypted when a passphrase is given.
pub fn encode(
    contents: &Contents,
    passphrase: Option<&Passphrase>,
) -> Result<Vec<u8>, FormatError> {
    contents.check()?;
    let body = serde_json::to_vec(contents).map_err(|e| FormatError::Encode {
        reason: e.to_string(),
    })?;
    let mut payload = Vec::with_capacity(32 + body.len());
    payload.extend_from_slice(&Sha256::digest(&body));
    payload.extend_from_slice(&body);
    let kind = if passphrase.is_some() { "age" } else { "plain" };
    let mut out = format!("{MAGIC} {FORMAT_VERSION} {kind}\n").into_bytes();
    match passphrase {
        None => out.extend_from_slice(&payload),
        Some(p) => {
            let mut recipient = age::scrypt::Recipient::new(p.secret.clone());
            if let Some(log_n) = p.work_factor {
                recipient.set_work_factor(log_n);
            }
            let encrypt = |e: &dyn std::fmt::Display| FormatError::Encrypt {
                reason: e.to_string(),
            };
            let encryptor =
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| encrypt(&e))?;
            let mut writer = encryptor.wrap_output(&mut out).map_err(|e| encrypt(&e))?;
            writer.write_all(&payload).map_err(|e| encrypt(&e))?;
            writer.finish().map_err(|e| encrypt(&e))?;
        }
    }
    Ok(out)
}

/// Whether the file needs a passphrase, read from its first line alone.
pub fn is_encrypted(bytes: &[u8]) -> Result<bool, FormatError> {
    Ok(header(bytes)?.0)
}

/// Reads a backup back. A plain file is read whether or not a passphrase
/// is given (nothing to check it against).
pub fn decode(bytes: &[u8], passphrase: Option<&Passphrase>) -> Result<Contents, FormatError> {
    let (encrypted, payload) = header(bytes)?;
    let plain;
    let payload = match (encrypted, passphrase) {
        (false, _) => payload,
        (true, None) => return Err(FormatError::NeedsPassphrase),
        (true, Some(p)) => {
            plain = decrypt(payload, p)?;
            plain.as_slice()
        }
    };
    if payload.len() < 32 {
        return Err(FormatError::Corrupt {
            reason: format!("{} bytes after the header line", payload.len()),
        });
    }
    let (digest, body) = payload.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(FormatError::Corrupt {
            reason: "its SHA-256 does not match its contents".into(),
        });
    }
    let contents: Contents = serde_json::from_slice(body).map_err(|e| FormatError::Corrupt {
        reason: e.to_string(),
    })?;
    contents.check()?;
    Ok(contents)
}

/// The first line: (encrypted, the payload after it).
fn header(bytes: &[u8]) -> Result<(bool, &[u8]), FormatError> {
    let end = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|b| *b == b'\n')
        .ok_or(if bytes.starts_with(MAGIC.as_bytes()) {
            FormatError::Corrupt {
                reason: "its first line is cut short".into(),
            }
        } else {
            FormatError::NotABackup
        })?;
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| FormatError::NotABackup)?;
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(FormatError::NotABackup);
    }
    let corrupt = |what: &str| FormatError::Corrupt {
        reason: format!("its first line ({line:?}) {what}"),
    };
    let version: u32 = words
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt("has no format version"))?;
    if version > FORMAT_VERSION {
        return Err(FormatError::Newer { found: version });
    }
    let encrypted = match words.next() {
        Some("plain") => false,
        Some("age") => true,
        _ => return Err(corrupt("says neither plain nor age")),
    };
    if words.next().is_some() {
        return Err(corrupt("has more words than it should"));
    }
    Ok((encrypted, &bytes[end + 1..]))
}

fn decrypt(ciphertext: &[u8], passphrase: &Passphrase) -> Result<Vec<u8>, FormatError> {
    use age::DecryptError as D;
    let classify = |e: D| match e {
        // The scrypt stanza's key did not open: the passphrase is not the
        // one it was sealed with (or the stanza is not ours).
        D::DecryptionFailed | D::NoMatchingKeys | D::KeyDecryptionFailed => {
            FormatError::WrongPassphrase
        }
        D::ExcessiveWork { required, target } => FormatError::ExcessiveWork {
            required,
            allowed: target.saturating_add(4),
        },
        D::InvalidHeader | D::InvalidMac | D::UnknownFormat => FormatError::Corrupt {
            reason: format!("its encryption header is damaged ({e})"),
        },
        D::Io(io) => FormatError::Corrupt {
            reason: io.to_string(),
        },
    };
    let identity = age::scrypt::Identity::new(passphrase.secret.clone());
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(classify)?;
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(classify)?;
    let mut plain = Vec::with_capacity(ciphertext.len());
    reader
        .read_to_end(&mut plain)
        .map_err(|e| FormatError::Corrupt {
            reason: format!("its encrypted data does not authenticate ({e})"),
        })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SnapshotEntry, SnapshotTable};

    fn contents() -> Contents {
        let file = |path: &str, content: &[u8]| StateFile {
            path: StatePath::parse(path).expect("path"),
            content: content.to_vec(),
        };
        let table = |name: &str, keys: &[&str]| SnapshotTable {
            name: name.into(),
            entries: keys
                .iter()
                .map(|k| SnapshotEntry {
                    key: (*k).into(),
                    value: vec![0, 1, 2, 255],
                })
                .collect(),
        };
        Contents {
            created_unix: 1_700_000_000,
            apiary_version: "0.1.0".into(),
            cluster: "test".into(),
            ca_digest: "ab".repeat(32),
            files: vec![
                file(CA_KEY, b"-----BEGIN PRIVATE KEY-----"),
                file(CA_CERT, b"-----BEGIN CERTIFICATE-----"),
                file(ADMIN_CONF, b"cluster = \"test\""),
                file("pki/database/etcd-1.key", b"k"),
                file("pki/database/etcd-1.pem", b"c"),
            ],
            store: Snapshot {
                tables: vec![
                    table(NODES_TABLE, &["bee-1", "bee-2"]),
                    table(CERTS_TABLE, &["01", "02", "03"]),
                    table(REVOKED_TABLE, &["03"]),
                    table("meta", &["join_token"]),
                ],
            },
        }
    }

    /// Low enough for a test's time, still the real scrypt path.
    fn pass(secret: &str) -> Passphrase {
        Passphrase::with_work_factor(secret, 4)
    }

    #[test]
    fn plain_and_encrypted_round_trip() {
        let c = contents();
        let plain = encode(&c, None).expect("encode");
        assert!(plain.starts_with(b"apiary-backup 1 plain\n"));
        assert!(!is_encrypted(&plain).expect("header"));
        assert_eq!(decode(&plain, None).expect("decode"), c);

        let sealed = encode(&c, Some(&pass("correct horse"))).expect("encrypt");
        assert!(sealed.starts_with(b"apiary-backup 1 age\n"));
        assert!(is_encrypted(&sealed).expect("header"));
        // Nothing of the cluster shows in clear.
        let clear = String::from_utf8_lossy(&sealed);
        assert!(!clear.contains("bee-1") && !clear.contains("PRIVATE KEY"));
        assert_eq!(
            decode(&sealed, Some(&pass("correct horse"))).expect("decrypt"),
            c
        );
    }

    #[test]
    fn the_summary_counts_what_the_backup_holds() {
        let s = Summary::of(&contents(), true, 1234);
        assert_eq!(
            (
                s.nodes,
                s.certificates,
                s.revocations,
                s.database_peer_keys,
                s.bytes
            ),
            (2, 3, 1, 1, 1234)
        );
        assert!(s.encrypted);
        assert_eq!(s.format, FORMAT_VERSION);
    }

    #[test]
    fn a_wrong_or_missing_passphrase_is_refused_as_such() {
        let sealed = encode(&contents(), Some(&pass("right"))).expect("encrypt");
        assert!(matches!(
            decode(&sealed, Some(&pass("wrong"))),
            Err(FormatError::WrongPassphrase)
        ));
        assert!(matches!(
            decode(&sealed, None),
            Err(FormatError::NeedsPassphrase)
        ));
        assert_eq!(
            FormatError::WrongPassphrase.to_string(),
            "wrong passphrase or not an apiary backup"
        );
    }

    #[test]
    fn truncated_or_damaged_files_are_named_corrupt() {
        let c = contents();
        for bytes in [
            encode(&c, None).expect("plain"),
            encode(&c, Some(&pass("p"))).expect("sealed"),
        ] {
            let header_len = bytes.iter().position(|b| *b == b'\n').expect("nl") + 1;
            for cut in [
                header_len,
                header_len + 10,
                bytes.len() / 2,
                bytes.len() - 1,
            ] {
                let r = decode(&bytes[..cut], Some(&pass("p")));
                assert!(
                    matches!(r, Err(FormatError::Corrupt { .. })),
                    "cut at {cut} of {}: {r:?}",
                    bytes.len()
                );
            }
            let mut flipped = bytes.clone();
            let last = flipped.len() - 5;
            flipped[last] ^= 0x40;
            let r = decode(&flipped, Some(&pass("p")));
            assert!(matches!(r, Err(FormatError::Corrupt { .. })), "{r:?}");
        }
        // The first line cut short.
        assert!(matches!(
            decode(b"apiary-backup 1 pl", None),
            Err(FormatError::Corrupt { .. })
        ));
    }

    #[test]
    fn other_files_and_newer_formats_are_refused_before_decrypting() {
        assert!(matches!(
            decode(b"hello world\n", None),
            Err(FormatError::NotABackup)
        ));
        assert!(matches!(decode(b"", None), Err(FormatError::NotABackup)));
        let mut newer = encode(&contents(), None).expect("encode");
        newer.splice(
            ..b"apiary-backup 1".len(),
            b"apiary-backup 2".iter().copied(),
        );
        let e = decode(&newer, None).expect_err("newer");
        assert!(matches!(e, FormatError::Newer { found: 2 }), "{e:?}");
        assert!(e.to_string().contains("format 2"), "{e}");
        assert!(matches!(
            decode(b"apiary-backup 1 zip\n", None),
            Err(FormatError::Corrupt { .. })
        ));
    }

    #[test]
    fn only_the_state_directory_files_serve_writes_are_paths() {
        for ok in [
            "pki/ca.key",
            "pki/ca.pem",
            "admin.conf",
            "pki/database/etcd-1.key",
            "pki/database/rethinkdb-12.pem",
        ] {
            assert!(StatePath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../admin.conf",
            "pki/../../x",
            "pki/database/../ca.key",
            "pki/database/.key",
            "pki/database/a/b.key",
            "pki/database/x.txt",
            "pki/database/-x.key",
            "state.redb",
            "lab/queenbee/agent/node.key",
        ] {
            assert!(StatePath::parse(bad).is_err(), "{bad:?} was accepted");
        }
        // And the same holds when a file is decoded.
        let mut c = contents();
        c.files[3].path = StatePath("pki/database/../../../etc/x.key".into());
        let bytes = encode(&c, None).expect("encode");
        assert!(matches!(
            decode(&bytes, None),
            Err(FormatError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_backup_without_the_ca_is_refused() {
        let mut c = contents();
        c.files.retain(|f| f.path.as_str() != CA_KEY);
        assert!(matches!(
            encode(&c, None),
            Err(FormatError::Incomplete { .. })
        ));
    }
}
