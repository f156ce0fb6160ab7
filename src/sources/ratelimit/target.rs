//! What `--ratelimit-probe` names: a registry and a manifest whose HEAD reports the quota.

use crate::core::reference::{DOCKER_HUB, ImageRef};

/// Docker Hub's registry API host.
pub(crate) const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

/// The repository Docker Hub documents for reading the limit: a HEAD of its manifest returns the
/// `ratelimit-*` headers and does not count as a pull.
pub(crate) const DOCKER_HUB_PROBE_REPOSITORY: &str = "ratelimitpreview/test";

/// One probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeTarget {
    /// The `registry` label (normalized like image references: `docker.io`, `host:port`).
    pub registry: String,
    /// `scheme://host[:port]` of the registry API.
    pub base: String,
    /// Repository path.
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
}

impl ProbeTarget {
    /// Parses `docker.io`, `docker.io/REPO[:TAG]`, or `[http://|https://]HOST[:PORT]/REPO[:TAG]`.
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (scheme, rest) = match spec.split_once("://") {
            Some((s @ ("http" | "https"), r)) => (Some(s), r),
            Some((s, _)) => {
                return Err(format!(
                    "{spec:?}: unsupported scheme {s:?}; use http or https"
                ));
            }
            None => (None, spec),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err("empty registry".into());
        }
        let is_hub_host = |h: &str| {
            matches!(
                h.to_ascii_lowercase().as_str(),
                "docker.io" | "index.docker.io" | "registry-1.docker.io"
            )
        };
        if !rest.contains('/') {
            if is_hub_host(rest) && scheme != Some("http") {
                return Ok(Self::docker_hub(DOCKER_HUB_PROBE_REPOSITORY, "latest"));
            }
            return Err(format!(
                "{spec:?}: name a manifest to probe, HOST[:PORT]/REPOSITORY[:TAG] (only docker.io has a known free probe)"
            ));
        }
        let r = ImageRef::parse(rest).map_err(|e| format!("{spec:?}: {e}"))?;
        let reference = r
            .digest
            .clone()
            .or(r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        if r.registry == DOCKER_HUB && scheme != Some("http") {
            return Ok(Self::docker_hub(&r.repository, &reference));
        }
        // A reference without a registry host resolves to Docker Hub above; here it has one.
        Ok(Self {
            base: format!("{}://{}", scheme.unwrap_or("https"), r.registry),
            registry: r.registry,
            repository: r.repository,
            reference,
        })
    }

    fn docker_hub(repository: &str, reference: &str) -> Self {
        Self {
            registry: DOCKER_HUB.into(),
            base: DOCKER_HUB_API.into(),
            repository: repository.into(),
            reference: reference.into(),
        }
    }

    /// The manifest URL to HEAD.
    pub(crate) fn manifest_url(&self) -> String {
        format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults_to_its_free_probe() {
        for s in [
            "docker.io",
            "index.docker.io",
            "https://registry-1.docker.io/",
        ] {
            let t = ProbeTarget::parse(s).unwrap();
            assert_eq!(
                t.manifest_url(),
                "https://registry-1.docker.io/v2/ratelimitpreview/test/manifests/latest",
                "{s}"
            );
            assert_eq!(t.registry, "docker.io");
        }
        let t = ProbeTarget::parse("docker.io/myorg/app:1").unwrap();
        assert_eq!(
            t.manifest_url(),
            "https://registry-1.docker.io/v2/myorg/app/manifests/1"
        );
    }

    #[test]
    fn other_registries_need_a_manifest() {
        let t = ProbeTarget::parse("http://127.0.0.1:5000/quota/probe").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.manifest_url().as_str()),
            (
                "127.0.0.1:5000",
                "http://127.0.0.1:5000/v2/quota/probe/manifests/latest"
            )
        );
        let t = ProbeTarget::parse("quay.io/org/x@sha256:abc").unwrap();
        assert_eq!(
            t.manifest_url(),
            "https://quay.io/v2/org/x/manifests/sha256:abc"
        );
        for bad in [
            "",
            "quay.io",
            "ftp://quay.io/a/b",
            "http://",
            "quay.io/UPPER/x",
        ] {
            assert!(ProbeTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
