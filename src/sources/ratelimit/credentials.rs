//! Registry credentials from a `.dockerconfigjson` file (the format of Kubernetes pull secrets).
//! Values never reach logs or errors: [`Credentials`]' `Debug` is redacted and errors name only
//! the file and the problem.

use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub(crate) fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("--ratelimit-probe-auth {path}: {problem}")]
pub(crate) struct CredentialsError {
    /// File.
    pub path: PathBuf,
    /// What is wrong (never a secret).
    pub problem: String,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials by registry host (normalized: Docker Hub's keys become `docker.io`).
#[derive(Debug, Default, Clone)]
pub(crate) struct CredentialStore(HashMap<String, Credentials>);

/// The host a `.dockerconfigjson` key names: keys may be URLs (`https://index.docker.io/v1/`).
fn host_of_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

impl CredentialStore {
    /// Reads `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, CredentialsError> {
        let err = |problem: String| CredentialsError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parses the JSON text of a `.dockerconfigjson`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        // serde_json's messages quote no input values, only positions and types.
        let cfg: DockerConfig =
            serde_json::from_str(text).map_err(|e| format!("not a .dockerconfigjson: {e}"))?;
        let mut out = HashMap::new();
        for (key, entry) in cfg.auths {
            let host = host_of_key(&key);
            let creds = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) => Credentials { username, password },
                (_, _, Some(auth)) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| format!("auths[{host}].auth is not base64"))?;
                    let raw = String::from_utf8(raw)
                        .map_err(|_| format!("auths[{host}].auth is not UTF-8"))?;
                    let (u, p) = raw
                        .split_once(':')
                        .ok_or_else(|| format!("auths[{host}].auth is not user:password"))?;
                    Credentials {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                _ => {
                    return Err(format!(
                        "auths[{host}] has neither auth nor username/password"
                    ));
                }
            };
            out.insert(host, creds);
        }
        Ok(Self(out))
    }

    /// Credentials for `host` (`docker.io` for Docker Hub), if any.
    pub(crate) fn get(&self, host: &str) -> Option<&Credentials> {
        self.0.get(&host_of_key(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_entry_forms_and_docker_hub_keys() {
        let s = CredentialStore::parse(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dXNlcjpwYSQkOndvcmQ="},
                "registry.example.com:5000":{"username":"bot","password":"tok"}}}"#,
        )
        .unwrap();
        let hub = s.get("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa$$:word")
        );
        assert_eq!(hub.basic(), "Basic dXNlcjpwYSQkOndvcmQ=");
        assert_eq!(s.get("registry.example.com:5000").unwrap().username, "bot");
        assert!(s.get("quay.io").is_none());
        assert_eq!(format!("{hub:?}"), "Credentials(<redacted>)");
    }

    #[test]
    fn errors_name_the_problem_never_the_secret() {
        for (text, want) in [
            ("{", "not a .dockerconfigjson"),
            (r#"{"auths":{"r.io":{"auth":"%%%s3cret"}}}"#, "not base64"),
            (
                r#"{"auths":{"r.io":{"auth":"czNjcmV0"}}}"#,
                "not user:password",
            ),
            (r#"{"auths":{"r.io":{}}}"#, "neither auth"),
        ] {
            let e = CredentialStore::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
