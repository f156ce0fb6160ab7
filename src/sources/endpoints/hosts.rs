//! containerd's registry host configuration, read as containerd reads it: the directory its
//! CRI plugin's `registry.config_path` names (found in containerd's `config.toml`, or given),
//! one `<registry>/hosts.toml` per registry (`host_port_` before `host:port`, `_default` for
//! the rest), each listing its `[host."…"]` mirrors in file order and then its `server`, the
//! registry itself unless said otherwise. An endpoint with both `pull` and `resolve` (the
//! default) is tried for every request before the next: traffic to a later endpoint proves
//! that containerd went past it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Registries configured at most; more are left out (and said).
pub(super) const MAX_REGISTRIES: usize = 64;
/// Endpoints at most, over all registries; more count as `other` (and are said).
pub(super) const MAX_ENDPOINTS: usize = 64;
/// The directory that applies to registries without their own.
pub(super) const DEFAULT_DIR: &str = "_default";

/// Why the configuration could not be read: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the TOML containerd reads.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, from the TOML parser or the schema.
        message: String,
    },
}

/// One endpoint of a registry: where containerd sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `host[:port]` as configured: the label.
    pub label: String,
    /// Host name or IP literal.
    pub host: String,
    /// Port, the scheme's default if not written.
    pub port: u16,
    /// Whether containerd tries it for every request before the next endpoint (capabilities
    /// include both `pull` and `resolve`).
    pub fails_over: bool,
}

/// The endpoints containerd tries for one registry (or for `_default`), in order; the last is
/// the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RegistryHosts {
    /// The directory's name: the registry host (`docker.io`, `localhost:5000`) or `_default`.
    pub registry: String,
    /// Mirrors in file order, then the server (`None`: the registry itself, which for
    /// `_default` depends on the registry pulled).
    pub mirrors: Vec<Endpoint>,
    /// The configured `server`.
    pub server: Option<Endpoint>,
}

/// The whole directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HostsConfig {
    /// Per directory name.
    pub registries: HashMap<String, RegistryHosts>,
}

impl HostsConfig {
    /// Whether any mirror is configured: an endpoint other than a registry's own server
    /// (without one there is nothing to attribute).
    pub(super) fn has_mirrors(&self) -> bool {
        self.registries.iter().any(|(dir, r)| {
            let server = r
                .server
                .clone()
                .or_else(|| default_server(&registry_of_dir(dir)).ok());
            r.mirrors
                .iter()
                .any(|m| dir == DEFAULT_DIR || server.as_ref().is_none_or(|s| s.label != m.label))
        })
    }

    /// The endpoints containerd tries for `registry`, in order, as containerd picks the
    /// directory; `None` if no directory applies.
    pub(super) fn endpoints_of(&self, registry: &str) -> Option<Vec<Endpoint>> {
        let hosts = self
            .registries
            .get(&host_directory(registry))
            .or_else(|| self.registries.get(registry))
            .or_else(|| self.registries.get(DEFAULT_DIR))?;
        let server = hosts
            .server
            .clone()
            .or_else(|| default_server(registry).ok());
        // containerd would try an endpoint listed twice twice; it is one endpoint here (a
        // mirror entry that repeats the server is the server).
        let mut all: Vec<Endpoint> = Vec::new();
        for e in hosts.mirrors.iter().chain(server.as_ref()) {
            if !all.iter().any(|a| a.label == e.label) {
                all.push(e.clone());
            }
        }
        Some(all)
    }
}

/// `host_port_` → `host:port`: the registry a directory is for.
pub(super) fn registry_of_dir(dir: &str) -> String {
    match dir.strip_suffix('_').and_then(|d| d.rsplit_once('_')) {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            format!("{host}:{port}")
        }
        _ => dir.to_string(),
    }
}

/// `host:port` → `host_port_`, the directory name containerd looks for first.
fn host_directory(registry: &str) -> String {
    match registry.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => format!("{host}_{port}_"),
        _ => registry.to_string(),
    }
}

/// The registry's own server when `hosts.toml` names none (docker.io's is
/// registry-1.docker.io; containerd's CRI plugin uses https).
fn default_server(registry: &str) -> Result<Endpoint, String> {
    let host = if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    };
    parse_endpoint(&format!("https://{host}"), &[])
}

/// `config_path` from containerd's `config.toml`: the CRI plugin's registry section, under
/// 1.x's `io.containerd.grpc.v1.cri` or 2.x's `io.containerd.cri.v1.images`. `None` if the
/// file says none.
pub(super) fn config_path_from_containerd(path: &Path) -> Result<Option<PathBuf>, HostsError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| HostsError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let plugins = doc.get("plugins").and_then(toml::Value::as_table);
    let found = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"]
        .iter()
        .filter_map(|p| {
            plugins?
                .get(*p)?
                .get("registry")?
                .get("config_path")?
                .as_str()
        })
        .find(|p| !p.is_empty());
    Ok(found.map(PathBuf::from))
}

/// Reads every `<dir>/<registry>/hosts.toml` under `dir` (a missing `dir` is no mirrors).
pub(super) fn read_dir(dir: &Path) -> Result<HostsConfig, HostsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostsConfig::default()),
        Err(source) => {
            return Err(HostsError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("hosts.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    if names.len() > MAX_REGISTRIES {
        tracing::warn!(
            dir = %dir.display(),
            registries = names.len(),
            kept = MAX_REGISTRIES,
            "more registry host directories than pullwatch attributes endpoints for; the rest count as registry \"unknown\""
        );
        names.truncate(MAX_REGISTRIES);
    }
    let mut config = HostsConfig::default();
    for name in names {
        let path = dir.join(&name).join("hosts.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| HostsError::Read {
            path: path.clone(),
            source,
        })?;
        let hosts = parse_hosts(&name, &text).map_err(|message| HostsError::Parse {
            path: path.clone(),
            message,
        })?;
        config.registries.insert(name, hosts);
    }
    Ok(config)
}

/// One `hosts.toml` of directory `registry`.
pub(super) fn parse_hosts(registry: &str, text: &str) -> Result<RegistryHosts, String> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    let capabilities = |t: &toml::Table| -> Result<Vec<String>, String> {
        match t.get("capabilities") {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_ascii_lowercase)
                        .ok_or_else(|| "capabilities must be strings".to_string())
                })
                .collect(),
            Some(_) => Err("capabilities must be an array".into()),
        }
    };
    let mut mirrors = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| "`host` must be a table of hosts".to_string())?;
        // The table keeps the file's order (toml's `preserve_order`): containerd's order.
        for (url, conf) in hosts {
            let conf = conf
                .as_table()
                .ok_or_else(|| format!("host \"{url}\" must be a table"))?;
            mirrors.push(parse_endpoint(url, &capabilities(conf)?)?);
        }
    }
    let server = match doc.get("server") {
        None => None,
        Some(toml::Value::String(s)) if s.is_empty() => None,
        Some(toml::Value::String(s)) => Some(parse_endpoint(s, &capabilities(&doc)?)?),
        Some(_) => return Err("`server` must be a string".into()),
    };
    Ok(RegistryHosts {
        registry: registry.to_string(),
        mirrors,
        server,
    })
}

/// An endpoint from its URL (`https://` when no scheme is written, as containerd does).
fn parse_endpoint(url: &str, capabilities: &[String]) -> Result<Endpoint, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_string(), url),
    };
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        other => return Err(format!("host \"{url}\": unknown scheme {other}")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("host \"{url}\" names no host"));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("host \"{url}\": port is not a number"))?;
    for c in capabilities {
        if !matches!(c.as_str(), "pull" | "resolve" | "push") {
            return Err(format!("host \"{url}\": unknown capability {c}"));
        }
    }
    let has = |c: &str| capabilities.is_empty() || capabilities.iter().any(|x| x == c);
    Ok(Endpoint {
        label: authority.to_string(),
        host,
        port: port.unwrap_or(default_port),
        fails_over: has("pull") && has("resolve"),
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → host (brackets off) and port.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((authority.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_keep_the_file_order_then_the_server() {
        let text = r#"
server = "http://127.0.0.1:5000"

[host."http://127.0.0.1:5002"]
  capabilities = ["pull"]

[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"#;
        let h = parse_hosts("127.0.0.1:5000", text).unwrap();
        let labels: Vec<&str> = h.mirrors.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["127.0.0.1:5002", "127.0.0.1:5001"]);
        assert!(!h.mirrors[0].fails_over, "pull only: resolve goes on");
        assert!(h.mirrors[1].fails_over);
        let server = h.server.unwrap();
        assert_eq!((server.host.as_str(), server.port), ("127.0.0.1", 5000));
        assert!(server.fails_over);
    }

    #[test]
    fn defaults_follow_containerd() {
        let h = parse_hosts("docker.io", "[host.\"mirror.example\"]\n").unwrap();
        assert_eq!(h.mirrors[0].port, 443, "https when no scheme");
        assert!(h.mirrors[0].fails_over, "pull, resolve and push by default");
        let mut c = HostsConfig::default();
        c.registries.insert("docker.io".into(), h);
        let all = c.endpoints_of("docker.io").unwrap();
        assert_eq!(all[1].label, "registry-1.docker.io");
        assert_eq!(c.endpoints_of("quay.io"), None);
        let d = parse_hosts(DEFAULT_DIR, "[host.\"http://[::1]:5001\"]\n").unwrap();
        assert_eq!(
            (d.mirrors[0].host.as_str(), d.mirrors[0].port),
            ("::1", 5001)
        );
        c.registries.insert(DEFAULT_DIR.into(), d);
        let quay = c.endpoints_of("quay.io").unwrap();
        assert_eq!(quay.len(), 2);
        assert_eq!(quay[1].label, "quay.io");
        assert!(c.has_mirrors());
    }

    #[test]
    fn a_port_directory_is_found_both_ways() {
        let mut c = HostsConfig::default();
        let h = parse_hosts("x", "[host.\"http://m:1\"]\n").unwrap();
        c.registries.insert("localhost_5000_".into(), h.clone());
        assert!(c.endpoints_of("localhost:5000").is_some());
        c.registries.clear();
        c.registries.insert("localhost:5000".into(), h);
        assert!(c.endpoints_of("localhost:5000").is_some());
        assert_eq!(registry_of_dir("b_5000_"), "b:5000");
        assert_eq!(registry_of_dir("docker.io"), "docker.io");
        assert_eq!(registry_of_dir("my_host_x_"), "my_host_x_");
    }

    #[test]
    fn a_host_entry_that_repeats_the_server_is_no_mirror() {
        let mut c = HostsConfig::default();
        let same = "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5000\"]\n";
        c.registries
            .insert("127.0.0.1:5000".into(), parse_hosts("x", same).unwrap());
        assert!(!c.has_mirrors());
        assert_eq!(c.endpoints_of("127.0.0.1:5000").unwrap().len(), 1);
    }

    #[test]
    fn junk_is_refused_with_the_reason() {
        for (text, says) in [
            ("server = 1", "must be a string"),
            ("[host.\"ftp://x\"]", "unknown scheme"),
            ("[host.\"http://x:y\"]", "port"),
            (
                "[host.\"http://x\"]\ncapabilities = [\"fly\"]",
                "unknown capability",
            ),
            ("host = 3", "table"),
            ("[[[", ""),
        ] {
            let e = parse_hosts("r", text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn config_path_is_read_from_either_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        )
        .unwrap();
        assert_eq!(
            config_path_from_containerd(&p).unwrap(),
            Some(PathBuf::from("/etc/containerd/certs.d"))
        );
        std::fs::write(
            &p,
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/x'\n",
        )
        .unwrap();
        assert_eq!(config_path_from_containerd(&p).unwrap(), Some("/x".into()));
        std::fs::write(&p, "version = 2\n").unwrap();
        assert_eq!(config_path_from_containerd(&p).unwrap(), None);
        std::fs::write(&p, "version = = 2\n").unwrap();
        let e = config_path_from_containerd(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
    }

    #[test]
    fn a_directory_reads_each_registry() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!read_dir(&dir.path().join("absent")).unwrap().has_mirrors());
        let r = dir.path().join("127.0.0.1:5000");
        std::fs::create_dir(&r).unwrap();
        std::fs::write(
            r.join("hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n[host.\"http://127.0.0.1:5001\"]\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let c = read_dir(dir.path()).unwrap();
        assert_eq!(c.registries.len(), 1);
        assert!(c.has_mirrors());
        std::fs::write(r.join("hosts.toml"), "server = [").unwrap();
        let e = read_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("hosts.toml"), "{e}");
    }
}
