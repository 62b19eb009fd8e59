//! The overlay network and its end-to-end check from probe containers.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::{
    KernelCrypto, OverlaySpec, OverlayStatus, ProbeEndpoint, SwarmClient, SwarmError,
    encryption_support, server_message,
};
use crate::reach::{Cell, Check, Outcome, Proto, VXLAN_PORT};

/// Docker's option key for an overlay's MTU.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Docker's option key that turns on IPsec for an overlay.
const ENCRYPTED_OPTION: &str = "encrypted";
/// The busybox image every lab engine holds (`apiary_lab::BUSYBOX_IMAGE`).
pub const PROBE_IMAGE: &str = "lab/busybox:1";
/// Label on everything apiary creates in an engine, so it is found again.
const MANAGED_LABEL: &str = "io.apiary.managed";
/// IPv4 + ICMP headers: a ping of MTU − 28 bytes fills the MTU exactly.
const ICMP_OVERHEAD: u32 = 28;
/// The `mtu` option Docker assumes without one: a 1500-byte path, so
/// containers get 1450 (the overlay driver takes 50 for the VXLAN header).
const DEFAULT_OVERLAY_MTU: u32 = 1500;

/// How [`overlay_differences`] sees an existing network; the subset of
/// Docker's `Network` that matters.
fn existing_summary(n: &bollard::models::NetworkInspect) -> (String, bool, bool, Option<String>) {
    let opts = n.options.clone().unwrap_or_default();
    (
        n.driver.clone().unwrap_or_default(),
        n.attachable.unwrap_or(false),
        opts.contains_key(ENCRYPTED_OPTION),
        opts.get(MTU_OPTION).cloned(),
    )
}

/// What differs between `spec` and an existing network (empty: adopt it).
pub fn overlay_differences(
    spec: &OverlaySpec,
    existing: &bollard::models::NetworkInspect,
) -> Vec<String> {
    let (driver, attachable, encrypted, mtu) = existing_summary(existing);
    let mut d = Vec::new();
    if driver != "overlay" {
        d.push(format!("driver is {driver:?}, not overlay"));
    }
    if attachable != spec.attachable {
        d.push(format!(
            "attachable is {attachable}, config says {}",
            spec.attachable
        ));
    }
    if encrypted != spec.encrypted {
        d.push(format!(
            "encrypted is {encrypted}, config says {}",
            spec.encrypted
        ));
    }
    let want_mtu = spec.mtu.map(|m| m.to_string());
    // An explicit 1500 and Docker's default are the same network.
    let norm = |m: Option<String>| m.filter(|v| *v != DEFAULT_OVERLAY_MTU.to_string());
    if norm(mtu.clone()) != norm(want_mtu.clone()) {
        d.push(format!(
            "mtu is {}, config says {}",
            mtu.as_deref().unwrap_or("default"),
            want_mtu.as_deref().unwrap_or("default")
        ));
    }
    d
}

/// The probe container of `host` (names are unique per engine, and a
/// container's name is its DNS name on the overlay).
pub fn probe_container_name(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("apiary-probe-{safe}")
}

/// Docker's rule for container names.
fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Knobs of the overlay check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOptions {
    /// An image with busybox's `sh`, `ping`, `nc`, `httpd` and `ip`.
    pub image: String,
    /// Where each probe container answers TCP (busybox httpd).
    pub tcp_port: u16,
    /// Per check; busybox counts whole seconds.
    pub timeout: Duration,
    /// The VXLAN port the overlay rides on, reported in the cells.
    pub data_port: u16,
    /// Checks (docker execs) in flight at once.
    pub concurrency: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            image: PROBE_IMAGE.to_string(),
            tcp_port: 8080,
            timeout: Duration::from_secs(1),
            data_port: VXLAN_PORT,
            concurrency: 8,
        }
    }
}

impl SwarmClient {
    /// Creates the overlay `spec` asks for, or adopts an existing one with
    /// the same options; a network of that name with other options is an
    /// error that lists the differences (apiary never replaces a network
    /// containers may use). An encrypted overlay is refused first if this
    /// host's kernel cannot carry it. Manager only.
    pub async fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<OverlayStatus, SwarmError> {
        if spec.encrypted {
            encryption_support(&self.host, &KernelCrypto::read(&self.root))?;
        }
        let v = self.view().await?;
        if !v.manager {
            return Err(SwarmError::NotManager {
                host: self.host.clone(),
                action: "creating an overlay network",
            });
        }
        if let Some(existing) = self.find_allocated(&spec.name).await? {
            let diff = overlay_differences(spec, &existing);
            if !diff.is_empty() {
                return Err(SwarmError::OverlayMismatch {
                    name: spec.name.clone(),
                    differences: diff.join("; "),
                });
            }
            debug!(host = %self.host, network = %spec.name, "overlay adopted");
            return Ok(status(&existing, false));
        }
        let mut options = HashMap::new();
        if spec.encrypted {
            options.insert(ENCRYPTED_OPTION.to_string(), String::new());
        }
        if let Some(mtu) = spec.mtu {
            options.insert(MTU_OPTION.to_string(), mtu.to_string());
        }
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("overlay".into()),
            attachable: Some(spec.attachable),
            options: Some(options),
            labels: Some(HashMap::from([(
                MANAGED_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(req)
            .await
            .map_err(|e| self.docker_err("create the overlay network", e))?;
        let created =
            self.find_allocated(&spec.name)
                .await?
                .ok_or_else(|| SwarmError::Timeout {
                    host: self.host.clone(),
                    what: format!("network {} to be listed after its creation", spec.name),
                    after: Duration::ZERO,
                })?;
        info!(host = %self.host, network = %spec.name, encrypted = spec.encrypted, "overlay created");
        Ok(status(&created, true))
    }

    /// Like [`Self::find_network`], once Swarm's allocator has handled the
    /// network: until then Docker shows no driver, options or subnets (for
    /// some milliseconds after creation), which would read as a mismatch.
    async fn find_allocated(
        &self,
        name: &str,
    ) -> Result<Option<bollard::models::NetworkInspect>, SwarmError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.find_network(name).await?;
            let pending = n
                .as_ref()
                .is_some_and(|n| n.driver.as_deref().unwrap_or_default().is_empty());
            if !pending || Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The network named exactly `name` (Docker's name filter also matches
    /// substrings), inspected: a manager's list shows swarm networks without
    /// their driver, options or subnets.
    async fn find_network(
        &self,
        name: &str,
    ) -> Result<Option<bollard::models::NetworkInspect>, SwarmError> {
        let filters = HashMap::from([("name", vec![name])]);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut found: Vec<String> = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| self.docker_err("list networks", e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        let id = match found.len() {
            0 => return Ok(None),
            1 => found.remove(0),
            count => {
                return Err(SwarmError::DuplicateNetworks {
                    name: name.to_string(),
                    count,
                });
            }
        };
        match self.docker.inspect_network(&id, None).await {
            Ok(n) => Ok(Some(n)),
            // Removed between the list and the inspect.
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => Ok(None),
            Err(e) => Err(self.docker_err("inspect a network", e)),
        }
    }

    /// Starts this host's probe container on `network`, or reuses it when it
    /// runs there already; returns its overlay address and MTU.
    pub async fn ensure_probe(
        &self,
        network: &str,
        opts: &ProbeOptions,
    ) -> Result<ProbeEndpoint, SwarmError> {
        let name = probe_container_name(&self.host);
        match self.docker.inspect_container(&name, None).await {
            Ok(c) => {
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let attached = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .is_some_and(|n| n.contains_key(network));
                let same_image =
                    c.config.as_ref().and_then(|c| c.image.as_deref()) == Some(opts.image.as_str());
                if attached && same_image && running {
                    return self.probe_endpoint(&name, network).await;
                }
                // Left from another network or image, or stopped (its host
                // was power-cycled): it is ours (by name), replace it. A
                // stopped container is never started again as it is: it
                // would come back with the overlay address it had, which
                // Swarm may have handed to another task meanwhile (seen
                // after a lab power cycle: two probes and etcd-1 on one
                // address, and etcd-3 dialling its own host's probe); a new
                // container gets a new attachment.
                self.remove_probe().await?;
            }
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => {}
            Err(e) => return Err(self.docker_err("inspect the probe container", e)),
        }
        let body = ContainerCreateBody {
            image: Some(opts.image.clone()),
            // httpd answers the TCP checks; as PID 1 it needs no init.
            cmd: Some(vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                opts.tcp_port.to_string(),
                "-h".into(),
                "/tmp".into(),
            ]),
            labels: Some(HashMap::from([
                (MANAGED_LABEL.to_string(), "true".to_string()),
                ("io.apiary.role".to_string(), "overlay-probe".to_string()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                // A probe is tiny; cap it so it can never crowd the database.
                memory: Some(32 * 1024 * 1024),
                ..Default::default()
            }),
            ..Default::default()
        };
        let create = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(create), body).await {
            Ok(_) => {}
            Err(e) if server_message(&e).is_some_and(|(s, m)| s == 404 && m.contains("image")) => {
                return Err(SwarmError::ImageMissing {
                    host: self.host.clone(),
                    image: opts.image.clone(),
                });
            }
            Err(e) => return Err(self.docker_err("create the probe container", e)),
        }
        self.start_probe(&name).await?;
        info!(host = %self.host, container = %name, network, "probe container started");
        self.probe_endpoint(&name, network).await
    }

    async fn start_probe(&self, name: &str) -> Result<(), SwarmError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| self.docker_err("start the probe container", e))
    }

    async fn probe_endpoint(&self, name: &str, network: &str) -> Result<ProbeEndpoint, SwarmError> {
        let probe_err = |reason: String| SwarmError::Probe {
            host: self.host.clone(),
            container: name.to_string(),
            reason,
        };
        // The address is assigned while the container starts; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = loop {
            let c = self
                .docker
                .inspect_container(name, None)
                .await
                .map_err(|e| self.docker_err("inspect the probe container", e))?;
            let ip = c
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network))
                .and_then(|e| e.ip_address)
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            if let Some(ip) = ip {
                break ip;
            }
            if Instant::now() >= deadline {
                return Err(probe_err(format!("no address on {network} after 10 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The MTU of the interface that holds the overlay address.
        let script = format!(
            "for d in /sys/class/net/*; do ip -4 -o addr show dev \"${{d##*/}}\" | grep -q \" inet {address}/\" && cat \"$d/mtu\"; done"
        );
        let (code, out) = self
            .exec(
                name,
                vec!["sh".into(), "-c".into(), script],
                Duration::from_secs(10),
            )
            .await?;
        let mtu = out.trim().parse::<u32>().map_err(|_| {
            probe_err(format!(
                "cannot read the overlay interface's MTU (exit {code}): {out:?}"
            ))
        })?;
        Ok(ProbeEndpoint {
            host: self.host.clone(),
            container: name.to_string(),
            address,
            mtu,
        })
    }

    /// Removes this host's probe container; false if there was none.
    pub async fn remove_probe(&self) -> Result<bool, SwarmError> {
        let name = probe_container_name(&self.host);
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(&name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if server_message(&e).is_some_and(|(s, _)| s == 404) => Ok(false),
            Err(e) => Err(self.docker_err("remove the probe container", e)),
        }
    }

    /// From `local` (this host's probe container), checks every peer's probe
    /// container across the overlay: ping and TCP by name and by address,
    /// and a full-size ping for the smaller of the two MTUs. One cell per
    /// check and peer, `proto` overlay, `port` the VXLAN port. Fails only if
    /// the local container cannot run commands at all.
    pub async fn overlay_probe(
        &self,
        local: &ProbeEndpoint,
        peers: &[ProbeEndpoint],
        opts: &ProbeOptions,
    ) -> Result<Vec<Cell>, SwarmError> {
        let secs = opts.timeout.as_secs().max(1).to_string();
        let mut jobs = Vec::new();
        let mut refused = Vec::new();
        for p in peers.iter().filter(|p| p.host != local.host) {
            // Names go into a shell command line: only container-name characters.
            if !valid_container_name(&p.container) {
                refused.push(Cell {
                    src: local.host.clone(),
                    dst: p.host.clone(),
                    addr: p.address,
                    port: opts.data_port,
                    proto: Proto::Overlay,
                    check: Check::PingName,
                    outcome: Outcome::Error(format!("not a container name: {:?}", p.container)),
                    rtt: None,
                    detail: None,
                });
                continue;
            }
            let addr = p.address.to_string();
            let size = local.mtu.min(p.mtu).saturating_sub(ICMP_OVERHEAD);
            let ping = |to: &str, size: Option<u32>| -> Vec<String> {
                let mut v: Vec<String> = ["ping", "-c", "2", "-i", "0.2", "-W", &secs]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if let Some(s) = size {
                    v.extend(["-s".to_string(), s.to_string()]);
                }
                v.push(to.to_string());
                v
            };
            // A request httpd answers, so success means the bytes crossed both ways.
            let tcp = |to: &str| -> Vec<String> {
                vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {secs} {to} {}",
                        opts.tcp_port
                    ),
                ]
            };
            jobs.push((p, Check::PingName, ping(&p.container, None)));
            jobs.push((p, Check::PingAddress, ping(&addr, None)));
            jobs.push((p, Check::TcpName, tcp(&p.container)));
            jobs.push((p, Check::TcpAddress, tcp(&addr)));
            jobs.push((p, Check::Mtu(size), ping(&addr, Some(size))));
        }
        // A check that hangs beyond its own timeout is cut here.
        let limit = opts.timeout * 3 + Duration::from_secs(5);
        // Futures made up front (see reach::probe_all: keeps this future `Send`).
        let checks: Vec<_> = jobs
            .into_iter()
            .map(|(peer, check, cmd)| self.overlay_check(local, peer, check, cmd, limit, opts))
            .collect();
        let results: Vec<Result<Cell, SwarmError>> = futures::stream::iter(checks)
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        let mut cells = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        cells.extend(refused);
        cells.sort_by(|a, b| (&a.dst, a.check).cmp(&(&b.dst, b.check)));
        Ok(cells)
    }

    async fn overlay_check(
        &self,
        local: &ProbeEndpoint,
        peer: &ProbeEndpoint,
        check: Check,
        cmd: Vec<String>,
        limit: Duration,
        opts: &ProbeOptions,
    ) -> Result<Cell, SwarmError> {
        let started = Instant::now();
        let (code, out) = self.exec(&local.container, cmd, limit).await?;
        let elapsed = started.elapsed();
        let (outcome, rtt) = match check {
            Check::TcpName | Check::TcpAddress => {
                let o = nc_outcome(code, &out);
                // No finer clock than the exec itself: an upper bound.
                let rtt = o.is_open().then_some(elapsed);
                (o, rtt)
            }
            _ => ping_outcome(code, &out),
        };
        let detail = (!outcome.is_open() && !out.trim().is_empty())
            .then(|| out.trim().lines().last().unwrap_or_default().to_string());
        Ok(Cell {
            src: local.host.clone(),
            dst: peer.host.clone(),
            addr: peer.address,
            port: opts.data_port,
            proto: Proto::Overlay,
            check,
            outcome,
            rtt,
            detail,
        })
    }

    /// Runs `cmd` in `container` to completion: exit code and output (stdout
    /// and stderr together).
    async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        limit: Duration,
    ) -> Result<(i64, String), SwarmError> {
        use crate::docker_exec::{ExecError, run};
        let exec_err = |reason: String| SwarmError::Probe {
            host: self.host.clone(),
            container: container.to_string(),
            reason,
        };
        run(&self.docker, container, cmd, limit)
            .await
            .map_err(|e| match e {
                ExecError::Docker { step, source } => self.docker_err(step, source),
                ExecError::Timeout(limit) => exec_err(format!("a check ran longer than {limit:?}")),
                ExecError::NoExitCode => exec_err("an exec did not report its exit code".into()),
            })
    }
}

fn status(n: &bollard::models::NetworkInspect, created: bool) -> OverlayStatus {
    OverlayStatus {
        id: n.id.clone().unwrap_or_default(),
        name: n.name.clone().unwrap_or_default(),
        created,
        subnets: n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .map(|c| c.iter().filter_map(|x| x.subnet.clone()).collect())
            .unwrap_or_default(),
    }
}

/// Busybox `ping`: exit 0 when any reply came back.
pub fn ping_outcome(code: i64, out: &str) -> (Outcome, Option<Duration>) {
    if code == 0 {
        let rtt = out
            .split("time=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|ms| ms.parse::<f64>().ok())
            // What the container printed is not trusted to be a time: a
            // negative, infinite or absurd one is no round trip.
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
        return (Outcome::Open, rtt);
    }
    (failure_outcome(out), None)
}

/// `printf request | nc`: exit 0 and an HTTP answer when the server was reached.
pub fn nc_outcome(code: i64, out: &str) -> Outcome {
    if code == 0 && out.contains("HTTP/") {
        return Outcome::Open;
    }
    if out.contains("refused") {
        return Outcome::Closed;
    }
    failure_outcome(out)
}

fn failure_outcome(out: &str) -> Outcome {
    let o = out.to_ascii_lowercase();
    if o.contains("bad address") {
        let line = out
            .lines()
            .find(|l| l.contains("bad address"))
            .unwrap_or(out);
        Outcome::Error(format!("name did not resolve ({})", line.trim()))
    } else if o.contains("unreachable") {
        Outcome::Unreachable
    } else if o.contains("refused") {
        Outcome::Closed
    } else if o.contains("packet loss") || o.contains("timed out") || o.trim().is_empty() {
        Outcome::Dropped
    } else {
        Outcome::Error(out.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::NetworkInspect;

    fn net(driver: &str, attachable: bool, opts: &[(&str, &str)]) -> NetworkInspect {
        NetworkInspect {
            name: Some("apiary".into()),
            driver: Some(driver.into()),
            attachable: Some(attachable),
            options: Some(
                opts.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn same_options_adopt_other_options_are_named() {
        let spec = OverlaySpec::attachable("apiary");
        assert!(overlay_differences(&spec, &net("overlay", true, &[])).is_empty());
        // Docker's default MTU written out is the same network
        assert!(
            overlay_differences(&spec, &net("overlay", true, &[(MTU_OPTION, "1500")])).is_empty()
        );
        let d = overlay_differences(
            &spec,
            &net(
                "bridge",
                false,
                &[(ENCRYPTED_OPTION, ""), (MTU_OPTION, "1400")],
            ),
        );
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d[0].contains("bridge"));
        assert!(d.iter().any(|x| x.starts_with("encrypted is true")));
        assert!(d.iter().any(|x| x == "mtu is 1400, config says default"));
        let enc = OverlaySpec {
            encrypted: true,
            mtu: Some(1400),
            ..spec
        };
        assert!(
            overlay_differences(
                &enc,
                &net(
                    "overlay",
                    true,
                    &[(ENCRYPTED_OPTION, ""), (MTU_OPTION, "1400")]
                )
            )
            .is_empty()
        );
    }

    #[test]
    fn probe_names_are_valid_container_names() {
        assert_eq!(
            probe_container_name("workerbee-1"),
            "apiary-probe-workerbee-1"
        );
        assert_eq!(probe_container_name("a b/c"), "apiary-probe-a-b-c");
        assert!(valid_container_name(&probe_container_name("x")));
        for bad in ["", "-x", "a;reboot", "a b", "$(id)"] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn busybox_outputs_map_to_outcomes() {
        let ok = "PING 10.232.0.4 (10.232.0.4): 56 data bytes\n64 bytes from 10.232.0.4: seq=0 ttl=64 time=0.412 ms\n";
        let (o, rtt) = ping_outcome(0, ok);
        assert_eq!(o, Outcome::Open);
        assert_eq!(rtt, Some(Duration::from_micros(412)));
        let lost = "PING x (10.232.0.4): 56 data bytes\n\n--- x ping statistics ---\n2 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(ping_outcome(1, lost).0, Outcome::Dropped);
        let (o, _) = ping_outcome(1, "ping: bad address 'apiary-probe-h2'\n");
        assert!(
            matches!(o, Outcome::Error(ref e) if e.starts_with("name did not resolve")),
            "{o:?}"
        );
        assert_eq!(
            ping_outcome(1, "ping: sendto: Host is unreachable\n").0,
            Outcome::Unreachable
        );
        assert_eq!(nc_outcome(0, "HTTP/1.0 404 Not Found\r\n"), Outcome::Open);
        assert_eq!(
            nc_outcome(
                1,
                "nc: can't connect to remote host (10.232.0.4): Connection refused\n"
            ),
            Outcome::Closed
        );
        assert_eq!(nc_outcome(1, "nc: timed out\n"), Outcome::Dropped);
        assert_eq!(nc_outcome(1, ""), Outcome::Dropped);
        assert!(matches!(
            nc_outcome(1, "nc: bad address 'x'\n"),
            Outcome::Error(_)
        ));
    }
}

/// The agent runs these in spawned tasks: they must stay `Send` (compile-time check).
#[cfg(test)]
mod send_check {
    use super::*;
    #[allow(dead_code)]
    fn spawnable(c: SwarmClient, l: ProbeEndpoint, p: Vec<ProbeEndpoint>, o: ProbeOptions) {
        tokio::spawn(async move { c.overlay_probe(&l, &p, &o).await });
    }
    #[allow(dead_code)]
    fn spawnable_reach(t: Vec<crate::reach::Target>) {
        tokio::spawn(
            async move { crate::reach::probe_all("x", &t, Duration::from_secs(1), 4).await },
        );
    }
    #[allow(dead_code)]
    fn spawnable_probe(c: SwarmClient, o: ProbeOptions) {
        tokio::spawn(async move { c.ensure_probe("n", &o).await });
    }
}
