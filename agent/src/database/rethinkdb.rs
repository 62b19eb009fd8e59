//! RethinkDB's wire protocol, as far as apiary needs it: the V1_0 handshake
//! with SCRAM-SHA-256 authentication (RFC 5802/7677), then queries on the
//! system tables: `server_status` and `table_status` (health),
//! `table_config` (where tables live, and moving them off a server).
//!
//! Hand-written because the few terms needed are simpler than a driver:
//! the Rust drivers on crates.io (`reql`) are unmaintained since 2021 and
//! pull in their own runtime stack.
//!
//! Written from the protocol's published description: the client sends the
//! magic number V1_0 (0x34c2bdc3, little-endian); every handshake message
//! after that is a NUL-terminated JSON object; queries are framed as an
//! 8-byte token and a 4-byte length (both little-endian) before the JSON.
//! HMAC, PBKDF2 (`Hi`) and base64 come from RustCrypto's `hmac` and `pbkdf2`
//! and the `base64` crate.

use apiary_api::database::{ShardConfig, TableConfig, TablesHealth};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const V1_0: u32 = 0x34c2_bdc3;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key)
        .expect("HMAC takes keys of any length (longer ones are hashed)");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one block: SCRAM's `Hi`.
/// The most PBKDF2 iterations a server may ask of this client.
pub const MAX_ITERATIONS: u32 = 1_000_000;

pub fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

pub fn b64encode(data: &[u8]) -> String {
    BASE64.encode(data)
}

pub fn b64decode(s: &str) -> Option<Vec<u8>> {
    BASE64.decode(s).ok()
}

/// A SCRAM-SHA-256 client conversation.
pub struct Scram {
    user: String,
    password: String,
    client_nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl Scram {
    pub fn new(user: &str, password: &str, client_nonce: &str) -> Scram {
        Scram {
            user: user.replace('=', "=3D").replace(',', "=2C"),
            password: password.to_string(),
            client_nonce: client_nonce.to_string(),
            server_signature: None,
        }
    }

    fn first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.client_nonce)
    }

    /// `n,,n=<user>,r=<nonce>`.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .ok_or_else(|| format!("SCRAM: no {k}= in {server_first:?}"))
        };
        let nonce = field("r")?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err("SCRAM: the server's nonce does not extend ours".into());
        }
        let salt = b64decode(field("s")?).ok_or("SCRAM: bad salt")?;
        let iterations: u32 = field("i")?
            .parse()
            .map_err(|_| "SCRAM: bad iteration count")?;
        // The server chooses the work: a hostile one could ask for hours of
        // PBKDF2. RethinkDB uses 4096.
        if iterations > MAX_ITERATIONS {
            return Err(format!(
                "SCRAM: the server asks for {iterations} iterations, over the {MAX_ITERATIONS} this client does"
            ));
        }
        let salted = hi(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare());
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        self.server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", b64encode(&proof)))
    }

    /// Checks the server-final message (`v=<signature>`): the server knew the password.
    pub fn verify(&self, server_final: &str) -> Result<(), String> {
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .and_then(b64decode)
            .ok_or("SCRAM: no server signature")?;
        match self.server_signature {
            Some(s) if s.as_slice() == v.as_slice() => Ok(()),
            _ => Err("SCRAM: the server's signature is wrong".into()),
        }
    }
}

async fn read_nul_json<S: AsyncRead + Unpin>(s: &mut S) -> Result<Value, String> {
    let mut buf = Vec::new();
    loop {
        let b = s.read_u8().await.map_err(|e| format!("handshake: {e}"))?;
        if b == 0 {
            break;
        }
        buf.push(b);
        if buf.len() > 64 * 1024 {
            return Err("handshake: answer too long".into());
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let v: Value =
        serde_json::from_str(&text).map_err(|_| format!("handshake: not JSON: {}", text.trim()))?;
    if v["success"] != true {
        return Err(format!(
            "handshake refused: {}",
            v["error"].as_str().unwrap_or(&text)
        ));
    }
    Ok(v)
}

async fn write_nul_json<S: AsyncWrite + Unpin>(s: &mut S, v: &Value) -> Result<(), String> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(0);
    s.write_all(&b).await.map_err(|e| format!("handshake: {e}"))
}

/// The V1_0 handshake with SCRAM-SHA-256; returns the server's version.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
    password: &str,
    client_nonce: &str,
) -> Result<String, String> {
    s.write_all(&V1_0.to_le_bytes())
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let hello = read_nul_json(s).await?;
    let mut scram = Scram::new(user, password, client_nonce);
    write_nul_json(
        s,
        &json!({
            "protocol_version": 0,
            "authentication_method": "SCRAM-SHA-256",
            "authentication": scram.client_first(),
        }),
    )
    .await?;
    let first = read_nul_json(s).await?;
    let fin = scram.client_final(first["authentication"].as_str().unwrap_or_default())?;
    write_nul_json(s, &json!({ "authentication": fin })).await?;
    let last = read_nul_json(s).await?;
    scram.verify(last["authentication"].as_str().unwrap_or_default())?;
    Ok(hello["server_version"].as_str().unwrap_or("").to_string())
}

/// Runs one query term; returns the response's `r`.
pub async fn query<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: u64,
    term: Value,
) -> Result<Value, String> {
    let body = serde_json::to_vec(&json!([1, term, {}])).unwrap_or_default();
    let mut frame = token.to_le_bytes().to_vec();
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    s.write_all(&frame)
        .await
        .map_err(|e| format!("query: {e}"))?;
    let got = s.read_u64_le().await.map_err(|e| format!("query: {e}"))?;
    let len = s.read_u32_le().await.map_err(|e| format!("query: {e}"))? as usize;
    if got != token || len > 16 << 20 {
        return Err("query: bad response frame".into());
    }
    let mut buf = vec![0; len];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| format!("query: {e}"))?;
    let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("query: {e}"))?;
    match v["t"].as_i64() {
        Some(1) | Some(2) => Ok(v["r"].clone()),
        _ => Err(format!("query failed: {}", v["r"])),
    }
}

// ReQL term types (ql2.proto's Term.TermType) used here.
const MAKE_ARRAY: u32 = 2;
const DB: u32 = 14;
const TABLE: u32 = 15;
const GET: u32 = 16;
const COERCE_TO: u32 = 51;
const UPDATE: u32 = 53;

/// `r.db("rethinkdb").table(name)`.
fn system_table(name: &str) -> Value {
    json!([TABLE, [[DB, ["rethinkdb"]], name]])
}

/// `r.db("rethinkdb").table(name).coerce_to("array")`.
pub fn system_table_term(name: &str) -> Value {
    json!([COERCE_TO, [system_table(name), "array"]])
}

/// `r.db("rethinkdb").table("server_status").coerce_to("array")`.
pub fn server_status_term() -> Value {
    system_table_term("server_status")
}

/// An array literal: in ReQL's JSON a bare array is a term, so data arrays
/// are wrapped in MAKE_ARRAY.
fn array(items: impl IntoIterator<Item = Value>) -> Value {
    json!([MAKE_ARRAY, items.into_iter().collect::<Vec<_>>()])
}

/// `r.db("rethinkdb").table("table_config").get(id).update({shards: [...]})`.
pub fn place_table_term(table_id: &str, shards: &[ShardConfig]) -> Value {
    let names = |v: &[String]| array(v.iter().map(|s| json!(s)));
    let shards = array(shards.iter().map(|s| {
        json!({
            "primary_replica": s.primary_replica,
            "replicas": names(&s.replicas),
            "nonvoting_replicas": names(&s.nonvoting_replicas),
        })
    }));
    json!([
        UPDATE,
        [[GET, [system_table("table_config"), table_id]], {"shards": shards}]
    ])
}

/// Ok when a write's result reports no error.
pub fn write_result(result: &Value) -> Result<(), String> {
    let result = result
        .get(0)
        .filter(|_| result.is_array())
        .unwrap_or(result);
    match result["errors"].as_u64() {
        Some(0) => Ok(()),
        Some(_) => Err(format!(
            "RethinkDB refused the change: {}",
            result["first_error"].as_str().unwrap_or("no reason given")
        )),
        None => Err(format!("RethinkDB answered the change with {result}")),
    }
}

/// The rows of an atom answer (`[[rows]]`) or a sequence (`[rows]`).
fn rows(v: &Value) -> &[Value] {
    v.get(0)
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Tables ready and not, from `table_status` rows.
pub fn tables_health(status: &Value) -> TablesHealth {
    let rows = rows(status);
    let mut unavailable: Vec<String> = rows
        .iter()
        .filter(|t| t["status"]["all_replicas_ready"] != true)
        .map(|t| {
            format!(
                "{}.{}",
                t["db"].as_str().unwrap_or("?"),
                t["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    unavailable.sort();
    TablesHealth {
        total: rows.len(),
        ready: rows.len() - unavailable.len(),
        unavailable,
    }
}

/// Every table's placement (`table_config`) with its readiness and the
/// servers holding it (`table_status`), matched by table id.
pub fn table_configs(config: &Value, status: &Value) -> Result<Vec<TableConfig>, String> {
    let mut tables = Vec::new();
    for t in rows(config) {
        let id = t["id"]
            .as_str()
            .ok_or("table_config: a table without an id")?;
        let shards = serde_json::from_value(t["shards"].clone())
            .map_err(|e| format!("table_config of {id}: {e}"))?;
        let st = rows(status).iter().find(|s| s["id"] == id);
        let mut status_servers: Vec<String> = st
            .and_then(|s| s["shards"].as_array())
            .into_iter()
            .flatten()
            .flat_map(|shard| shard["replicas"].as_array().into_iter().flatten())
            .filter_map(|r| r["server"].as_str().map(str::to_string))
            .collect();
        status_servers.sort();
        status_servers.dedup();
        tables.push(TableConfig {
            id: id.to_string(),
            db: t["db"].as_str().unwrap_or_default().to_string(),
            name: t["name"].as_str().unwrap_or_default().to_string(),
            shards,
            ready: st.is_some_and(|s| s["status"]["all_replicas_ready"] == true),
            status_servers,
        });
    }
    tables.sort_by(|a, b| (&a.db, &a.name).cmp(&(&b.db, &b.name)));
    Ok(tables)
}

/// The connected servers' names, from `server_status` rows, sorted.
pub fn connected_servers(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = rows(status)
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn scram_sha256_matches_rfc7677() {
        let mut s = Scram::new("user", "pencil", CLIENT_NONCE);
        assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert_eq!(
            s.client_final(SERVER_FIRST)
                .expect("the fake server exchange"),
            CLIENT_FINAL
        );
        s.verify(SERVER_FINAL).expect("server signature");
        assert!(s.verify("v=AAAA").is_err());
    }

    #[test]
    fn hmac_and_base64_known_answers() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(
                b64decode(&b64encode(s.as_bytes())).expect("the fake server exchange"),
                s.as_bytes()
            );
        }
        assert_eq!(b64encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64encode(b"fo"), "Zm8=");
    }

    /// A fake server speaking the published handshake with the RFC's values.
    #[tokio::test]
    async fn handshake_and_query_follow_the_protocol() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            assert_eq!(
                server
                    .read_u32_le()
                    .await
                    .expect("the fake server exchange"),
                V1_0
            );
            let reply = |v: Value| {
                let mut b = serde_json::to_vec(&v).expect("the fake server exchange");
                b.push(0);
                b
            };
            server
                .write_all(&reply(json!({"success": true, "min_protocol_version": 0, "max_protocol_version": 0, "server_version": "2.4.4"})))
                .await
                .expect("the fake server exchange");
            let m = read_nul_json_raw(&mut server).await;
            assert_eq!(m["protocol_version"], 0);
            assert_eq!(m["authentication_method"], "SCRAM-SHA-256");
            assert_eq!(m["authentication"], "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
            server
                .write_all(&reply(
                    json!({"success": true, "authentication": SERVER_FIRST}),
                ))
                .await
                .expect("the fake server exchange");
            let m = read_nul_json_raw(&mut server).await;
            assert_eq!(m["authentication"], CLIENT_FINAL);
            server
                .write_all(&reply(
                    json!({"success": true, "authentication": SERVER_FINAL}),
                ))
                .await
                .expect("the fake server exchange");
            let token = server
                .read_u64_le()
                .await
                .expect("the fake server exchange");
            let len = server
                .read_u32_le()
                .await
                .expect("the fake server exchange") as usize;
            let mut q = vec![0; len];
            server
                .read_exact(&mut q)
                .await
                .expect("the fake server exchange");
            let q: Value = serde_json::from_slice(&q).expect("the fake server exchange");
            assert_eq!(q, json!([1, server_status_term(), {}]));
            let body = serde_json::to_vec(
                &json!({"t": 1, "r": [[{"name": "rethinkdb_2"}, {"name": "rethinkdb_1"}]]}),
            )
            .expect("the fake server exchange");
            let mut f = token.to_le_bytes().to_vec();
            f.extend_from_slice(&(body.len() as u32).to_le_bytes());
            f.extend_from_slice(&body);
            server
                .write_all(&f)
                .await
                .expect("the fake server exchange");
        });
        let v = handshake(&mut client, "user", "pencil", CLIENT_NONCE)
            .await
            .expect("the fake server exchange");
        assert_eq!(v, "2.4.4");
        let r = query(&mut client, 1, server_status_term())
            .await
            .expect("the fake server exchange");
        assert_eq!(connected_servers(&r), ["rethinkdb_1", "rethinkdb_2"]);
        srv.await.expect("the fake server exchange");
    }

    fn table_rows() -> (Value, Value) {
        let config = json!([[
            {"id": "t1", "db": "test", "name": "docs", "shards": [
                {"primary_replica": "rethinkdb_1", "replicas": ["rethinkdb_1", "rethinkdb_4"], "nonvoting_replicas": []}]},
            {"id": "t0", "db": "app", "name": "users", "shards": [
                {"primary_replica": "rethinkdb_2", "replicas": ["rethinkdb_2"], "nonvoting_replicas": []}]}
        ]]);
        let status = json!([[
            {"id": "t1", "db": "test", "name": "docs", "status": {"all_replicas_ready": false},
             "shards": [{"replicas": [{"server": "rethinkdb_4", "state": "backfilling"}, {"server": "rethinkdb_1", "state": "ready"}]}]},
            {"id": "t0", "db": "app", "name": "users", "status": {"all_replicas_ready": true},
             "shards": [{"replicas": [{"server": "rethinkdb_2", "state": "ready"}]}]}
        ]]);
        (config, status)
    }

    #[test]
    fn tables_are_read_with_their_readiness_and_holders() {
        let (config, status) = table_rows();
        assert_eq!(
            tables_health(&status),
            TablesHealth {
                total: 2,
                ready: 1,
                unavailable: vec!["test.docs".into()],
            }
        );
        let tables = table_configs(&config, &status).expect("parses");
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].full_name(), "app.users");
        assert!(tables[0].ready);
        assert_eq!(tables[1].shards[0].replicas, ["rethinkdb_1", "rethinkdb_4"]);
        assert!(!tables[1].ready);
        assert_eq!(tables[1].status_servers, ["rethinkdb_1", "rethinkdb_4"]);
        assert!(table_configs(&json!([[{"db": "x"}]]), &status).is_err());
        assert_eq!(tables_health(&json!(null)), TablesHealth::default());
    }

    #[test]
    fn placing_a_table_writes_its_shards_as_reql_data() {
        let shards = [ShardConfig {
            primary_replica: "a".into(),
            replicas: vec!["a".into(), "b".into()],
            nonvoting_replicas: vec![],
        }];
        assert_eq!(
            place_table_term("t1", &shards),
            json!([53, [[16, [[15, [[14, ["rethinkdb"]], "table_config"]], "t1"]],
                {"shards": [2, [{"primary_replica": "a", "replicas": [2, ["a", "b"]], "nonvoting_replicas": [2, []]}]]}]])
        );
        assert!(write_result(&json!([{"replaced": 1, "errors": 0}])).is_ok());
        let refused =
            write_result(&json!({"errors": 1, "first_error": "Server `x` does not exist."}));
        assert!(refused.is_err_and(|e| e.contains("does not exist")));
        assert!(write_result(&json!("what")).is_err());
    }

    async fn read_nul_json_raw(s: &mut tokio::io::DuplexStream) -> Value {
        let mut buf = Vec::new();
        loop {
            let b = s.read_u8().await.expect("the fake server exchange");
            if b == 0 {
                break;
            }
            buf.push(b);
        }
        serde_json::from_slice(&buf).expect("the fake server exchange")
    }
}
