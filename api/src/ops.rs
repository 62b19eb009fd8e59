//! The operations a coordinator asks an agent to run on its host, each with
//! the type of its reply.
//!
//! Every operation is a struct implementing [`Operation`]; [`OpRequest`] is
//! the sum of them as it travels (JSON, tagged by `op`, inside the session's
//! `AgentOp` message), and the reply travels back as the JSON of
//! [`Operation::Reply`] inside `OpResult`. The coordinator's `call::<O>` and
//! the agent's dispatcher both go through [`encode_reply`] /
//! [`decode_reply`] for one `O`, so a reply of the wrong shape is a compile
//! error on the agent's side and a typed decode error on the coordinator's,
//! never a `serde_json::Value` read by key.
//!
//! An agent answers an operation it cannot run with a sentence for the
//! operator (`OpResult.error`); the coordinator wraps it with the node and
//! the operation.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::database::{
    AdminCredentials, DatabaseKind, ServerHealth, ServiceSpec, ServiceState, ShardConfig,
    TableConfig,
};
use crate::endpoints::CoordinatorEndpoint;
use crate::reach::{Cell, Target};
use crate::swarm::{JoinTokens, OverlaySpec, OverlayStatus, ProbeEndpoint, SwarmView};

/// One operation and what it answers.
pub trait Operation: Serialize + DeserializeOwned + Into<OpRequest> + Send + 'static {
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// How long the coordinator waits for the answer.
    const TIMEOUT: Duration;
}

/// The JSON of a reply, as an agent sends it.
pub fn encode_reply<O: Operation>(reply: &O::Reply) -> Result<String, serde_json::Error> {
    serde_json::to_string(reply)
}

/// A reply read back as the operation's reply type.
pub fn decode_reply<O: Operation>(json: &str) -> Result<O::Reply, serde_json::Error> {
    serde_json::from_str(json)
}

/// The ports a responder listens on, as it reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponderPorts {
    pub ports: Vec<String>,
}

/// Whether an idempotent change changed anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub changed: bool,
}

/// Whether this host left the swarm (false: it was not in one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub left: bool,
}

/// Whether a thing was removed (false: it was gone already).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: bool,
}

/// A command run in a container: its exit code and combined output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub code: i64,
    pub output: String,
}

/// Quick questions to the local engine: an engine that does not answer in
/// seconds is down, and a check round must not wait a minute to say so.
const QUICK: Duration = Duration::from_secs(5);
/// The default for changes through the local engine.
const CHANGE: Duration = Duration::from_secs(15);
/// Probes and database commands, which wait on the network themselves.
const PROBE: Duration = Duration::from_secs(30);
/// Swarm init and join take Raft rounds and a certificate issue.
const SWARM: Duration = Duration::from_secs(60);

macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $name:ident $(as $tag:literal)? { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? }
            -> $reply:ty, $timeout:expr;
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct $name { $($(#[$fdoc])* pub $field: $fty),* }

            impl Operation for $name {
                type Reply = $reply;
                const TIMEOUT: Duration = $timeout;
            }

            impl From<$name> for OpRequest {
                fn from(op: $name) -> Self {
                    OpRequest::$name(op)
                }
            }
        )*

        /// Every operation, as it travels.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum OpRequest {
            $( $(#[serde(rename = $tag)])? $name($name), )*
        }

        impl OpRequest {
            /// How long the coordinator waits for an answer.
            pub fn timeout(&self) -> Duration {
                match self { $( OpRequest::$name(_) => <$name as Operation>::TIMEOUT, )* }
            }

            /// The operation's name, for logs and errors.
            pub fn name(&self) -> &'static str {
                match self { $( OpRequest::$name(_) => stringify!($name), )* }
            }
        }
    };
}

operations! {
    /// Listen on the cluster ports (2377/tcp for managers) to be probed,
    /// before Swarm takes them.
    StartResponder { manager: bool } -> ResponderPorts, CHANGE;
    StopResponder {} -> (), CHANGE;
    /// Answer ESP (IP protocol 50) probes on the private address, for an
    /// encrypted overlay; idempotent, and kept through Swarm (which never
    /// holds protocol 50), unlike the port responder.
    StartEspResponder {} -> (), CHANGE;
    Probe { targets: Vec<Target>, timeout_ms: u64 } -> Vec<Cell>, PROBE;
    /// The local node's view of Swarm.
    ReadSwarm as "swarm_view" {} -> SwarmView, QUICK;
    SwarmInit { advertise_ip: Ipv4Addr, default_addr_pool: Vec<String> } -> SwarmView, SWARM;
    /// The swarm's join tokens (a manager's agent).
    ReadJoinTokens as "join_tokens" {} -> JoinTokens, CHANGE;
    SwarmJoin { remote: SocketAddr, token: String, advertise_ip: Ipv4Addr } -> SwarmView, SWARM;
    SetLabels { node: String, labels: BTreeMap<String, String> } -> Changed, CHANGE;
    /// Drain and demote `node` (a manager's agent).
    SwarmDrain { node: String } -> Changed, CHANGE;
    /// Set `node`'s availability (a manager's agent): `active` false drains
    /// its tasks away for maintenance, true takes tasks again; its role
    /// stays.
    SwarmAvailability { node: String, active: bool } -> Changed, CHANGE;
    /// Make `node` a manager (a manager's agent): a host that joined as a
    /// worker while fewer hosts were ready, now one of the first
    /// `manager_count` in placement order.
    SwarmPromote { node: String } -> Changed, CHANGE;
    /// This host leaves the swarm.
    SwarmLeave {} -> Left, CHANGE;
    /// Remove `node` from the node list (a manager's agent).
    SwarmRemoveNode { node: String } -> Removed, CHANGE;
    EnsureOverlay { spec: OverlaySpec } -> OverlayStatus, CHANGE;
    EnsureProbe { network: String } -> ProbeEndpoint, Duration::from_secs(20);
    OverlayProbe { local: ProbeEndpoint, peers: Vec<ProbeEndpoint> } -> Vec<Cell>, PROBE;
    /// Ok, or the missing kernel pieces for an encrypted overlay.
    EncryptionSupport {} -> (), CHANGE;
    /// Creates a database server's service unless it exists (a manager's agent).
    EnsureService {
        /// Boxed: with its certificate it is the largest request by far.
        spec: Box<ServiceSpec>,
    } -> ServiceState, CHANGE;
    /// Removes a service.
    RemoveService { name: String } -> Removed, CHANGE;
    /// How the database server of `service` on this host answers over the
    /// database's own protocol.
    DatabaseHealth {
        kind: DatabaseKind,
        service: String,
        /// The administrator's credentials, when the database has them.
        #[serde(default)]
        admin: Option<AdminCredentials>,
    } -> ServerHealth, PROBE;
    /// Every RethinkDB table's placement and readiness, read through the
    /// server of `service` on this host.
    RethinkdbTables { service: String, admin: Option<AdminCredentials> } -> Vec<TableConfig>, PROBE;
    /// Places a RethinkDB table's shards (`table_config` written through the
    /// server of `service` on this host); RethinkDB moves the data.
    RethinkdbPlaceTable {
        service: String,
        admin: Option<AdminCredentials>,
        table_id: String,
        shards: Vec<ShardConfig>,
    } -> (), PROBE;
    /// Runs a command in the running container of `service` on this host
    /// (etcd member add/remove through etcdctl).
    DatabaseExec { service: String, command: Vec<String> } -> ExecOutput, PROBE;
    /// The endpoints this agent may reach the coordinator at (besides the
    /// one it is configured with), replacing the ones it was told before;
    /// the agent saves them and fails over along them. Sent to every
    /// connected agent when `ctl coordinator endpoints` changes the list
    /// (each session's welcome carries it too).
    SetCoordinatorEndpoints { endpoints: Vec<CoordinatorEndpoint> } -> Changed, QUICK;
    /// Replace this agent with the build the coordinator serves (`ctl hosts
    /// upgrade`): download it over the agent's identity (`FetchAgent`),
    /// check its length and SHA-256, keep the running binary beside it, swap
    /// atomically, answer, then restart as the new build with the same
    /// identity and state. If the new agent has not connected within
    /// `deadline_ms`, the host puts the old binary back and starts it.
    UpgradeAgent {
        version: String,
        sha256: String,
        size: u64,
        deadline_ms: u64,
    } -> UpgradeStarted, Duration::from_secs(180);
}

/// An agent's answer to [`UpgradeAgent`]: the new binary is in place and
/// the agent restarts into it right after answering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStarted {
    /// The version it replaces.
    pub from: String,
    /// Where the old binary is kept for the rollback.
    pub previous: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_keep_their_wire_names() {
        let json = |op: OpRequest| serde_json::to_value(op).expect("serializes");
        assert_eq!(
            json(ReadSwarm {}.into()),
            serde_json::json!({"op": "swarm_view"})
        );
        assert_eq!(
            json(ReadJoinTokens {}.into()),
            serde_json::json!({"op": "join_tokens"})
        );
        assert_eq!(
            json(SwarmDrain { node: "w1".into() }.into()),
            serde_json::json!({"op": "swarm_drain", "node": "w1"})
        );
        let back: OpRequest =
            serde_json::from_str(r#"{"op":"start_responder","manager":true}"#).expect("parses");
        assert_eq!(back, StartResponder { manager: true }.into());
        assert_eq!(back.name(), "StartResponder");
        assert_eq!(back.timeout(), CHANGE);
    }

    #[test]
    fn replies_decode_as_their_operations_type() {
        let json = encode_reply::<ReadJoinTokens>(&JoinTokens {
            worker: "w".into(),
            manager: "m".into(),
        })
        .expect("encodes");
        let tokens = decode_reply::<ReadJoinTokens>(&json).expect("decodes");
        assert_eq!(tokens.manager, "m");
        // A reply of another operation's shape is an error, not a default.
        assert!(decode_reply::<DatabaseExec>(&json).is_err());
        assert!(decode_reply::<StopResponder>("null").is_ok());
    }
}
