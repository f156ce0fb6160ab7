//! Attributes downloads to a registry and repository from containerd's content labels: a parent
//! manifest or index carries `containerd.io/distribution.source.<registry>=<repository>` and lists
//! its children as `containerd.io/gc.ref.content.*=<digest>`. A digest no labelled parent names
//! stays unattributed (`registry="unknown"`), never guessed.

use super::ingest::Origin;
use std::collections::HashMap;

const SOURCE_PREFIX: &str = "containerd.io/distribution.source.";
const CHILD_PREFIX: &str = "containerd.io/gc.ref.content.";

/// Builds `digest -> origin` from content infos `(digest, labels)`.
pub(crate) fn index<'a>(
    infos: impl IntoIterator<Item = (&'a str, &'a HashMap<String, String>)>,
) -> HashMap<String, Origin> {
    let mut out = HashMap::new();
    for (digest, labels) in infos {
        // Sorted, so that the choice among several sources is stable.
        let mut sources: Vec<(&str, &str)> = labels
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(SOURCE_PREFIX)?, v.split(',').next()?)))
            .collect();
        sources.sort_unstable();
        let Some((registry, repository)) = sources.first() else {
            continue;
        };
        let origin = Origin {
            registry: normalize_registry(registry),
            repository: (*repository).to_string(),
        };
        out.entry(digest.to_string())
            .or_insert_with(|| origin.clone());
        for (k, child) in labels {
            if k.starts_with(CHILD_PREFIX) {
                out.entry(child.clone()).or_insert_with(|| origin.clone());
            }
        }
    }
    out
}

/// containerd labels Docker Hub content with `docker.io`; keep the same normalization as pulls.
fn normalize_registry(host: &str) -> String {
    crate::core::reference::ImageRef::parse(&format!("{host}/x"))
        .map_or_else(|_| host.to_string(), |r| r.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn children_of_a_labelled_manifest_get_its_origin() {
        let manifest = labels(&[
            (
                "containerd.io/distribution.source.127.0.0.1:5000",
                "team/app",
            ),
            ("containerd.io/gc.ref.content.config", "sha256:cfg"),
            ("containerd.io/gc.ref.content.l.0", "sha256:l0"),
            ("containerd.io/gc.ref.content.l.1", "sha256:l1"),
        ]);
        let unlabelled = labels(&[("containerd.io/gc.ref.content.l.0", "sha256:other")]);
        let idx = index([("sha256:man", &manifest), ("sha256:x", &unlabelled)]);
        let want = Origin {
            registry: "127.0.0.1:5000".into(),
            repository: "team/app".into(),
        };
        for d in ["sha256:man", "sha256:cfg", "sha256:l0", "sha256:l1"] {
            assert_eq!(idx.get(d), Some(&want), "{d}");
        }
        assert_eq!(
            idx.get("sha256:other"),
            None,
            "no source label: unknown, not guessed"
        );
    }

    #[test]
    fn docker_hub_and_multiple_repositories() {
        let l = labels(&[
            (
                "containerd.io/distribution.source.docker.io",
                "library/nginx,library/other",
            ),
            ("containerd.io/gc.ref.content.m.0", "sha256:m0"),
        ]);
        let idx = index([("sha256:idx", &l)]);
        assert_eq!(
            idx["sha256:m0"],
            Origin {
                registry: "docker.io".into(),
                repository: "library/nginx".into()
            }
        );
    }
}
