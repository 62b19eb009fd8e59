//! The artifact listener: the agent binary over HTTPS, for hosts that boot
//! from cloud-init and have nothing yet but the cluster CA in their user_data.
//!
//! - One path, [`AGENT_PATH`] (GET and HEAD); anything else is a 404 that
//!   says what is served.
//! - TLS with a server certificate from the cluster CA, valid for the
//!   addresses hosts dial (the advertise IP), so the host's curl checks it
//!   with `--cacert` and ordinary hostname rules. The certificate is made at
//!   start and again when half its life has passed.
//! - The binary is opened and hashed once at start; it is served from that
//!   open file (positional reads, a chunk at a time), so replacing the file
//!   on disk does not change what is served, and nothing holds the whole
//!   binary in memory. The SHA-256 goes into user_data, and the host checks
//!   it beyond TLS: an in-place overwrite is refused there, not installed.
//! - Concurrent downloads are bounded ([`Limits`]); beyond the bound the
//!   answer is 503 with `Retry-After`, which the host's curl honours.
//!
//! Started only when a provider needs it (digitalocean without `agent_url`)
//! or `[coordinator] artifacts_listen` asks for it.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apiary_certs::{COORDINATOR_SERVER_NAME, CertError, ClusterCa, https_server_config};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::config::{ClusterConfig, ProviderConfig};

/// Where hosts fetch the agent. DigitalOcean droplets are x86-64, and the
/// binary is checked to be one at start.
pub const AGENT_PATH: &str = "/v1/agent/linux-x86_64";
/// Life of the listener's certificate; it is re-made at half of it.
pub const CERT_TTL: Duration = Duration::from_secs(30 * 86400);
/// Bytes read from the binary per chunk sent.
const CHUNK: usize = 256 * 1024;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A download that is not over by then is cut (its permit is given back).
/// The host's curl allows itself 300 s per attempt.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// `EM_X86_64` in an ELF header.
const ELF_MACHINE_X86_64: u16 = 62;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "cannot read the agent binary {path}: {source}. Build it (`cargo build --release --bin agent`), \
         point `[coordinator] agent_binary` at it, or set `digitalocean.agent_url` so hosts download it elsewhere"
    )]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "the agent binary {path} is not an x86-64 Linux executable ({found}); hosts fetch {AGENT_PATH}: \
         point `[coordinator] agent_binary` at an x86_64-unknown-linux build of `agent`"
    )]
    NotAgent { path: PathBuf, found: String },
    #[error(
        "cannot find the coordinator's own executable to look for `agent` beside it ({0}); set `[coordinator] agent_binary`"
    )]
    NoExe(io::Error),
    #[error("{0}")]
    Address(String),
    #[error(
        "cannot listen for artifacts on {addr}: {source} (choose another address with `[coordinator] artifacts_listen`)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot make the artifact listener's certificate: {0}")]
    Cert(#[from] CertError),
}

impl ArtifactError {
    /// The operator's settings are at fault (exit 64), not the machine.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ArtifactError::Unreadable { .. }
                | ArtifactError::NotAgent { .. }
                | ArtifactError::NoExe(_)
                | ArtifactError::Address(_)
        )
    }
}

/// Whether `serve` starts the listener: asked for, or needed by the
/// digitalocean provider (no `agent_url`: hosts fetch from the coordinator).
pub fn needed(config: &ClusterConfig) -> bool {
    config.artifacts_listen.is_some()
        || matches!(&config.provider, ProviderConfig::DigitalOcean(d) if d.spec.agent_url.is_none())
}

/// The agent build this coordinator serves (to booting droplets, and to
/// agents `ctl hosts upgrade` upgrades): `[coordinator] agent_binary`, else
/// the lab's `provider.agent_binary`, else `agent` beside the running
/// coordinator.
pub fn agent_path(config: &ClusterConfig) -> Result<PathBuf, ArtifactError> {
    let lab = match &config.provider {
        ProviderConfig::Lab(lab) => lab.agent_binary.as_ref(),
        _ => None,
    };
    match config.agent_binary.as_ref().or(lab) {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()
            .map_err(ArtifactError::NoExe)?
            .with_file_name("agent")),
    }
}

/// `[coordinator] artifacts_listen`, else the gRPC listener's IP with its
/// port + 1 (7444 beside the default 7443).
pub fn listen_addr(config: &ClusterConfig, grpc: SocketAddr) -> Result<SocketAddr, ArtifactError> {
    if let Some(a) = config.artifacts_listen {
        return Ok(a);
    }
    let port = match grpc.port() {
        0 => 0,
        p => p.checked_add(1).ok_or_else(|| {
            ArtifactError::Address(format!(
                "coordinator.listen uses port {p}, so the artifact listener has no port + 1: set `[coordinator] artifacts_listen`"
            ))
        })?,
    };
    Ok(SocketAddr::new(grpc.ip(), port))
}

/// The URL hosts fetch the agent from: the advertise IP (what hosts dial),
/// the artifact listener's port.
pub fn agent_url(advertise_ip: IpAddr, bound: SocketAddr) -> Result<url::Url, ArtifactError> {
    if advertise_ip.is_unspecified() {
        return Err(ArtifactError::Address(format!(
            "hosts cannot fetch the agent from {advertise_ip}: set `[coordinator] advertise` to the coordinator's private IP:PORT"
        )));
    }
    let at = SocketAddr::new(advertise_ip, bound.port());
    url::Url::parse(&format!("https://{at}{AGENT_PATH}"))
        .map_err(|e| ArtifactError::Address(format!("https://{at}{AGENT_PATH}: {e}")))
}

/// The names the listener's certificate carries: the IPs hosts may dial, and
/// the coordinator's fixed name.
pub fn cert_names(advertise_ip: IpAddr, bound: SocketAddr) -> Vec<String> {
    let mut names = vec![advertise_ip.to_string()];
    if !bound.ip().is_unspecified() && bound.ip() != advertise_ip {
        names.push(bound.ip().to_string());
    }
    names.push(COORDINATOR_SERVER_NAME.to_string());
    names
}

/// The agent binary as served: an open file, its length and SHA-256 at the
/// time it was opened.
#[derive(Debug)]
pub struct AgentBinary {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    sha256: String,
    /// Its version stamp (`apiary_api::version`), or why it has none.
    version: Result<String, apiary_api::version::StampError>,
}

impl AgentBinary {
    /// Opens and hashes the binary (blocking: call it off the runtime) and
    /// checks it is an x86-64 ELF executable.
    pub fn open(path: &Path) -> Result<AgentBinary, ArtifactError> {
        let unreadable = |source| ArtifactError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(ArtifactError::NotAgent {
                path: path.to_path_buf(),
                found: "not a regular file".into(),
            });
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut header = Vec::new();
        let mut stamp = apiary_api::version::StampScanner::default();
        let mut len = 0u64;
        loop {
            let n = file.read_at(&mut buf, len).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            if header.len() < 20 {
                header.extend_from_slice(&buf[..n.min(20 - header.len())]);
            }
            hasher.update(&buf[..n]);
            stamp.feed(&buf[..n]);
            len += n as u64;
        }
        check_elf(&header).map_err(|found| ArtifactError::NotAgent {
            path: path.to_path_buf(),
            found,
        })?;
        Ok(AgentBinary {
            path: path.to_path_buf(),
            file: Arc::new(file),
            len,
            sha256: hex::encode(hasher.finalize()),
            version: stamp.finish().map(|s| s.version),
        })
    }

    /// The build's version, from its stamp.
    pub fn version(&self) -> Result<&str, &apiary_api::version::StampError> {
        self.version.as_deref()
    }

    /// Up to `want` bytes at `at` (blocking: call it off the runtime); empty
    /// at the end.
    pub fn read_chunk(&self, at: u64, want: usize) -> io::Result<Vec<u8>> {
        let want = (self.len.saturating_sub(at)).min(want as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = self.file.read_at(&mut buf, at)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file from the open descriptor, a chunk at a time; the permit is
    /// held until the body is done or dropped.
    fn body(&self, permit: OwnedSemaphorePermit) -> Body {
        let (file, len) = (self.file.clone(), self.len);
        let chunks = futures::stream::try_unfold((0u64, permit), move |(at, permit)| {
            let file = file.clone();
            async move {
                if at >= len {
                    return Ok(None);
                }
                let want = (len - at).min(CHUNK as u64) as usize;
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    let n = file.read_at(&mut buf, at)?;
                    buf.truncate(n);
                    Ok::<_, io::Error>(buf)
                })
                .await
                .map_err(io::Error::other)??;
                if chunk.is_empty() {
                    // Truncated in place since it was hashed: end the
                    // response short (the client sees a broken transfer).
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the agent binary shrank while being served",
                    ));
                }
                let next = at + chunk.len() as u64;
                Ok(Some((Bytes::from(chunk), (next, permit))))
            }
        });
        Body::from_stream(chunks)
    }
}

/// 64-bit little-endian ELF for x86-64, or what was found instead.
fn check_elf(header: &[u8]) -> Result<(), String> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if machine != ELF_MACHINE_X86_64 {
        return Err(format!(
            "ELF machine {machine}, x86-64 is {ELF_MACHINE_X86_64}"
        ));
    }
    Ok(())
}

/// Bounds on what the listener takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Downloads in progress; more get 503 with `Retry-After`.
    pub max_downloads: usize,
    /// Open connections (handshakes included); more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_downloads: 16,
            max_connections: 256,
        }
    }
}

/// Makes the listener's TLS configuration and says until when its
/// certificate is valid.
pub type IssueTls =
    Box<dyn Fn() -> Result<(rustls::ServerConfig, SystemTime), ArtifactError> + Send + Sync>;

/// A certificate from `ca` for `names` (see [`cert_names`]), as a TLS config.
pub fn tls_from_ca(
    ca: &ClusterCa,
    names: &[String],
) -> Result<(rustls::ServerConfig, SystemTime), ArtifactError> {
    let (cert, key) = ca.issue_server_with_key(names, CERT_TTL)?;
    let config = https_server_config(ca.cert_der(), &cert.der, &key)?;
    Ok((config, cert.not_after))
}

struct Shared {
    agent: Arc<AgentBinary>,
    downloads: Arc<Semaphore>,
    max_downloads: usize,
}

/// The listener, ready to run: its first certificate is made by [`Self::new`],
/// so a CA that cannot issue is an error at start, not at the first host.
pub struct ArtifactServer {
    router: Router,
    issue: IssueTls,
    tls: (Arc<rustls::ServerConfig>, SystemTime),
    limits: Limits,
}

impl ArtifactServer {
    pub fn new(
        agent: Arc<AgentBinary>,
        issue: IssueTls,
        limits: Limits,
    ) -> Result<ArtifactServer, ArtifactError> {
        let (config, not_after) = issue()?;
        let shared = Arc::new(Shared {
            agent,
            downloads: Arc::new(Semaphore::new(limits.max_downloads)),
            max_downloads: limits.max_downloads,
        });
        let router = Router::new()
            .route(AGENT_PATH, get(serve_agent))
            .fallback(not_found)
            .with_state(shared);
        Ok(ArtifactServer {
            router,
            issue,
            tls: (Arc::new(config), renew_at(not_after)),
            limits,
        })
    }

    /// Serves until `shutdown`; connections in progress finish on their own.
    pub async fn run(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let connections = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                p = connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: give the
                        // machine a moment rather than spin.
                        warn!(error = %e, "artifact listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            if SystemTime::now() >= self.tls.1 {
                match (self.issue)() {
                    Ok((config, not_after)) => {
                        info!("artifact listener: certificate renewed");
                        self.tls = (Arc::new(config), renew_at(not_after));
                    }
                    // The old one is still valid for half its life.
                    Err(e) => warn!(error = %e, "artifact listener: certificate renewal failed"),
                }
            }
            let acceptor = TlsAcceptor::from(self.tls.0.clone());
            let router = self.router.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        info!(%peer, error = %e, "artifact listener: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |mut req: Request<_>| {
                    req.extensions_mut().insert(peer);
                    router.clone().oneshot(req)
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let conn = http.serve_connection(TokioIo::new(tls), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => info!(%peer, error = %e, "artifact listener: connection ended"),
                    Err(_) => info!(%peer, "artifact listener: connection cut after its time"),
                }
            });
        }
    }
}

fn renew_at(not_after: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    now + not_after.duration_since(now).unwrap_or_default() / 2
}

async fn serve_agent(State(s): State<Arc<Shared>>, method: Method, req: Request<Body>) -> Response {
    let peer = req.extensions().get::<SocketAddr>().copied();
    let agent = &s.agent;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, agent.len().to_string()),
        (header::ETAG, format!("\"{}\"", agent.sha256())),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ];
    if method == Method::HEAD {
        return (headers, Body::empty()).into_response();
    }
    let Ok(permit) = s.downloads.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            format!(
                "busy: {} agent downloads in progress; retry in a few seconds\n",
                s.max_downloads
            ),
        )
            .into_response();
    };
    info!(peer = ?peer, bytes = agent.len(), sha256 = %agent.sha256(), "serving the agent binary");
    (headers, agent.body(permit)).into_response()
}

async fn not_found(method: Method, req: Request<Body>) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no artifact at {method} {}: this coordinator serves only GET {AGENT_PATH}\n",
            req.uri().path()
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// An x86-64 ELF header followed by `len` bytes of pattern.
    fn fake_agent(dir: &Path, len: usize) -> PathBuf {
        let mut bytes = vec![0u8; 20];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[18..20].copy_from_slice(&ELF_MACHINE_X86_64.to_le_bytes());
        bytes.extend((0..len).map(|i| (i * 7 % 251) as u8));
        let path = dir.join("agent");
        std::fs::write(&path, bytes).expect("write agent");
        path
    }

    struct Running {
        addr: SocketAddr,
        ca: Arc<ClusterCa>,
        agent: Arc<AgentBinary>,
        path: PathBuf,
        _dir: tempfile::TempDir,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(len: usize, limits: Limits) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_agent(dir.path(), len);
        let agent = Arc::new(AgentBinary::open(&path).expect("open agent"));
        let ca = Arc::new(ClusterCa::generate("t").expect("ca"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let names = cert_names(addr.ip(), addr);
        let issuing = ca.clone();
        let server = ArtifactServer::new(
            agent.clone(),
            Box::new(move || tls_from_ca(&issuing, &names)),
            limits,
        )
        .expect("server");
        let task = tokio::spawn(server.run(listener, std::future::pending()));
        Running {
            addr,
            ca,
            agent,
            path,
            _dir: dir,
            task,
        }
    }

    /// A client that trusts only `ca` (no system roots).
    fn client(ca: &ClusterCa) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                ca.cert_der().to_vec(),
            ))
            .expect("root");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client")
    }

    fn url(addr: SocketAddr, path: &str) -> String {
        format!("https://{addr}{path}")
    }

    #[tokio::test]
    async fn serves_the_binary_to_a_client_that_trusts_only_the_cluster_ca() {
        let r = start(3 << 20, Limits::default()).await;
        let file = std::fs::read(&r.path).expect("read");
        let want = hex::encode(Sha256::digest(&file));
        assert_eq!(r.agent.sha256(), want);
        assert_eq!(r.agent.len(), file.len() as u64);

        let c = client(&r.ca);
        let resp = c.get(url(r.addr, AGENT_PATH)).send().await.expect("GET");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()[header::ETAG].to_str().expect("etag"),
            format!("\"{want}\"")
        );
        let body = resp.bytes().await.expect("body");
        assert!(body[..] == file[..], "served bytes differ from the file");
        assert_eq!(hex::encode(Sha256::digest(&body)), want);

        let head = c.head(url(r.addr, AGENT_PATH)).send().await.expect("HEAD");
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH]
                .to_str()
                .expect("len"),
            file.len().to_string()
        );
        assert!(head.bytes().await.expect("head body").is_empty());
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_is_refused_and_unknown_paths_are_404() {
        let r = start(1024, Limits::default()).await;
        let foreign = ClusterCa::generate("other").expect("ca");
        let err = client(&foreign)
            .get(url(r.addr, AGENT_PATH))
            .send()
            .await
            .expect_err("a foreign CA must not verify the listener");
        assert!(err.is_connect(), "{err:?}");

        let resp = client(&r.ca)
            .get(url(r.addr, "/v1/agent/linux-arm64"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), 404);
        let text = resp.text().await.expect("text");
        assert!(text.contains(AGENT_PATH), "{text}");
    }

    #[tokio::test]
    async fn the_certificate_names_the_advertised_address() {
        // A client dialling an address the certificate does not carry (here
        // `localhost`, a DNS name) is refused even though the CA is right.
        let r = start(1024, Limits::default()).await;
        let err = client(&r.ca)
            .get(format!("https://localhost:{}{AGENT_PATH}", r.addr.port()))
            .send()
            .await
            .expect_err("name mismatch");
        assert!(err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn downloads_beyond_the_bound_get_503_until_one_ends() {
        let limits = Limits {
            max_downloads: 1,
            ..Limits::default()
        };
        // Larger than the socket buffers: the first download cannot finish
        // while its body is not read, so it keeps its permit.
        let r = start(64 << 20, limits).await;
        let c = client(&r.ca);
        let first = c.get(url(r.addr, AGENT_PATH)).send().await.expect("first");
        assert_eq!(first.status(), 200);
        let busy = c.get(url(r.addr, AGENT_PATH)).send().await.expect("second");
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "5");
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let resp = c.head(url(r.addr, AGENT_PATH)).send().await.expect("HEAD");
            assert_eq!(resp.status(), 200, "HEAD takes no download slot");
            let resp = c.get(url(r.addr, AGENT_PATH)).send().await.expect("GET");
            if resp.status() == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot was not given back after the first client left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn missing_and_foreign_binaries_are_refused_as_config_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = AgentBinary::open(&dir.path().join("agent")).expect_err("missing");
        assert!(matches!(err, ArtifactError::Unreadable { .. }) && err.is_config());
        assert!(err.to_string().contains("agent_binary"), "{err}");
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho not an agent\n").expect("write");
        let err = AgentBinary::open(&script).expect_err("not ELF");
        assert!(matches!(err, ArtifactError::NotAgent { .. }) && err.is_config());
        let mut arm = std::fs::read(fake_agent(dir.path(), 16)).expect("read");
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        std::fs::write(&script, arm).expect("write");
        let err = AgentBinary::open(&script).expect_err("aarch64");
        assert!(err.to_string().contains("ELF machine 183"), "{err}");
    }

    #[test]
    fn url_and_names_use_the_advertised_ip_and_the_bound_port() {
        let bound: SocketAddr = "0.0.0.0:7444".parse().expect("addr");
        let ip: IpAddr = "10.10.0.2".parse().expect("ip");
        assert_eq!(
            agent_url(ip, bound).expect("url").as_str(),
            "https://10.10.0.2:7444/v1/agent/linux-x86_64"
        );
        assert_eq!(
            cert_names(ip, bound),
            ["10.10.0.2", COORDINATOR_SERVER_NAME]
        );
        let err = agent_url("0.0.0.0".parse().expect("ip"), bound).expect_err("unspecified");
        assert!(err.to_string().contains("advertise") && err.is_config());
        let v6: IpAddr = "fd00::2".parse().expect("ip");
        assert_eq!(
            agent_url(v6, bound).expect("url").as_str(),
            "https://[fd00::2]:7444/v1/agent/linux-x86_64"
        );
    }
}
