//! `--web.config.file`: TLS and basic auth for the HTTP endpoint, in the Prometheus exporter
//! toolkit's format, so the same file works for pullwatch and node_exporter:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
//!   client_ca_file: ca.crt
//! basic_auth_users:
//!   prometheus: $2y$10$...           # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Settings pullwatch does not implement are refused rather than ignored: a security setting
//! silently dropped is worse than a start-up error.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the web config cannot be used. Never quotes a password hash or key material.
#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {path}: {problem}")]
pub(crate) struct WebConfigError {
    /// The config file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
}

/// The loaded configuration.
pub(crate) struct WebConfig {
    /// TLS server configuration, if TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    users: BTreeMap<String, String>,
    /// A hash of the users' cost that no password matches: an unknown user is checked against
    /// it, so a refusal takes as long whether or not the user exists.
    dummy: String,
    /// `Authorization` values verified in the last [`VERIFIED_TTL`] (bcrypt is slow by design;
    /// Prometheus sends the same header every scrape), with when. Bounded.
    verified: Mutex<Vec<(String, Instant)>>,
    /// bcrypt checks running at once (each takes a blocking thread for tens of milliseconds).
    checks: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

const MAX_VERIFIED: usize = 16;
/// How long a verified `Authorization` value is trusted without a new bcrypt check (the
/// exporter toolkit caches too): a password removed from the file stops working within it.
pub(crate) const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// bcrypt checks running at once: wrong passwords cannot take every blocking thread.
const MAX_CONCURRENT_CHECKS: usize = 4;

impl WebConfig {
    /// Reads and checks `path` (certificates and keys are loaded now).
    pub(crate) fn load(path: &Path) -> Result<Self, WebConfigError> {
        let err = |problem: String| WebConfigError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        // Only the parser's first line: later lines may quote the file (hashes).
        let file: File = serde_saphyr::from_str(&text).map_err(|e| {
            err(e
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(&t, base).map_err(err)?)),
            None => None,
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(err(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                )));
            }
        }
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash(format!("{:?}", Instant::now()), cost)
            .map_err(|e| err(format!("basic_auth_users: {e}")))?;
        Ok(Self {
            tls,
            users,
            dummy,
            verified: Mutex::new(Vec::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS)),
        })
    }

    /// Whether requests must carry basic auth.
    pub(crate) fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether an `Authorization` header value grants access. A value verified within
    /// [`VERIFIED_TTL`] is answered from memory; otherwise bcrypt runs on the blocking pool
    /// (never on an async worker, never under a lock), at most a few at once: the permit goes
    /// with the hash and is released when the hash ends, even if the client hung up.
    pub(crate) async fn authorize(self: &Arc<Self>, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some(value) = header else { return false };
        let now = Instant::now();
        {
            let mut verified = self.lock_verified();
            verified.retain(|(_, at)| now.saturating_duration_since(*at) < VERIFIED_TTL);
            if verified.iter().any(|(v, _)| v == value) {
                return true;
            }
        }
        let Ok(permit) = self.checks.clone().acquire_owned().await else {
            return false;
        };
        let (this, candidate) = (self.clone(), value.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.check(&candidate)
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut verified = self.lock_verified();
            if verified.len() >= MAX_VERIFIED {
                verified.remove(0);
            }
            verified.push((value.to_string(), Instant::now()));
        }
        ok
    }

    /// The bcrypt check itself (slow by design). An unknown user costs the same hash.
    fn check(&self, value: &str) -> bool {
        decode_basic(value).is_some_and(|(user, password)| {
            let (known, hash) = match self.users.get(&user) {
                Some(hash) => (true, hash),
                None => (false, &self.dummy),
            };
            bcrypt::verify(password, hash).unwrap_or(false) && known
        })
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, Vec<(String, Instant)>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `Basic base64(user:password)` → (user, password).
fn decode_basic(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let b64 = value.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn tls_config(t: &TlsFile, base: &Path) -> Result<rustls::ServerConfig, String> {
    // Settings first, files second: a wrong setting is named even before the files exist.
    if let Some(other) = t
        .client_auth_type
        .as_deref()
        .filter(|a| !matches!(*a, "NoClientCert" | "RequireAndVerifyClientCert"))
    {
        return Err(format!(
            "tls_server_config.client_auth_type {other:?}: pullwatch supports NoClientCert and RequireAndVerifyClientCert"
        ));
    }
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let cert_file = resolve(&t.cert_file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key_file = resolve(&t.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("tls_server_config.key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_deref() {
        None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("TLS13") => &[&rustls::version::TLS13],
        Some(v) => {
            return Err(format!(
                "tls_server_config.min_version {v:?}: use TLS12 or TLS13"
            ));
        }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match (t.client_auth_type.as_deref(), &t.client_ca_file) {
        (None | Some("NoClientCert"), None) => builder.with_no_client_auth(),
        (Some("RequireAndVerifyClientCert"), Some(ca)) => {
            let ca = resolve(ca);
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca)
                .map_err(|e| format!("tls_server_config.client_ca_file {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| {
                    format!("tls_server_config.client_ca_file {}: {e}", ca.display())
                })?;
                roots.add(c).map_err(|e| {
                    format!("tls_server_config.client_ca_file {}: {e}", ca.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (Some("RequireAndVerifyClientCert"), None) => {
            return Err(
                "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"
                    .into(),
            );
        }
        (Some(other), _) => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?}: pullwatch supports NoClientCert and RequireAndVerifyClientCert"
            ));
        }
        (None, Some(_)) => {
            return Err(
                "tls_server_config.client_ca_file needs client_auth_type: RequireAndVerifyClientCert"
                    .into(),
            );
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, yaml: &str) -> Result<WebConfig, String> {
        let p = dir.join("web.yml");
        std::fs::write(&p, yaml).unwrap();
        WebConfig::load(&p).map_err(|e| e.to_string())
    }

    /// A config whose one user `prom` has password `s3cret` hashed at bcrypt `cost`, and the
    /// hash.
    fn one_user(cost: u32) -> (Arc<WebConfig>, String) {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", cost).unwrap();
        let yaml = format!("basic_auth_users:\n  prom: '{hash}'\n");
        (Arc::new(load(dir.path(), &yaml).unwrap()), hash)
    }

    /// An `Authorization: Basic` value.
    fn basic(user: &str, password: &str) -> String {
        use base64::Engine;
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[tokio::test]
    async fn basic_auth_verifies_bcrypt_and_caches() {
        let (c, hash) = one_user(4);
        assert!(c.requires_auth() && c.tls.is_none());
        assert!(c.authorize(Some(&basic("prom", "s3cret"))).await);
        assert!(c.authorize(Some(&basic("prom", "s3cret"))).await, "cached");
        assert!(!c.authorize(Some(&basic("prom", "wrong"))).await);
        assert!(!c.authorize(Some(&basic("other", "s3cret"))).await);
        assert!(!c.authorize(Some("Bearer x")).await);
        assert!(!c.authorize(None).await);
        assert!(!format!("{c:?}").contains(&hash));
    }

    /// On a single-threaded runtime, a bcrypt check running inline would keep every other task
    /// (another scrape, /healthz) waiting until it ends; off the worker, they run meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn bcrypt_runs_off_the_async_worker() {
        let (c, _) = one_user(12);
        let wrong = basic("prom", "wrong");
        let check = tokio::spawn({
            let c = c.clone();
            async move { c.authorize(Some(&wrong)).await }
        });
        // Let the check start; inline, it would run to its end before this task resumes.
        tokio::task::yield_now().await;
        assert!(!check.is_finished(), "bcrypt ran on the async worker");
        assert!(!check.await.unwrap());
    }

    #[test]
    fn mistakes_are_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        for (yaml, want) in [
            (
                "basic_auth_users:\n  prom: plaintext\n",
                "basic_auth_users.prom: not a bcrypt hash",
            ),
            ("http_server_config:\n  http2: false\n", "unknown field"),
            (
                "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
                "cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
                "unknown field",
            ),
            ("tls_server_config: [", "web.yml"),
        ] {
            let e = load(dir.path(), yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
            assert!(!e.contains("plaintext"), "{e}");
        }
    }
}
