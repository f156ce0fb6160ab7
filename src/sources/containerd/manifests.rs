//! The manifests of pulls in progress: which image manifest a download belongs to (the parent
//! naming it in its `containerd.io/gc.ref.content.*` labels) and the manifest's own list of
//! layers with their sizes, read from containerd once per manifest, so a pull's progress is
//! measured against the whole image (`340 MiB of 1.2 GiB; 3 of 7 layers`), not only against
//! the downloads containerd has started so far.

use super::content::request;
pub(super) use crate::core::progress::ImageProgress;
use containerd_client::services::v1::ReadContentRequest;
use containerd_client::services::v1::content_client::ContentClient;
use std::collections::{HashMap, HashSet};
use tonic::transport::Channel;

const CHILD_CONFIG: &str = "containerd.io/gc.ref.content.config";
const CHILD_LAYER: &str = "containerd.io/gc.ref.content.l.";
/// Manifests larger than this are not read (a real one is a few KiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Manifests remembered at most.
const CACHE_MAX: usize = 256;

/// An image manifest's blobs: the config, then the layers, each `(digest, size)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Manifest {
    /// Config blob.
    pub config: (String, u64),
    /// Layer blobs, in order.
    pub layers: Vec<(String, u64)>,
}

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

#[derive(serde::Deserialize)]
struct Raw {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl Manifest {
    /// Reads an OCI or Docker v2 image manifest; `None` for anything else (an index, garbage).
    pub(super) fn parse(bytes: &[u8]) -> Option<Self> {
        let raw: Raw = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            config: (raw.config.digest, raw.config.size),
            layers: raw.layers.into_iter().map(|d| (d.digest, d.size)).collect(),
        })
    }
}

/// Progress of a pull of `m`: a blob present in the store counts whole, one in flight with the
/// bytes received so far.
pub(super) fn progress(
    m: &Manifest,
    present: impl Fn(&str) -> bool,
    in_flight: impl Fn(&str) -> Option<u64>,
) -> ImageProgress {
    let mut p = ImageProgress::default();
    let got = |(digest, size): &(String, u64)| {
        if present(digest) {
            *size
        } else {
            in_flight(digest).unwrap_or(0).min(*size)
        }
    };
    p.total += m.config.1;
    p.done += got(&m.config);
    for layer in &m.layers {
        p.total += layer.1;
        p.layers_total += 1;
        p.done += got(layer);
        p.layers_done += u64::from(present(&layer.0));
    }
    p
}

/// Child digest → its manifest's digest, for manifests (parents naming layers) among content
/// infos `(digest, labels)`.
pub(super) fn parents<'a>(
    infos: impl IntoIterator<Item = (&'a str, &'a HashMap<String, String>)>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (digest, labels) in infos {
        if !labels.keys().any(|k| k.starts_with(CHILD_LAYER)) {
            continue;
        }
        for (k, child) in labels {
            if k == CHILD_CONFIG || k.starts_with(CHILD_LAYER) {
                out.insert(child.clone(), digest.to_string());
            }
        }
    }
    out
}

/// Manifests read so far (`None`: unreadable, not asked again).
#[derive(Debug, Default)]
pub(super) struct Manifests(HashMap<String, Option<Manifest>>);

impl Manifests {
    /// The manifest `digest`, read from containerd the first time.
    pub(super) async fn get(
        &mut self,
        content: &mut ContentClient<Channel>,
        namespace: &str,
        digest: &str,
    ) -> Result<Option<&Manifest>, tonic::Status> {
        if !self.0.contains_key(digest) {
            let read = read(content, namespace, digest).await?;
            if self.0.len() >= CACHE_MAX {
                self.0.clear();
            }
            self.0.insert(
                digest.to_string(),
                read.as_deref().and_then(Manifest::parse),
            );
        }
        Ok(self.0.get(digest).and_then(Option::as_ref))
    }

    /// Forgets manifests no pull in progress uses.
    pub(super) fn retain(&mut self, active: &HashSet<String>) {
        self.0.retain(|d, _| active.contains(d));
    }
}

/// The blob `digest`, `None` if gone or larger than [`MAX_MANIFEST`].
async fn read(
    content: &mut ContentClient<Channel>,
    namespace: &str,
    digest: &str,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let req = ReadContentRequest {
        digest: digest.to_string(),
        offset: 0,
        size: 0,
    };
    let mut stream = match content.read(request(namespace, req)).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(s),
    };
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
        if out.len() > MAX_MANIFEST {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_present_blobs_whole_and_in_flight_ones_so_far() {
        let m = Manifest::parse(
            br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":10},
                "layers":[{"digest":"sha256:a","size":100},{"digest":"sha256:b","size":1000}]}"#,
        )
        .unwrap();
        let p = progress(
            &m,
            |d| d == "sha256:c" || d == "sha256:a",
            |d| (d == "sha256:b").then_some(250),
        );
        assert_eq!(
            p,
            ImageProgress {
                done: 360,
                total: 1110,
                layers_done: 1,
                layers_total: 2
            }
        );
        assert!(
            Manifest::parse(br#"{"manifests":[]}"#).is_none(),
            "an index"
        );
    }

    #[test]
    fn children_point_to_their_manifest() {
        let labels: HashMap<String, String> = [
            ("containerd.io/gc.ref.content.config", "sha256:c"),
            ("containerd.io/gc.ref.content.l.0", "sha256:a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let index: HashMap<String, String> = [("containerd.io/gc.ref.content.m.0", "sha256:m")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = parents([("sha256:m", &labels), ("sha256:i", &index)]);
        assert_eq!(p["sha256:a"], "sha256:m");
        assert_eq!(p["sha256:c"], "sha256:m");
        assert!(!p.contains_key("sha256:m"), "an index is not a manifest");
    }
}
