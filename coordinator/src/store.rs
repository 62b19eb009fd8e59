//! The coordinator's durable state: nodes, certificates issued, revocations and
//! the join token, in one redb file under the state directory.
//!
//! Writes go through one writer thread that commits everything queued at that
//! moment in a single transaction (group commit): every caller still waits for
//! its own data to be durable (redb's default, fsync'd) before it answers, but
//! a burst of enrollments costs one fsync, not one each. Reads are lock-free
//! MVCC read transactions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new(NODES_TABLE);
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new(CERTS_TABLE);
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new(REVOKED_TABLE);
const FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("facts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HOST_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new(HOST_TOKENS_TABLE);

/// Every table, in the order a snapshot lists them.
const TABLES: [TableDefinition<&str, &[u8]>; 6] = [NODES, CERTS, REVOKED, FACTS, META, HOST_TOKENS];

/// Table names as a [`Snapshot`] carries them.
pub const NODES_TABLE: &str = "nodes";
pub const CERTS_TABLE: &str = "certs";
pub const REVOKED_TABLE: &str = "revoked";
pub const HOST_TOKENS_TABLE: &str = "host_tokens";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state store {path} is in use by another coordinator process; stop it first (or, for `coordinator token`, let the running coordinator answer)"
    )]
    InUse { path: PathBuf },
    #[error("cannot open state store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state store: {0}")]
    Db(String),
    #[error("state store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("state store record {key} cannot be encoded: {reason}")]
    Encode { key: String, reason: String },
    #[error("state store writer stopped")]
    Closed,
    #[error(
        "cannot restore the store into {path}: a file is already there; restore into an empty directory"
    )]
    Exists { path: PathBuf },
    #[error(
        "the snapshot holds a table {table:?} this coordinator does not know; restore it with the apiary version that made it"
    )]
    UnknownTable { table: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Db(e.to_string()) } })*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub enrolled_unix: u64,
    pub cert_serial: String,
    pub cert_not_after_unix: u64,
    #[serde(default)]
    pub last_seen_unix_ms: u64,
    #[serde(default)]
    pub provider_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertRecord {
    pub serial: String,
    pub node: String,
    pub role: String,
    pub issued_unix: u64,
    pub not_after_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevocationRecord {
    pub serial: String,
    pub node: String,
    pub revoked_unix: u64,
}

/// The join token in force, and the hashes of rotated ones (so a refusal can
/// say "rotated" rather than "wrong").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub token: String,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    #[serde(default)]
    pub rotated_hashes: Vec<String>,
}

/// A join token the coordinator made for one host it creates (a droplet, a
/// lab host): it enrolls that host's name once, before it expires. Keyed by
/// the hash of its secret; the token itself is never stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostTokenRecord {
    pub secret_hash: String,
    pub node: String,
    pub created_unix: u64,
    pub expires_unix: u64,
    /// When it enrolled its node; a used token is refused.
    pub used_unix: Option<u64>,
}

/// The database server count `ctl scale database=N` set, overriding the
/// config's until the next scale (a restarted coordinator keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseScaleRecord {
    pub servers: usize,
    pub set_unix: u64,
}

/// The host count `ctl scale hosts=N` set, overriding the config's
/// `provider.hosts` until the next scale (a restarted coordinator keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostScaleRecord {
    pub hosts: usize,
    pub set_unix: u64,
}

/// The host a rolling reboot (`ctl hosts reboot`) is at: drained, being
/// power-cycled or waited for. Cleared once it is back and active.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RebootRecord {
    pub node: String,
    pub started_unix: u64,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Op {
    PutNode(NodeRecord),
    DeleteNode(String),
    PutCert(CertRecord),
    Revoke(RevocationRecord),
    PutFacts {
        node: String,
        encoded: Vec<u8>,
    },
    PutToken(TokenRecord),
    PutHostToken(HostTokenRecord),
    /// By secret hash.
    DeleteHostToken(String),
    PutDatabaseScale(DatabaseScaleRecord),
    PutHostScale(HostScaleRecord),
    /// `None` clears it.
    PutReboot(Option<RebootRecord>),
    /// The last pre-Swarm port matrix (`ctl checks --json`'s
    /// `pre_swarm_cells`): once Swarm holds the ports it cannot be measured
    /// again, so a restarted coordinator reads it back.
    PutPreSwarmCells(Vec<apiary_api::reach::Cell>),
    /// The coordinator endpoints operators added (`ctl coordinator
    /// endpoints`), the whole list: in the store so that a backup, and the
    /// coordinator restored from it, carries them.
    PutCoordinatorEndpoints(Vec<apiary_api::endpoints::CoordinatorEndpoint>),
}

type Batch = (Vec<Op>, oneshot::Sender<Result<(), StoreError>>);

/// The whole store as its records are stored (values opaque), for backups.
/// Read in one read transaction, so it is one consistent point in time even
/// while writes go on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub tables: Vec<SnapshotTable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTable {
    pub name: String,
    pub entries: Vec<SnapshotEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotEntry {
    pub key: String,
    /// Hex in JSON: records are JSON or protobuf bytes.
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

impl Snapshot {
    /// How many records table `name` holds.
    pub fn count(&self, name: &str) -> usize {
        self.tables
            .iter()
            .filter(|t| t.name == name)
            .map(|t| t.entries.len())
            .sum()
    }
}

/// Bytes as hex text in JSON (also the backup file's).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::UnboundedSender<Batch>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

const TOKEN_KEY: &str = "join_token";
const DATABASE_SCALE_KEY: &str = "database_scale";
const HOST_SCALE_KEY: &str = "host_scale";
const REBOOT_KEY: &str = "reboot";
const PRE_SWARM_KEY: &str = "pre_swarm_cells";
const ENDPOINTS_KEY: &str = "coordinator_endpoints";

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path).map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            other => StoreError::Open {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        let txn = db.begin_write()?;
        for table in TABLES {
            txn.open_table(table)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (writer, rx) = mpsc::unbounded_channel();
        let thread_db = db.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&thread_db, rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Store { db, writer })
    }

    /// Applies `ops` atomically and durably (together with whatever else is queued).
    pub async fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((ops, tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn one<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        table.get(key)?.map(|v| decode(key, v.value())).transpose()
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all(NODES)
    }

    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.one(NODES, name)
    }

    pub fn certs(&self) -> Result<Vec<CertRecord>, StoreError> {
        self.all(CERTS)
    }

    pub fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.all(REVOKED)
    }

    pub fn token(&self) -> Result<Option<TokenRecord>, StoreError> {
        self.one(META, TOKEN_KEY)
    }

    pub fn host_tokens(&self) -> Result<Vec<HostTokenRecord>, StoreError> {
        self.all(HOST_TOKENS)
    }

    pub fn host_token(&self, secret_hash: &str) -> Result<Option<HostTokenRecord>, StoreError> {
        self.one(HOST_TOKENS, secret_hash)
    }

    pub fn database_scale(&self) -> Result<Option<DatabaseScaleRecord>, StoreError> {
        self.one(META, DATABASE_SCALE_KEY)
    }

    pub fn host_scale(&self) -> Result<Option<HostScaleRecord>, StoreError> {
        self.one(META, HOST_SCALE_KEY)
    }

    pub fn reboot(&self) -> Result<Option<RebootRecord>, StoreError> {
        self.one(META, REBOOT_KEY)
    }

    pub fn pre_swarm_cells(&self) -> Result<Vec<apiary_api::reach::Cell>, StoreError> {
        Ok(self.one(META, PRE_SWARM_KEY)?.unwrap_or_default())
    }

    /// The coordinator endpoints operators added, in the order they were.
    pub fn coordinator_endpoints(
        &self,
    ) -> Result<Vec<apiary_api::endpoints::CoordinatorEndpoint>, StoreError> {
        Ok(self.one(META, ENDPOINTS_KEY)?.unwrap_or_default())
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.one(CERTS, serial)
    }

    /// Every table's records, read in one read transaction (MVCC: writers
    /// are not held up, and the snapshot is one commit's state).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        let mut tables = Vec::with_capacity(TABLES.len());
        for def in TABLES {
            let table = txn.open_table(def)?;
            let mut entries = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                entries.push(SnapshotEntry {
                    key: k.value().to_string(),
                    value: v.value().to_vec(),
                });
            }
            tables.push(SnapshotTable {
                name: def.name().to_string(),
                entries,
            });
        }
        Ok(Snapshot { tables })
    }

    /// Writes `snapshot` into a new store file at `path` (which must not
    /// exist) in one durable transaction, and closes it. Blocking.
    pub fn create_from(path: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
        if path.exists() {
            return Err(StoreError::Exists {
                path: path.to_path_buf(),
            });
        }
        // Unknown tables are refused before anything is written.
        let defs = snapshot
            .tables
            .iter()
            .map(|t| {
                TABLES
                    .into_iter()
                    .find(|d| d.name() == t.name)
                    .map(|d| (d, t))
                    .ok_or_else(|| StoreError::UnknownTable {
                        table: t.name.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        create_private(path).map_err(|e| open_err(e.to_string()))?;
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write()?;
        for def in TABLES {
            txn.open_table(def)?;
        }
        for (def, dump) in defs {
            let mut table = txn.open_table(def)?;
            for e in &dump.entries {
                table.insert(e.key.as_str(), e.value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn facts(&self, node: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FACTS)?;
        Ok(table.get(node)?.map(|v| v.value().to_vec()))
    }
}

/// Creates the store's file empty and 0600 if it is not there (redb
/// initialises an empty file; left to itself it would create it 0644). It
/// holds the join token.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A record as stored. These plain records always serialize (no maps with
/// non-string keys); if one ever did not, the whole group commit fails
/// rather than store an empty record.
fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn writer_loop(db: &Database, mut rx: mpsc::UnboundedReceiver<Batch>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let result = commit(db, batch.iter().flat_map(|(ops, _)| ops.iter()));
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

fn commit<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut nodes = txn.open_table(NODES)?;
        let mut certs = txn.open_table(CERTS)?;
        let mut revoked = txn.open_table(REVOKED)?;
        let mut facts = txn.open_table(FACTS)?;
        let mut meta = txn.open_table(META)?;
        let mut host_tokens = txn.open_table(HOST_TOKENS)?;
        for op in ops {
            match op {
                Op::PutNode(n) => {
                    nodes.insert(n.name.as_str(), encode(&n.name, n)?.as_slice())?;
                }
                Op::DeleteNode(name) => {
                    nodes.remove(name.as_str())?;
                    facts.remove(name.as_str())?;
                }
                Op::PutCert(c) => {
                    certs.insert(c.serial.as_str(), encode(&c.serial, c)?.as_slice())?;
                }
                Op::Revoke(r) => {
                    revoked.insert(r.serial.as_str(), encode(&r.serial, r)?.as_slice())?;
                }
                Op::PutFacts { node, encoded } => {
                    facts.insert(node.as_str(), encoded.as_slice())?;
                }
                Op::PutToken(t) => {
                    meta.insert(TOKEN_KEY, encode(TOKEN_KEY, t)?.as_slice())?;
                }
                Op::PutHostToken(t) => {
                    host_tokens.insert(
                        t.secret_hash.as_str(),
                        encode(&t.secret_hash, t)?.as_slice(),
                    )?;
                }
                Op::DeleteHostToken(hash) => {
                    host_tokens.remove(hash.as_str())?;
                }
                Op::PutDatabaseScale(d) => {
                    meta.insert(
                        DATABASE_SCALE_KEY,
                        encode(DATABASE_SCALE_KEY, d)?.as_slice(),
                    )?;
                }
                Op::PutHostScale(h) => {
                    meta.insert(HOST_SCALE_KEY, encode(HOST_SCALE_KEY, h)?.as_slice())?;
                }
                Op::PutReboot(Some(r)) => {
                    meta.insert(REBOOT_KEY, encode(REBOOT_KEY, r)?.as_slice())?;
                }
                Op::PutReboot(None) => {
                    meta.remove(REBOOT_KEY)?;
                }
                Op::PutPreSwarmCells(cells) => {
                    meta.insert(PRE_SWARM_KEY, encode(PRE_SWARM_KEY, cells)?.as_slice())?;
                }
                Op::PutCoordinatorEndpoints(list) => {
                    meta.insert(ENDPOINTS_KEY, encode(ENDPOINTS_KEY, list)?.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            enrolled_unix: 1,
            cert_serial: "01".into(),
            cert_not_after_unix: 2,
            last_seen_unix_ms: 0,
            provider_id: String::new(),
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_refuses_second_opener() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).expect("open");
            assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
            store
                .apply(vec![
                    Op::PutNode(node("a")),
                    Op::PutNode(node("b")),
                    Op::Revoke(RevocationRecord {
                        serial: "ff".into(),
                        node: "c".into(),
                        revoked_unix: 3,
                    }),
                    Op::PutDatabaseScale(DatabaseScaleRecord {
                        servers: 3,
                        set_unix: 4,
                    }),
                    Op::PutPreSwarmCells(vec![pre_swarm_cell()]),
                ])
                .await
                .expect("apply");
            store
                .apply(vec![Op::DeleteNode("b".into())])
                .await
                .expect("delete");
        }
        // The writer thread holds the database until its channel closes.
        let store = loop {
            match Store::open(&path) {
                Ok(s) => break s,
                Err(StoreError::InUse { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(store.nodes().expect("nodes"), vec![node("a")]);
        assert_eq!(store.revocations().expect("rev").len(), 1);
        assert_eq!(
            store.database_scale().expect("scale").map(|d| d.servers),
            Some(3)
        );
        assert_eq!(
            store.pre_swarm_cells().expect("pre-swarm"),
            vec![pre_swarm_cell()]
        );
    }

    fn pre_swarm_cell() -> apiary_api::reach::Cell {
        use apiary_api::reach::{Cell, Check, Outcome, Proto};
        Cell {
            src: "queenbee".into(),
            dst: "workerbee-1".into(),
            addr: std::net::Ipv4Addr::new(10, 231, 0, 12),
            port: 7946,
            proto: Proto::Udp,
            check: Check::Direct,
            outcome: Outcome::Open,
            rtt: Some(std::time::Duration::from_micros(250)),
            detail: None,
        }
    }

    #[tokio::test]
    async fn a_snapshot_makes_a_store_with_the_same_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("a.redb")).expect("open");
        store
            .apply(vec![
                Op::PutNode(node("a")),
                Op::Revoke(RevocationRecord {
                    serial: "ff".into(),
                    node: "c".into(),
                    revoked_unix: 3,
                }),
                Op::PutFacts {
                    node: "a".into(),
                    encoded: vec![0, 159, 146, 150],
                },
            ])
            .await
            .expect("apply");
        let snapshot = store.snapshot().expect("snapshot");
        assert_eq!(snapshot.count(NODES_TABLE), 1);
        assert_eq!(snapshot.count(REVOKED_TABLE), 1);
        // Through JSON, as a backup carries it.
        let json = serde_json::to_vec(&snapshot).expect("json");
        let back: Snapshot = serde_json::from_slice(&json).expect("back");
        assert_eq!(back, snapshot);

        let copy = dir.path().join("b.redb");
        Store::create_from(&copy, &back).expect("create");
        assert!(matches!(
            Store::create_from(&copy, &back),
            Err(StoreError::Exists { .. })
        ));
        for file in ["a.redb", "b.redb"] {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join(file)).expect("meta");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        let copy = Store::open(&copy).expect("reopen");
        assert_eq!(copy.snapshot().expect("snapshot"), snapshot);
        assert_eq!(copy.nodes().expect("nodes"), vec![node("a")]);
        assert_eq!(
            copy.facts("a").expect("facts"),
            Some(vec![0, 159, 146, 150])
        );

        let mut unknown = snapshot.clone();
        unknown.tables.push(SnapshotTable {
            name: "future".into(),
            entries: Vec::new(),
        });
        let third = dir.path().join("c.redb");
        assert!(matches!(
            Store::create_from(&third, &unknown),
            Err(StoreError::UnknownTable { .. })
        ));
        assert!(!third.exists(), "nothing is written for a refused snapshot");
    }

    #[tokio::test]
    async fn concurrent_writers_all_land() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.redb")).expect("open");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(
                    async move { s.apply(vec![Op::PutNode(node(&format!("n{i}")))]).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("apply");
        }
        assert_eq!(store.nodes().expect("nodes").len(), 200);
    }
}
