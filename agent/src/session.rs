use std::path::Path;
use std::time::{Duration, SystemTime};

use apiary_certs::{
    COORDINATOR_SERVER_NAME, CertError, Identity, JoinToken, TlsRefusal, classify_tls_failure,
    enrollment_client_config, mtls_client_config, new_key_and_csr,
};
use apiary_proto::agent_api_client::AgentApiClient;
use apiary_proto::enrollment_client::EnrollmentClient;
use apiary_proto::{
    AgentMessage, EnrollRequest, Heartbeat, Hello, RenewRequest, agent_message,
    coordinator_message, dial,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::endpoints::Endpoints;
use crate::facts::FactsSource;
use crate::host_runner::HostRunner;
use crate::hostconfig::{HostFacts, RealEffects};
use crate::ops::{OpRequest, Ops};
use apiary_proto::OpResult;
use std::sync::Arc;

/// Why an agent stopped. Each says what to do; [`AgentError::exit_code`] maps
/// them to the process's exit status (in one place).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no identity in {state_dir} and no join token: pass --token (or token = ... in the config file) to enroll"
    )]
    NeedToken { state_dir: String },
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("enrollment refused by the coordinator: {0}")]
    TokenRefused(String),
    #[error("{0}")]
    Refused(#[from] TlsRefusal),
    #[error("the coordinator ended this node's session: {0}")]
    Removed(String),
    #[error(
        "the certificate in {state_dir} expired at {at} while the agent was away; re-enroll by passing a join token"
    )]
    Expired { state_dir: String, at: String },
    #[error("this build of the agent was rolled back ({0}); exiting so the old binary is started")]
    RolledBack(crate::upgrade::Failure),
}

impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::NeedToken { .. } => 64,
            // EX_NOPERM: systemd's RestartPreventExitStatus=77 keeps a refused
            // agent from hammering the coordinator.
            AgentError::TokenRefused(_)
            | AgentError::Refused(_)
            | AgentError::Removed(_)
            | AgentError::Expired { .. } => 77,
            AgentError::RolledBack(_) => 1,
            AgentError::Cert(_) => 1,
        }
    }
}

const FACTS_REFRESH: Duration = Duration::from_secs(5);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How [`run`] ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Asked to stop (a signal).
    Shutdown,
    /// Upgraded: the caller replaces this process with the binary at this
    /// path, same arguments (see [`crate::upgrade`]).
    Restart(std::path::PathBuf),
}

/// Runs the agent until `shutdown` completes, an upgrade asks for a
/// restart, or a refusal makes it pointless.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<RunEnd, AgentError> {
    tokio::pin!(shutdown);
    let probation = match crate::upgrade::at_start(&config.state_dir) {
        crate::upgrade::AtStart::Normal => None,
        crate::upgrade::AtStart::OnProbation(p) => {
            info!(from = %p.from, to = %p.to, "started as an upgrade; confirmed once the coordinator acknowledges it");
            Some(p)
        }
        crate::upgrade::AtStart::RolledBack(f) => return Err(AgentError::RolledBack(f)),
    };
    let mut probation = probation;
    let facts = FactsSource {
        public_interface: config.public_interface.clone(),
        private: config.private_address.clone(),
        ..FactsSource::host(config.docker_socket.clone())
    };
    let runner = Arc::new(HostRunner::new(Arc::new(effects_for(&config))));
    let endpoints = Arc::new(Endpoints::load(&config.coordinator, &config.state_dir));
    let ops = Arc::new(Ops::new(
        config.name.clone(),
        config.docker_socket.clone(),
        endpoints.clone(),
    ));
    let mut identity = tokio::select! {
        id = obtain_identity(&config) => id?,
        _ = &mut shutdown => return Ok(RunEnd::Shutdown),
    };
    let mut backoff = Backoff::default();
    loop {
        let mut established = false;
        // This round's coordinator endpoint (crate::endpoints: failover).
        let dialled = endpoints.config_for(&config);
        let outcome = tokio::select! {
            o = session(&dialled, &identity, &facts, &runner, &ops, &mut probation, &mut established) => o,
            _ = &mut shutdown => {
                info!("shutting down");
                return Ok(RunEnd::Shutdown);
            }
        };
        match outcome {
            Ok(SessionEnd::Upgraded(exe)) => return Ok(RunEnd::Restart(exe)),
            Ok(SessionEnd::Renewed(new)) => {
                identity = new;
                backoff.reset();
                continue;
            }
            Ok(SessionEnd::Closed) => info!("session closed by the coordinator; reconnecting"),
            Err(SessionError::Fatal(e)) => return Err(e),
            Err(SessionError::Retry(reason)) => {
                warn!(%reason, coordinator = %dialled.coordinator, "session failed; reconnecting");
                // The next endpoint at once; backoff after a full round.
                if !endpoints.failed() {
                    continue;
                }
            }
        }
        // A session that was established ends the backoff: a coordinator
        // restarted (or restored) for the tenth time is not waited for as
        // long as one that never answered.
        if established {
            backoff.reset();
        }
        let delay = backoff.next();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(RunEnd::Shutdown),
        }
    }
}

/// Capped exponential backoff with full jitter (so a coordinator restart does
/// not bring every agent back in the same millisecond).
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap =
            Duration::from_millis(200 * 2u64.pow(self.attempt.min(7))).min(Duration::from_secs(15));
        self.attempt += 1;
        Duration::from_millis(100) + cap.mul_f64(rand::rng().random_range(0.0..1.0))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

async fn obtain_identity(config: &AgentConfig) -> Result<Identity, AgentError> {
    let dir = &config.state_dir;
    if Identity::exists(dir) {
        let id = Identity::load(dir)?;
        let peer = id.peer()?;
        if peer.not_after > SystemTime::now() {
            info!(node = %peer.node, serial = %peer.serial, "using the identity in the state directory");
            return Ok(id);
        }
        if config.token.is_none() {
            return Err(AgentError::Expired {
                state_dir: dir.display().to_string(),
                at: humantime::format_rfc3339_seconds(peer.not_after).to_string(),
            });
        }
        warn!("the saved certificate has expired; re-enrolling with the join token");
    }
    let token = config
        .token
        .as_deref()
        .ok_or_else(|| AgentError::NeedToken {
            state_dir: dir.display().to_string(),
        })?;
    enroll(config, token.parse()?).await
}

async fn enroll(config: &AgentConfig, token: JoinToken) -> Result<Identity, AgentError> {
    if let Some(path) = &config.ca_cert {
        let pem = std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.clone(),
            source,
        })?;
        let id = Identity::from_pems("", &pem, &pem)?;
        if id.ca_digest() != token.ca_digest {
            return Err(TlsRefusal::CaMismatch(format!(
                "{} has sha256 {}, the join token pins {}",
                path.display(),
                id.ca_digest(),
                token.ca_digest
            ))
            .into());
        }
    }
    let tls = enrollment_client_config(token.ca_digest)?;
    let mut backoff = Backoff::default();
    loop {
        // The handshake alone decides whether this coordinator holds the CA the
        // token pins; nothing (not even the CSR) is sent before it succeeds.
        match dial::handshake(&config.coordinator, COORDINATOR_SERVER_NAME, tls.clone()).await {
            Ok(()) => {}
            Err(e) => {
                if let Some(refusal) = classify_tls_failure(&e) {
                    return Err(refusal.into());
                }
                warn!(coordinator = %config.coordinator, error = %e, "coordinator not reachable yet; retrying");
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        }
        let (key, csr) = new_key_and_csr(&config.name)?;
        let channel = dial::channel(&config.coordinator, COORDINATOR_SERVER_NAME, tls.clone())
            .map_err(|e| AgentError::TokenRefused(e.to_string()))?;
        let request = EnrollRequest {
            token: token.to_string(),
            node_name: config.name.clone(),
            csr_der: csr,
        };
        match EnrollmentClient::new(channel).enroll(request).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let id = Identity {
                    key_pem: key.serialize_pem(),
                    cert_der: resp.cert_der,
                    ca_der: resp.ca_der,
                };
                if id.ca_digest() != token.ca_digest {
                    return Err(TlsRefusal::CaMismatch(
                        "the CA returned at enrollment differs from the token's".into(),
                    )
                    .into());
                }
                id.save(&config.state_dir)?;
                info!(node = %resp.node_name, "enrolled");
                return Ok(id);
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(AgentError::TokenRefused(status.message().to_string()));
            }
            Err(status) => {
                warn!(error = %status, "enrollment failed; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

enum SessionEnd {
    Closed,
    Renewed(Identity),
    /// The new build is in place and the coordinator has the answer.
    Upgraded(std::path::PathBuf),
}

enum SessionError {
    Fatal(AgentError),
    Retry(String),
}

impl From<AgentError> for SessionError {
    fn from(e: AgentError) -> Self {
        SessionError::Fatal(e)
    }
}

impl From<CertError> for SessionError {
    fn from(e: CertError) -> Self {
        SessionError::Fatal(e.into())
    }
}

/// Turns a failed call into fatal (a refusal) or retryable (anything else). A
/// transport error is probed with a bare handshake, which says which alert the
/// coordinator sent, if any.
async fn judge(
    config: &AgentConfig,
    tls: &rustls::ClientConfig,
    status: tonic::Status,
) -> SessionError {
    if status.code() == tonic::Code::PermissionDenied {
        return SessionError::Fatal(AgentError::Removed(status.message().to_string()));
    }
    if let Some(refusal) = classify_tls_failure(&status) {
        return SessionError::Fatal(refusal.into());
    }
    if let Err(e) = dial::handshake(&config.coordinator, COORDINATOR_SERVER_NAME, tls.clone()).await
        && let Some(refusal) = classify_tls_failure(&e)
    {
        return SessionError::Fatal(refusal.into());
    }
    SessionError::Retry(status.to_string())
}

/// The real host effects, shaped by the agent's settings.
fn effects_for(config: &AgentConfig) -> RealEffects {
    let mut e = RealEffects::host();
    e.root = config.root_prefix.clone();
    e.docker_socket = config.docker_socket.clone();
    if let Some(cmd) = &config.engine_restart {
        e.engine_restart = vec!["sh".into(), "-c".into(), cmd.clone()];
    }
    if !config.modprobe {
        e.modprobe = None;
    }
    if !config.update_grub {
        e.update_grub = None;
    }
    e
}

async fn session(
    config: &AgentConfig,
    identity: &Identity,
    facts: &FactsSource,
    runner: &Arc<HostRunner>,
    ops: &Arc<Ops>,
    probation: &mut Option<crate::upgrade::Pending>,
    established: &mut bool,
) -> Result<SessionEnd, SessionError> {
    let peer = identity.peer()?;
    let tls = mtls_client_config(&identity.ca_der, &identity.cert_der, &identity.key_pem)?;
    let channel = dial::channel(&config.coordinator, COORDINATOR_SERVER_NAME, tls.clone())
        .map_err(|e| SessionError::Retry(e.to_string()))?;
    let mut client = AgentApiClient::new(channel);
    // Tunnels get a connection of their own, opened with the same identity:
    // HTTP/2 returns connection-level window only as a stream is read, so a
    // few tunnels stalled behind a slow reader would otherwise freeze the
    // session's heartbeats and commands with them.
    let tunnel_channel = dial::channel(&config.coordinator, COORDINATOR_SERVER_NAME, tls.clone())
        .map_err(|e| SessionError::Retry(e.to_string()))?;
    let _tunnels = AbortOnDrop(tokio::spawn(crate::tunnel::serve(
        tunnel_channel,
        crate::tunnel::TunnelSettings {
            allow: config.tunnel_allow.clone(),
            host: config.name.clone(),
            docker_socket: config.docker_socket.clone(),
            engine_access: config.engine_access,
        },
    )));

    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    // Database servers' container events, sent as they happen.
    let _database_events = AbortOnDrop(tokio::spawn(crate::database::watch::watch(
        config.name.clone(),
        config.docker_socket.clone(),
        tx.clone(),
    )));
    let first = facts.gather().await;
    let session_facts = first.clone();
    let upgrade_failure = crate::upgrade::failure(&config.state_dir);
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_version: apiary_api::version::current().into(),
            facts: Some(first.clone()),
            upgrade_failure: upgrade_failure
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_default(),
        })),
    };
    let _ = tx.send(hello).await;
    // Facts change under a running agent (an engine dies or comes back, an
    // address moves): re-read them now and then and report only changes. A
    // task of its own, because asking Docker may take seconds and must not
    // delay heartbeats.
    let refresher = {
        let (tx, facts) = (tx.clone(), facts.clone());
        tokio::spawn(async move {
            let mut last = first;
            loop {
                tokio::time::sleep(FACTS_REFRESH).await;
                let now = facts.gather().await;
                if now != last {
                    let msg = AgentMessage {
                        msg: Some(agent_message::Msg::Facts(now.clone())),
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                    last = now;
                }
            }
        })
    };
    let _stop_refresher = AbortOnDrop(refresher);
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(judge(config, &tls, status).await),
    };

    // Renew at two thirds of the certificate's life.
    let life = peer
        .not_after
        .duration_since(peer.not_before)
        .unwrap_or_default();
    let renew_at = peer.not_before + life.mul_f64(2.0 / 3.0);
    let until_renewal = renew_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let renewal = tokio::time::sleep(until_renewal);
    tokio::pin!(renewal);

    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut seq = 0u64;
    // The heartbeat in flight (seq, when sent) and the last measured round trip.
    let mut in_flight: Option<(u64, std::time::Instant)> = None;
    let mut last_rtt_us = 0u64;
    let mut welcomed = false;
    let mut outdated = false;
    // An upgrade installed by an operation of this session: its answer is
    // sent, then the session ends into the new binary.
    let (upgraded_tx, mut upgraded_rx) = mpsc::channel::<std::path::PathBuf>(1);
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.msg {
                    Some(coordinator_message::Msg::Welcome(w)) => {
                        let every = Duration::from_millis(w.heartbeat_interval_ms.max(100));
                        heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        if !welcomed {
                            info!(node = %w.node_name, heartbeat_ms = w.heartbeat_interval_ms, coordinator = %w.coordinator_version, "session established");
                        }
                        if !w.agent_outdated.is_empty() {
                            warn!(coordinator = %w.coordinator_version, "{}", w.agent_outdated);
                            outdated = true;
                        }
                        welcomed = true;
                        *established = true;
                        if w.hello_acknowledged && !outdated {
                            // The coordinator read the hello and works with
                            // this version: an upgrade to it is confirmed,
                            // and said with a heartbeat now (the rollout
                            // waits for one after the hello).
                            if let Some(p) = probation.take() {
                                crate::upgrade::confirm(&config.state_dir, &p);
                                heartbeat.reset_immediately();
                            }
                            if upgrade_failure.is_some() {
                                crate::upgrade::take_failure(&config.state_dir);
                            }
                        }
                        ops.endpoints().welcomed(&w.coordinator_endpoints);
                    }
                    Some(coordinator_message::Msg::HeartbeatAck(ack)) => {
                        if let Some((s, at)) = in_flight
                            && s == ack.seq
                        {
                            last_rtt_us = at.elapsed().as_micros() as u64;
                            in_flight = None;
                        }
                        // A coordinator that sends no verdict on the hello
                        // (older than upgrades): an acknowledged heartbeat
                        // comes after anything it answered the hello with.
                        if !outdated {
                            if let Some(p) = probation.take() {
                                crate::upgrade::confirm(&config.state_dir, &p);
                            }
                            if upgrade_failure.is_some() {
                                crate::upgrade::take_failure(&config.state_dir);
                            }
                        }
                    }
                    Some(coordinator_message::Msg::Command(cmd)) => match cmd.kind {
                        Some(apiary_proto::command::Kind::Op(op)) => {
                            let (ops, tx) = (ops.clone(), tx.clone());
                            let private_ip = session_facts.private_ip.parse().ok();
                            let (client, state_dir, upgraded) = (client.clone(), config.state_dir.clone(), upgraded_tx.clone());
                            tokio::spawn(async move {
                                let mut restart_into = None;
                                let result = match serde_json::from_str::<OpRequest>(&op.request_json) {
                                    // Needs the session's client: run here,
                                    // not by the host operations.
                                    Ok(OpRequest::UpgradeAgent(up)) => {
                                        let (reply, exe) = upgrade(&up, &state_dir, client).await;
                                        restart_into = exe;
                                        reply
                                    }
                                    Ok(req) => ops.run(req, private_ip).await,
                                    Err(e) => Err(format!("this agent does not understand the request: {e}")),
                                };
                                let reply = match result {
                                    Ok(v) => OpResult { command_id: cmd.id, ok: true, error: String::new(), result_json: v },
                                    Err(e) => OpResult { command_id: cmd.id, ok: false, error: e, result_json: String::new() },
                                };
                                let _ = tx.send(AgentMessage { msg: Some(agent_message::Msg::OpResult(reply)) }).await;
                                if let Some(exe) = restart_into {
                                    // The answer is queued; give it a moment on
                                    // the wire before the process is replaced.
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                    let _ = upgraded.send(exe).await;
                                }
                            });
                        }
                        Some(apiary_proto::command::Kind::ApplyHostConfig(apply)) => {
                            // Applying may take seconds (an engine restart):
                            // never on the session's own task.
                            let (runner, host_facts) = (runner.clone(), HostFacts::from(&session_facts));
                            tokio::spawn(async move { runner.command(cmd.id, apply, host_facts).await });
                        }
                        None => {}
                    },
                    None => {}
                },
                Ok(None) => return Ok(SessionEnd::Closed),
                Err(status) => return Err(judge(config, &tls, status).await),
            },
            Some(exe) = upgraded_rx.recv() => return Ok(SessionEnd::Upgraded(exe)),
            _ = runner.ready.notified() => {
                for report in runner.take_reports() {
                    if tx.send(AgentMessage { msg: Some(agent_message::Msg::HostConfig(report)) }).await.is_err() {
                        return Err(SessionError::Retry("session stream closed".into()));
                    }
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                in_flight = Some((seq, std::time::Instant::now()));
                let hb = Heartbeat { seq, last_rtt_us };
                if tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) }).await.is_err() {
                    return Err(SessionError::Retry("session stream closed".into()));
                }
            }
            _ = &mut renewal => {
                match renew(&mut client, identity, &config.state_dir).await {
                    Ok(new) => return Ok(SessionEnd::Renewed(new)),
                    Err(status) => {
                        warn!(error = %status, "certificate renewal failed; retrying in 30 s");
                        renewal.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(30));
                    }
                }
            }
        }
    }
}

/// Runs an `upgrade_agent` operation: its reply, and the binary to restart
/// into when it succeeded.
async fn upgrade(
    op: &apiary_api::ops::UpgradeAgent,
    state_dir: &Path,
    client: AgentApiClient<tonic::transport::Channel>,
) -> (Result<String, String>, Option<std::path::PathBuf>) {
    match crate::upgrade::install(state_dir, client, op).await {
        Ok((started, exe)) => {
            let reply = apiary_api::ops::encode_reply::<apiary_api::ops::UpgradeAgent>(&started)
                .map_err(|e| format!("cannot encode the reply: {e}"));
            (reply, Some(exe))
        }
        Err(e) => {
            warn!(error = %e, to = %op.version, "upgrade refused");
            (
                Err(format!("upgrade to {} not started: {e}", op.version)),
                None,
            )
        }
    }
}

async fn renew(
    client: &mut AgentApiClient<tonic::transport::Channel>,
    identity: &Identity,
    state_dir: &Path,
) -> Result<Identity, tonic::Status> {
    let csr = identity
        .renewal_csr()
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let resp = client
        .renew(RenewRequest { csr_der: csr })
        .await?
        .into_inner();
    let new = Identity {
        cert_der: resp.cert_der,
        ..identity.clone()
    };
    new.save(state_dir)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let peer = new
        .peer()
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    info!(serial = %peer.serial, not_after = %humantime::format_rfc3339_seconds(peer.not_after), "certificate renewed");
    Ok(new)
}
