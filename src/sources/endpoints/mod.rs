//! The endpoint witness: which registry endpoint (a mirror or the upstream, as containerd's
//! `hosts.toml` lists them, [`hosts`]) served each pull, and which ones containerd went past.
//! It reads the bytes containerd's own TCP connections have received ([`sockets`]: its
//! descriptors in /proc, the kernel's socket table through `sock_diag`) every poll interval
//! and at each pull's start and end, maps each connection's remote address to the configured
//! host that resolves to it, and keeps the growth per endpoint over time ([`ledger`]): a
//! pull's report sums the bytes of its window, attributed to its registry only when no other
//! registry that could use the endpoint was pulling (else `unknown`, never guessed).
//!
//! Connections are read only while a pull is known to be going (and at each pull's start and
//! end); a read costs a walk of the kernel's TCP table.
//!
//! What it can miss: a connection opened and closed between two reads (containerd keeps its
//! registry connections open, and each pull's end is read at once, so this is rare); which of
//! two concurrent pulls of one registry got which bytes (both name the endpoint, marked
//! `shared` when another registry could have used it); the reason an endpoint failed (its
//! connections say only whether it answered). It needs the runtime's PID and network
//! namespaces (hostPID, hostNetwork). With no mirror configured it reads nothing.

mod config;
mod hosts;
mod ledger;
mod metrics;
mod sockets;

pub(crate) use config::EndpointArgs;
pub(crate) use config::{EndpointConfig, HostsSource};
pub(crate) use metrics::EndpointMetrics;

use crate::core::endpoints::{EndpointReport, EndpointWitness};
use hosts::{DEFAULT_DIR, HostsConfig, MAX_ENDPOINTS, registry_of_dir};
use ledger::{Candidate, Ledger, OTHER, Users};
use metrics::ByEndpoint;
use sockets::SocketTable;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Label value of the witness in the shared source families.
pub(crate) const SOURCE: &str = "endpoints";
/// The registry label of bytes no single registry can own.
const UNKNOWN: &str = crate::core::attempt::UNKNOWN_REGISTRY;
/// Addresses one configured host may resolve to, at most.
const MAX_ADDRESSES_PER_HOST: usize = 32;
/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The host directory, ready to attribute with: a label per endpoint (bounded), the
/// registries each serves, and the registries with a directory of their own.
#[derive(Debug, Default)]
struct Plan {
    hosts: HostsConfig,
    /// Whether any mirror is configured (read once per directory, asked at every pull).
    mirrors: bool,
    labels: Vec<String>,
    index: HashMap<String, usize>,
    /// `(host, port)` per label, to resolve.
    targets: Vec<(String, u16)>,
    users: Vec<Users>,
    own: HashSet<String>,
}

impl Plan {
    fn new(hosts: HostsConfig) -> Self {
        let mut plan = Plan::default();
        let mut dirs: Vec<&String> = hosts.registries.keys().collect();
        dirs.sort();
        for dir in dirs {
            let registry = registry_of_dir(dir);
            let endpoints = if dir == DEFAULT_DIR {
                hosts.registries[dir].mirrors.clone()
            } else {
                plan.own.insert(registry.clone());
                hosts.endpoints_of(&registry).unwrap_or_default()
            };
            for e in endpoints {
                let i = match plan.index.get(&e.label) {
                    Some(i) => *i,
                    None if plan.labels.len() >= MAX_ENDPOINTS => {
                        tracing::warn!(
                            endpoint = %e.label,
                            cap = MAX_ENDPOINTS,
                            "more registry endpoints configured than pullwatch labels; this one counts as \"other\""
                        );
                        continue;
                    }
                    None => {
                        plan.index.insert(e.label.clone(), plan.labels.len());
                        plan.labels.push(e.label.clone());
                        plan.targets.push((e.host.clone(), e.port));
                        plan.users.push(Users::Only(Vec::new()));
                        plan.labels.len() - 1
                    }
                };
                match (&mut plan.users[i], dir == DEFAULT_DIR) {
                    (u, true) => *u = Users::Any,
                    (Users::Only(v), false) if !v.contains(&registry) => v.push(registry.clone()),
                    _ => {}
                }
            }
        }
        plan.mirrors = hosts.has_mirrors();
        plan.hosts = hosts;
        plan
    }

    fn users(&self, endpoint: Option<usize>) -> Users {
        endpoint
            .and_then(|i| self.users.get(i).cloned())
            .unwrap_or(Users::Any)
    }

    fn label(&self, endpoint: Option<usize>) -> String {
        endpoint
            .and_then(|i| self.labels.get(i).cloned())
            .unwrap_or_else(|| OTHER.to_string())
    }

    /// The `registry` label of bytes attributed to `registry`: its own directory's name, or
    /// `other` for one served through `_default` (bounded by the directory).
    fn registry_label<'a>(&self, registry: Option<&'a str>) -> &'a str {
        match registry {
            Some(r) if self.own.contains(r) => r,
            Some(_) => crate::core::cardinality::OVERFLOW_VALUE,
            None => UNKNOWN,
        }
    }
}

/// What a read works on.
#[derive(Debug, Default)]
struct State {
    plan: Arc<Plan>,
    ledger: Ledger,
    addresses: HashMap<SocketAddr, usize>,
    pid: Option<u32>,
    table: Option<SocketTable>,
    /// The last failure was said (said again only once it worked in between).
    failing: bool,
}

/// Watches containerd's registry connections; the recorder's [`EndpointWitness`].
#[derive(Debug)]
pub(crate) struct Meter {
    config: EndpointConfig,
    metrics: EndpointMetrics,
    state: Mutex<State>,
}

impl Meter {
    /// A witness with `config`; it reads nothing until [`Self::run`] finds containerd.
    pub(crate) fn new(config: EndpointConfig, metrics: EndpointMetrics) -> Arc<Self> {
        Arc::new(Self {
            config,
            metrics,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the host directory as configured.
    fn load(&self) -> Result<HostsConfig, String> {
        let dir = match &self.config.hosts {
            HostsSource::Dir(d) => d.clone(),
            HostsSource::ContainerdConfig(file) => match hosts::config_path_from_containerd(file) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(HostsConfig::default()),
                Err(hosts::HostsError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(HostsConfig::default());
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        hosts::read_dir(&dir).map_err(|e| e.to_string())
    }

    /// Resolves every configured host as containerd would (IP literals as they are).
    async fn resolve(plan: &Plan) -> HashMap<SocketAddr, usize> {
        let mut out = HashMap::new();
        for (i, (host, port)) in plan.targets.iter().enumerate() {
            if let Ok(ip) = host.parse::<IpAddr>() {
                out.entry(SocketAddr::new(ip, *port)).or_insert(i);
                continue;
            }
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => {
                    for a in addrs.take(MAX_ADDRESSES_PER_HOST) {
                        // An IPv4 peer may show as an IPv4-mapped IPv6 address too.
                        out.entry(a).or_insert(i);
                        if let IpAddr::V4(v4) = a.ip() {
                            out.entry(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), *port))
                                .or_insert(i);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %host, error = %e, "registry endpoint does not resolve now");
                }
                Err(_) => tracing::debug!(host = %host, "resolving a registry endpoint timed out"),
            }
        }
        out
    }

    /// Reads containerd's connections now into the ledger and the byte counts.
    fn read(&self, s: &mut State, now: Instant) {
        let Some(pid) = s.pid else { return };
        let result = sockets::socket_inodes(&self.config.proc, pid)
            .map_err(|e| format!("reading /proc/{pid}/fd: {e} (needs CAP_SYS_PTRACE and hostPID)"))
            .and_then(|inodes| {
                if s.table.is_none() {
                    s.table = Some(SocketTable::open().map_err(|e| e.to_string())?);
                }
                let table = s.table.as_mut().ok_or("no socket table")?;
                table.connections(&inodes).map_err(|e| e.to_string())
            });
        let conns = match result {
            Ok(c) => c,
            Err(error) => {
                s.pid = None;
                s.table = None;
                self.failed(s, &error);
                return;
            }
        };
        let conns: Vec<(u64, Option<usize>, u64)> = conns
            .iter()
            .map(|c| {
                (
                    c.inode,
                    s.addresses.get(&c.remote).copied(),
                    c.bytes_received,
                )
            })
            .collect();
        s.ledger.observe(&conns, now);
    }

    /// Counts the bytes that have settled (all of them with `all`).
    fn settle(&self, s: &mut State, now: Instant, all: bool) {
        let plan = s.plan.clone();
        for d in s.ledger.settle(now, all, |e| plan.users(e)) {
            let endpoint = plan.label(d.endpoint);
            let labels = ByEndpoint {
                registry: plan.registry_label(d.registry.as_deref()),
                endpoint: &endpoint,
            };
            self.metrics.bytes.with(&labels).inc_by(d.bytes);
        }
    }

    fn failed(&self, s: &mut State, error: &str) {
        self.metrics.health.set_source_up(false);
        self.metrics.health.error();
        if !s.failing {
            tracing::warn!(source = SOURCE, error = %error, "cannot read containerd's registry connections; retrying");
        }
        s.failing = true;
    }

    /// Finds containerd's process, and checks that its connections are in pullwatch's
    /// network namespace.
    async fn find(&self) -> Result<u32, String> {
        let pid = crate::sources::peer::peer_of(&self.config.containerd_socket)
            .await
            .map_err(|e| e.to_string())?;
        let ns = |p: &std::path::Path| std::fs::read_link(p.join("ns/net"));
        let theirs = ns(&self.config.proc.join(pid.to_string()));
        let ours = ns(&self.config.proc.join("self"));
        match (theirs, ours) {
            (Ok(a), Ok(b)) if a != b => Err(format!(
                "containerd (pid {pid}) runs in another network namespace: pullwatch needs the host's (hostNetwork) to read its connections"
            )),
            (Err(e), _) => Err(format!(
                "reading containerd's network namespace (pid {pid}): {e} (needs CAP_SYS_PTRACE)"
            )),
            _ => Ok(pid),
        }
    }

    /// Reads the host directory and containerd's connections until `stop`: the directory and
    /// its names again every reload interval, the connections every poll interval; counts the
    /// bytes that settled every second.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.poll_interval.min(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload_at = Instant::now();
        let mut read_at = Instant::now();
        let mut said_none = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => {
                    let mut s = self.lock();
                    return self.settle(&mut s, Instant::now(), true);
                }
            }
            let now = Instant::now();
            if now >= reload_at {
                reload_at = now + self.config.reload;
                self.reload(&mut said_none).await;
            }
            if !self.lock().plan.mirrors {
                self.metrics.health.set_source_up(true);
                continue;
            }
            if self.lock().pid.is_none() {
                match self.find().await {
                    Ok(pid) => {
                        let mut s = self.lock();
                        self.settle(&mut s, now, true);
                        s.pid = Some(pid);
                        s.ledger = Ledger::default();
                        // The baseline: bytes before now are no pull's.
                        self.read(&mut s, now);
                        read_at = now + self.config.poll_interval;
                    }
                    Err(error) => {
                        let mut s = self.lock();
                        self.failed(&mut s, &error);
                        continue;
                    }
                }
            }
            let mut s = self.lock();
            let now = Instant::now();
            // Between pulls nothing is read: each pull's end reads anyway (a read walks the
            // kernel's whole TCP table, a few ms on a large host: docs/performance.md).
            let recent = self.config.poll_interval * 3;
            if now >= read_at && s.ledger.busy(now, recent.max(Duration::from_secs(5))) {
                read_at = now + self.config.poll_interval;
                self.read(&mut s, now);
            }
            self.settle(&mut s, now, false);
            if s.pid.is_some() {
                if s.failing {
                    tracing::info!(
                        source = SOURCE,
                        "reading containerd's registry connections again"
                    );
                }
                s.failing = false;
                self.metrics.health.set_source_up(true);
            }
        }
    }

    /// Reads the host directory again and resolves its names; a changed directory starts a
    /// new ledger (what was read before is counted first). A directory that cannot be read
    /// is said and counted, and the last one read stays.
    async fn reload(&self, said_none: &mut bool) {
        let hosts = match self.load() {
            Ok(h) => h,
            Err(error) => {
                let mut s = self.lock();
                return self.failed(
                    &mut s,
                    &format!("reading containerd's registry hosts: {error}"),
                );
            }
        };
        let changed = hosts != self.lock().plan.hosts;
        let plan = Plan::new(hosts);
        let mirrors = plan.mirrors;
        if !mirrors && !*said_none {
            tracing::info!(
                source = SOURCE,
                "no registry mirror configured in containerd's hosts.toml; endpoint attribution idle"
            );
        }
        *said_none = !mirrors;
        let addresses = Self::resolve(&plan).await;
        let mut s = self.lock();
        if changed {
            self.settle(&mut s, Instant::now(), true);
            if mirrors {
                tracing::info!(source = SOURCE, endpoints = ?plan.labels, "registry endpoints configured");
            }
            s.ledger = Ledger::default();
            s.plan = Arc::new(plan);
        }
        s.addresses = addresses;
        if changed {
            // A new baseline, with the new addresses.
            self.read(&mut s, Instant::now());
        }
    }
}

/// One read of a process's TCP connections, as the witness makes it at each pull's start and
/// end (for the benchmark: what a read costs).
#[derive(Debug)]
pub(crate) struct Reader(SocketTable);

impl Reader {
    /// Opens the kernel's socket table.
    pub(crate) fn open() -> Result<Self, sockets::SocketsError> {
        SocketTable::open().map(Self)
    }

    /// Reads `pid`'s TCP connections; how many it has.
    pub(crate) fn read(&mut self, pid: u32) -> Result<usize, String> {
        let inodes = sockets::socket_inodes(std::path::Path::new("/proc"), pid)
            .map_err(|e| e.to_string())?;
        let conns = self.0.connections(&inodes).map_err(|e| e.to_string())?;
        Ok(conns.len())
    }
}

impl EndpointWitness for Meter {
    fn pull_started(&self, registry: &str) {
        let mut s = self.lock();
        if !s.plan.mirrors {
            return;
        }
        let now = Instant::now();
        self.read(&mut s, now);
        s.ledger.started(registry, now);
    }

    fn downloading(&self, host: &str) {
        let mut s = self.lock();
        if s.plan.mirrors {
            s.ledger.downloading(host, Instant::now());
        }
    }

    fn pull_ended(
        &self,
        registry: &str,
        started: SystemTime,
        failed: bool,
    ) -> Option<EndpointReport> {
        let mut s = self.lock();
        let plan = s.plan.clone();
        let endpoints = plan.hosts.endpoints_of(registry)?;
        if !plan.mirrors || s.pid.is_none() {
            return None;
        }
        let now = Instant::now();
        let ago = SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        let start = now.checked_sub(ago).unwrap_or(now);
        s.ledger.ended(registry, start, now);
        self.read(&mut s, now);
        let candidates: Vec<Candidate> =
            ledger::candidates(&endpoints, |l| plan.index.get(l).copied());
        let judged = s.ledger.judge(
            registry,
            start,
            now,
            &candidates,
            |e| plan.label(e),
            |e| plan.users(e),
            failed,
        );
        for e in judged.count {
            let endpoint = plan.label(Some(e));
            let labels = ByEndpoint {
                registry: plan.registry_label(Some(registry)),
                endpoint: &endpoint,
            };
            self.metrics.fallbacks.with(&labels).inc();
        }
        Some(judged.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_labels_each_endpoint_once_with_its_registries() {
        let mut hosts = HostsConfig::default();
        for (dir, text) in [
            (
                "a:5000",
                "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5001\"]\n",
            ),
            (
                "b_5000_",
                "server = \"http://127.0.0.2:5000\"\n[host.\"http://127.0.0.1:5001\"]\n",
            ),
            (DEFAULT_DIR, "[host.\"http://127.0.0.1:5009\"]\n"),
        ] {
            hosts
                .registries
                .insert(dir.into(), hosts::parse_hosts(dir, text).unwrap());
        }
        let plan = Plan::new(hosts);
        assert_eq!(plan.labels.len(), 4);
        let mirror = plan.index["127.0.0.1:5001"];
        assert_eq!(
            plan.users(Some(mirror)),
            Users::Only(vec!["a:5000".into(), "b:5000".into()])
        );
        assert_eq!(plan.users(Some(plan.index["127.0.0.1:5009"])), Users::Any);
        assert_eq!(plan.users(None), Users::Any);
        assert_eq!(plan.registry_label(Some("b:5000")), "b:5000");
        assert_eq!(plan.registry_label(Some("quay.io")), "other");
        assert_eq!(plan.registry_label(None), "unknown");
    }
}
