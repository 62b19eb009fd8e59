//! Trust material from outside: join tokens, admin.conf, CSRs and the
//! enrollment requests that carry them.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use apiary_certs::{AdminConf, ClusterCa, JoinToken, PeerIdentity, Role};
use apiary_coordinator::config::ClusterConfig;
use apiary_coordinator::pki::Pki;
use apiary_coordinator::store::Store;
use apiary_proto::{EnrollRequest, RenewRequest};
use prost::Message;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Target, block_on, scratch_dir, text};

pub const JOIN_TOKEN: Target = Target {
    name: "join_token",
    covers: "certs/src/token.rs: <JoinToken as FromStr>::from_str, Display, secret_hash",
    run: join_token,
    dict: &["APIARY-1-", "-", "SWMTKN-1-"],
    max_len: 4096,
    test_mutations: 3000,
    known: None,
};

/// A token that parses prints back to itself, and its `Debug` never
/// shows the secret.
fn join_token(data: &[u8]) {
    let s = text(data);
    let Ok(token) = s.parse::<JoinToken>() else {
        return;
    };
    let shown = token.to_string();
    let again: JoinToken = shown
        .parse()
        .unwrap_or_else(|e| panic!("a parsed token does not parse back from {shown:?}: {e}"));
    assert!(again == token, "round trip changed the token");
    let secret = shown.rsplit('-').next().unwrap_or_default();
    // The digest is shown, and may hold the secret's digits by chance.
    let debug = format!("{token:?}").replace(&token.ca_digest.to_string(), "");
    assert!(!debug.contains(secret), "Debug shows the secret");
    let _ = token.secret_hash();
}

pub const ADMIN_CONF: Target = Target {
    name: "admin_conf",
    covers: "certs/src/admin_conf.rs: AdminConf::load, AdminConf::identity; certs/src/tls.rs: mtls_client_config; proto/src/dial.rs: channel (what ctl does with the file)",
    run: admin_conf,
    dict: &[
        "cluster = ",
        "endpoint = ",
        "ca = ",
        "cert = ",
        "key = ",
        "-----BEGIN CERTIFICATE-----\n",
        "-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\n",
        "\"\"\"",
        "'''",
    ],
    max_len: 16 << 10,
    test_mutations: 1500,
    known: None,
};

thread_local! {
    static ADMIN_DIR: tempfile::TempDir = scratch_dir();
}

/// `data` written as an admin.conf and read as ctl reads it.
fn admin_conf(data: &[u8]) {
    let path: PathBuf = ADMIN_DIR.with(|d| d.path().join("admin.conf"));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(conf) = AdminConf::load(&path) else {
        return;
    };
    let _ = format!("{conf:?}");
    let Ok(id) = conf.identity() else {
        return;
    };
    let _ = (id.peer(), id.ca_digest(), id.key_der(), id.expires_at());
    let Ok(tls) = apiary_certs::mtls_client_config(&id.ca_der, &id.cert_der, &id.key_pem) else {
        return;
    };
    block_on(async {
        let _ =
            apiary_proto::dial::channel(&conf.endpoint, apiary_certs::COORDINATOR_SERVER_NAME, tls);
    });
}

pub const CSR_SIGN: Target = Target {
    name: "csr_sign",
    covers: "certs/src/ca.rs: ClusterCa::sign_csr (rcgen's CSR parser, then signing)",
    run: csr_sign,
    dict: &[],
    max_len: 8 << 10,
    test_mutations: 1500,
    known: None,
};

fn fuzz_ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = scratch_dir();
        let (ca, _) = ClusterCa::load_or_create(dir.path(), "fuzz")
            .unwrap_or_else(|e| panic!("apiary-fuzz: no CA: {e}"));
        ca
    })
}

/// Any bytes as a CSR. What the CA signs names the holder and role the
/// coordinator chose, never what the request asked for: no other name,
/// no CA bit, client authentication only.
fn csr_sign(data: &[u8]) {
    let ca = fuzz_ca();
    let Ok(cert) = ca.sign_csr(data, "fuzz-node", Role::Agent, Duration::from_secs(3600)) else {
        return;
    };
    let peer = PeerIdentity::from_der(&cert.der)
        .unwrap_or_else(|e| panic!("the CA signed a certificate it cannot read back: {e}"));
    assert_eq!((peer.node.as_str(), peer.role), ("fuzz-node", Role::Agent));
    assert_eq!(peer.serial, cert.serial);
    let (_, x509) = X509Certificate::from_der(&cert.der)
        .unwrap_or_else(|e| panic!("the CA signed a certificate x509-parser refuses: {e}"));
    assert!(!x509.is_ca(), "an agent certificate is a CA");
    assert!(
        matches!(x509.subject_alternative_name(), Ok(None)),
        "an agent certificate carries a subject alternative name"
    );
    let eku = x509
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value.clone());
    assert!(
        eku.is_some_and(|e| e.client_auth && !e.server_auth && !e.any),
        "an agent certificate is not client-auth only"
    );
}

pub const ENROLL: Target = Target {
    name: "enroll",
    covers: "proto EnrollRequest/RenewRequest (prost decode); coordinator/src/pki/mod.rs: Pki::enroll (check_token, NodeName::parse, sign_csr, the store) and Pki::renew",
    run: enroll,
    dict: &["{TOKEN}", "{DIGEST}", "APIARY-1-{DIGEST}-", "node-1"],
    max_len: 8 << 10,
    test_mutations: 600,
    known: None,
};

/// A coordinator's PKI on a scratch state directory, with its current
/// token and a node that enrolled (the caller of renewals).
struct Coordinator {
    _dir: tempfile::TempDir,
    store: Store,
    pki: Pki,
    token: String,
    digest: String,
    renewer: PeerIdentity,
}

fn coordinator() -> &'static Mutex<Coordinator> {
    static C: OnceLock<Mutex<Coordinator>> = OnceLock::new();
    C.get_or_init(|| {
        let fail =
            |what: &str, e: String| -> ! { panic!("apiary-fuzz: enroll set-up: {what}: {e}") };
        let dir = scratch_dir();
        let config = ClusterConfig::parse(
            &dir.path().join("cluster.toml"),
            "[cluster]\nname = \"fuzz\"\n[provider]\nkind = \"manual\"\n",
        )
        .unwrap_or_else(|e| fail("config", e.to_string()));
        let store = Store::open(&dir.path().join("state.redb"))
            .unwrap_or_else(|e| fail("store", e.to_string()));
        let pki = block_on(Pki::open(&config, dir.path(), &store))
            .unwrap_or_else(|e| fail("pki", e.to_string()));
        let token = pki.current_token().token;
        let digest = pki.ca().digest().to_string();
        let (_key, csr) =
            apiary_certs::new_key_and_csr("renewer").unwrap_or_else(|e| fail("csr", e.to_string()));
        let enrolled = block_on(pki.enroll(&store, &token, "renewer", &csr))
            .unwrap_or_else(|e| fail("enroll", e.to_string()));
        let renewer = PeerIdentity::from_der(&enrolled.cert_der)
            .unwrap_or_else(|e| fail("peer", e.to_string()));
        Mutex::new(Coordinator {
            _dir: dir,
            store,
            pki,
            token,
            digest,
            renewer,
        })
    })
}

/// First byte even: an `EnrollRequest` (its token's `{TOKEN}` and
/// `{DIGEST}` stand for this coordinator's, so mutations start from a
/// token that is accepted); odd: a `RenewRequest` from an enrolled node.
fn enroll(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let c = coordinator().lock().unwrap_or_else(|p| p.into_inner());
    if kind & 1 == 0 {
        let Ok(req) = EnrollRequest::decode(body) else {
            return;
        };
        let token = req
            .token
            .replace("{TOKEN}", &c.token)
            .replace("{DIGEST}", &c.digest);
        let _ = block_on(c.pki.enroll(&c.store, &token, &req.node_name, &req.csr_der));
    } else {
        let Ok(req) = RenewRequest::decode(body) else {
            return;
        };
        let _ = block_on(c.pki.renew(&c.store, &c.renewer, &req.csr_der));
    }
}
