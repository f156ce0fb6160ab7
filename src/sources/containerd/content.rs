//! Reads one image's content record from containerd after a pull: the image's target and, down
//! the `containerd.io/gc.ref.content.*` labels containerd puts on each parent, its manifests,
//! config and layers, each with its exact size and commit time. Also remembers, for a while,
//! when downloads were seen starting and which blobs an earlier pull already counted.

use crate::core::anatomy::{Blob, BlobKind, ContentRecord};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, InfoRequest};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};
use tonic::transport::Channel;

const CHILD_CONFIG: &str = "containerd.io/gc.ref.content.config";
const CHILD_MANIFEST: &str = "containerd.io/gc.ref.content.m.";
const CHILD_LAYER: &str = "containerd.io/gc.ref.content.l.";
/// Blobs read per image at most (a real image has tens; a hostile one could list more).
const MAX_BLOBS: usize = 512;
/// How long download starts and counted blobs are remembered.
const MEMORY: Duration = Duration::from_secs(3600);
/// Digests remembered at most in each memory.
const MAX_REMEMBERED: usize = 65_536;

/// A request to containerd in `namespace`.
pub(super) fn request<T>(namespace: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(ns) = namespace.parse() {
        req.metadata_mut().insert("containerd-namespace", ns);
    }
    req
}

/// A protobuf timestamp's `(seconds, nanos)` as wall-clock time (`None` if absent or out of
/// range).
pub(super) fn wall_clock(t: Option<(i64, i32)>) -> Option<SystemTime> {
    let (seconds, nanos) = t?;
    let secs = u64::try_from(seconds).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Digests with a wall-clock time (when a download was seen starting; when a counted blob was
/// committed), forgotten after [`MEMORY`] and bounded in number.
#[derive(Debug, Default)]
pub(super) struct Remembered(HashMap<String, (SystemTime, Instant)>);

impl Remembered {
    /// Remembers `digest` at `at` unless already known.
    pub(super) fn note(&mut self, digest: &str, at: SystemTime, now: Instant) {
        if self.0.len() >= MAX_REMEMBERED {
            self.forget_old(now);
            if self.0.len() >= MAX_REMEMBERED {
                self.0.clear();
            }
        }
        self.0.entry(digest.to_string()).or_insert((at, now));
    }

    /// Remembers `digest` at `at`, replacing what was known of it.
    pub(super) fn set(&mut self, digest: &str, at: SystemTime, now: Instant) {
        self.forget(digest);
        self.note(digest, at, now);
    }

    /// Forgets `digest`.
    pub(super) fn forget(&mut self, digest: &str) {
        self.0.remove(digest);
    }

    /// The time noted for `digest`.
    pub(super) fn get(&self, digest: &str) -> Option<SystemTime> {
        self.0.get(digest).map(|(t, _)| *t)
    }

    /// Forgets what was noted longer than [`MEMORY`] ago.
    pub(super) fn forget_old(&mut self, now: Instant) {
        self.0
            .retain(|_, (_, noted)| now.saturating_duration_since(*noted) < MEMORY);
    }
}

/// The content record of image `name` as it is now, `None` if the image is gone. `started`
/// gives download starts seen by the poller, `counted` the blobs earlier pulls counted.
pub(super) async fn read(
    images: &mut ImagesClient<Channel>,
    content: &mut ContentClient<Channel>,
    namespace: &str,
    name: &str,
    recorded_at: SystemTime,
    started: &Remembered,
    counted: &Remembered,
) -> Result<Option<ContentRecord>, tonic::Status> {
    let image = match images
        .get(request(namespace, GetImageRequest { name: name.into() }))
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s),
    };
    let Some(target) = image.and_then(|i| i.target) else {
        return Ok(None);
    };
    let mut blobs = Vec::new();
    let mut queue = VecDeque::from([(target.digest, BlobKind::Manifest)]);
    let mut visited = HashSet::new();
    while let Some((digest, kind)) = queue.pop_front() {
        if blobs.len() >= MAX_BLOBS || !visited.insert(digest.clone()) {
            continue;
        }
        let info = match content
            .info(request(
                namespace,
                InfoRequest {
                    digest: digest.clone(),
                },
            ))
            .await
        {
            Ok(r) => r.into_inner().info,
            // A child not fetched (another platform of an index): not part of this pull.
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        let Some(info) = info else { continue };
        let mut children: Vec<(&String, &String)> = info.labels.iter().collect();
        children.sort_unstable();
        for (key, child) in children {
            let kind = if key == CHILD_CONFIG {
                BlobKind::Config
            } else if key.starts_with(CHILD_MANIFEST) {
                BlobKind::Manifest
            } else if key.starts_with(CHILD_LAYER) {
                BlobKind::Layer
            } else {
                continue;
            };
            queue.push_back((child.clone(), kind));
        }
        let Some(committed_at) = wall_clock(info.created_at.map(|t| (t.seconds, t.nanos))) else {
            continue;
        };
        blobs.push(Blob {
            started_at: started.get(&digest),
            // The same commit an earlier pull counted; a blob collected and downloaded again
            // has a new commit time, and counts as downloaded again.
            counted_before: counted.get(&digest) == Some(committed_at),
            digest,
            kind,
            size: u64::try_from(info.size).unwrap_or(0),
            committed_at,
        });
    }
    Ok(Some(ContentRecord {
        image: name.to_string(),
        blobs,
        recorded_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_and_forgets() {
        let mut m = Remembered::default();
        let now = Instant::now();
        let t = SystemTime::UNIX_EPOCH;
        m.note("a", t, now);
        m.note("a", t + Duration::from_secs(1), now);
        assert_eq!(m.get("a"), Some(t), "the first time is kept");
        m.forget_old(now + MEMORY);
        assert_eq!(m.get("a"), None);
        for i in 0..=MAX_REMEMBERED {
            m.note(&i.to_string(), t, now);
        }
        assert!(m.0.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn timestamps_convert_and_refuse_the_impossible() {
        assert_eq!(
            wall_clock(Some((10, 5))),
            Some(SystemTime::UNIX_EPOCH + Duration::new(10, 5))
        );
        assert_eq!(wall_clock(Some((-1, 0))), None);
        assert_eq!(wall_clock(Some((1, -1))), None);
        assert_eq!(wall_clock(None), None);
    }
}
