//! The containerd source (passive mode): watches containerd directly over its API socket —
//! content ingests for live download progress and stalls, image events for completed pulls —
//! without being in kubelet's call path. Reconnects with backoff when containerd restarts.
//! After each pull it reads the image's content record (exact sizes and commit times) for the
//! pull's anatomy: with another attempt authority the recorder joins it to that attempt.

pub(crate) mod attribution;
mod config;
mod content;
pub(crate) mod ingest;
mod manifests;
mod metrics;

pub(crate) use config::{ContainerdArgs, ContainerdConfig};
pub(crate) use metrics::ContainerdMetrics;

use crate::core::anatomy::ContentRecord;
use crate::core::reference::ImageRef;
use crate::recorder::{ByRegistry, Recorder, Stalled};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    ImageCreate, ImageUpdate, ListContentRequest, ListImagesRequest, ListStatusesRequest,
    SubscribeRequest,
};
use content::Remembered;
use ingest::{IngestEvent, IngestSample, IngestTracker, Origin};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Label value of this source in `pullwatch_runtime_up` and `pullwatch_source_errors_total`.
pub(crate) const SOURCE: &str = "containerd";
/// Image records of one repository naming the same manifest under another name within this
/// long are the same pull (containerd's CRI writes a tag, a digest and an ID record per pull).
const SAME_PULL_WINDOW: Duration = Duration::from_secs(10);
/// Listing all content to attribute downloads is not cheap on big nodes: at most this often.
const ORIGIN_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Why a session with containerd ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// Connecting failed.
    #[error("connect {path}: {source}")]
    Connect {
        /// Socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("containerd API: {0}")]
    Api(#[from] tonic::Status),
    /// The event stream ended.
    #[error("containerd closed the event stream")]
    EventsClosed,
}

/// The running source.
pub(crate) struct ContainerdSource {
    config: ContainerdConfig,
    recorder: Arc<Recorder>,
    metrics: ContainerdMetrics,
    tracker: IngestTracker,
    origins: HashMap<String, Origin>,
    origins_refreshed: Option<Instant>,
    /// When downloads were seen starting (containerd's `started_at`), by digest.
    started: Remembered,
    /// Blobs a recorded pull already counted (downloaded or reused), by digest.
    counted: Remembered,
    /// Recent pulls by (repository, target): the name that opened each and when. A record
    /// of the same repository and target under another name is that pull's digest record.
    recent_pulls: HashMap<(String, String), (String, Instant)>,
    /// Child digest → its manifest, and every digest in the content store, from the last
    /// content listing (plus downloads committed since).
    parents: HashMap<String, String>,
    present: HashSet<String>,
    /// An image was deleted since `present` was read: read it again at the next poll.
    present_stale: bool,
    /// Manifests of pulls in progress, read once each.
    manifests: manifests::Manifests,
}

impl ContainerdSource {
    /// A source recording its attempts (passive successes) into `recorder` (which keeps them
    /// only where containerd is the attempt authority) and its downloads into `metrics`.
    pub(crate) fn new(
        config: ContainerdConfig,
        recorder: Arc<Recorder>,
        metrics: ContainerdMetrics,
    ) -> Self {
        Self {
            tracker: IngestTracker::new(config.stall_after),
            config,
            recorder,
            metrics,
            origins: HashMap::new(),
            origins_refreshed: None,
            started: Remembered::default(),
            counted: Remembered::default(),
            recent_pulls: HashMap::new(),
            parents: HashMap::new(),
            present: HashSet::new(),
            present_stale: false,
            manifests: manifests::Manifests::default(),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        content::request(&self.config.namespace, msg)
    }

    /// Connected to containerd (and so working) or not.
    fn set_up(&self, up: bool) {
        self.metrics.health.set_up(up);
        self.metrics.health.set_source_up(up);
    }

    /// Runs until `shutdown` flips to true, reconnecting with backoff.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        self.set_up(false);
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.session() => r,
                () = shutdown.cancelled() => return,
            };
            self.set_up(false);
            self.tracker.clear();
            self.publish_gauges();
            if let Err(e) = result {
                self.metrics.health.error();
                tracing::warn!(source = SOURCE, error = %crate::causes::Causes(&e), retry_in = ?backoff, "containerd source disconnected");
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(&mut self) -> Result<(), SessionError> {
        let channel: Channel = containerd_client::connect(&self.config.socket)
            .await
            .map_err(|source| SessionError::Connect {
                path: self.config.socket.clone(),
                source,
            })?;
        let mut content = ContentClient::new(channel.clone());
        let mut images = ImagesClient::new(channel.clone());
        let mut events = EventsClient::new(channel);
        let filters = ["/images/create", "/images/update", "/images/delete"]
            .map(|topic| format!(r#"namespace=={},topic=="{topic}""#, self.config.namespace))
            .to_vec();
        // containerd sends the stream's headers with its first event: subscribe concurrently
        // with polling instead of waiting for it.
        let subscribe = events.subscribe(self.request(SubscribeRequest { filters }));
        tokio::pin!(subscribe);
        let mut stream = None;
        let listed = images
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await?
            .into_inner()
            .images;
        for image in &listed {
            self.recorder.image_seen(&image.name);
        }
        self.poll(&mut content).await?;
        self.set_up(true);
        tracing::info!(source = SOURCE, socket = %self.config.socket.display(), "watching containerd");
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll(&mut content).await?,
                subscribed = &mut subscribe, if stream.is_none() => stream = Some(subscribed?.into_inner()),
                msg = next_event(&mut stream), if stream.is_some() => match msg? {
                    Some(envelope) => self.on_event(envelope, &mut images, &mut content).await?,
                    None => return Err(SessionError::EventsClosed),
                },
            }
        }
    }

    async fn poll(&mut self, content: &mut ContentClient<Channel>) -> Result<(), SessionError> {
        let statuses = content
            .list_statuses(self.request(ListStatusesRequest { filters: vec![] }))
            .await?
            .into_inner()
            .statuses;
        let now = Instant::now();
        for s in &statuses {
            let started = content::wall_clock(s.started_at.map(|t| (t.seconds, t.nanos)));
            if let Some(at) = started {
                let sample = IngestSample {
                    reference: s.r#ref.clone(),
                    expected: s.expected.clone(),
                    offset: 0,
                    total: 0,
                };
                self.started.note(sample.digest(), at, now);
            }
        }
        let samples: Vec<IngestSample> = statuses
            .into_iter()
            .map(|s| IngestSample {
                reference: s.r#ref,
                expected: s.expected,
                offset: u64::try_from(s.offset).unwrap_or(0),
                total: u64::try_from(s.total).unwrap_or(0),
            })
            .collect();
        // A blob being downloaded is not in the store (again, after a garbage collection).
        for s in &samples {
            self.present.remove(s.digest());
        }
        let unknown = self.present_stale
            || samples
                .iter()
                .any(|s| !self.origins.contains_key(s.digest()));
        let due = self
            .origins_refreshed
            .is_none_or(|t| now.saturating_duration_since(t) >= ORIGIN_REFRESH_MIN_INTERVAL);
        if unknown && due {
            self.refresh_origins(content).await?;
            self.origins_refreshed = Some(now);
            self.present_stale = false;
        }
        let origins = &self.origins;
        let events = self
            .tracker
            .update(now, &samples, |d| origins.get(d).cloned());
        for event in events {
            self.on_ingest_event(event);
        }
        self.publish_progress(content, now).await?;
        self.started.forget_old(now);
        self.counted.forget_old(now);
        self.recent_pulls
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < SAME_PULL_WINDOW);
        self.publish_gauges();
        Ok(())
    }

    async fn refresh_origins(
        &mut self,
        content: &mut ContentClient<Channel>,
    ) -> Result<(), SessionError> {
        let mut stream = content
            .list(self.request(ListContentRequest { filters: vec![] }))
            .await?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(resp) = stream.message().await? {
            infos.extend(resp.info.into_iter().map(|i| (i.digest, i.labels)));
        }
        self.origins = attribution::index(infos.iter().map(|(d, l)| (d.as_str(), l)));
        self.parents = manifests::parents(infos.iter().map(|(d, l)| (d.as_str(), l)));
        self.present = infos.into_iter().map(|(d, _)| d).collect();
        Ok(())
    }

    /// Hands the pulls view each repository's downloads in flight and, once the manifest they
    /// belong to is known, the image's progress against it.
    async fn publish_progress(
        &mut self,
        content: &mut ContentClient<Channel>,
        now: Instant,
    ) -> Result<(), SessionError> {
        let mut downloads = self.tracker.by_repository(now);
        let offsets = self.tracker.offsets();
        let active: HashSet<String> = offsets
            .keys()
            .filter_map(|d| self.parents.get(d))
            .cloned()
            .collect();
        for m in &active {
            let Some(origin) = self.origins.get(m).cloned() else {
                continue;
            };
            let manifest = self
                .manifests
                .get(content, &self.config.namespace, m)
                .await?
                .cloned();
            let Some(manifest) = manifest else { continue };
            let p = manifests::progress(
                &manifest,
                |d| self.present.contains(d),
                |d| offsets.get(d).copied(),
            );
            let entry = downloads
                .entry((origin.registry, origin.repository))
                .or_default();
            *entry.image.get_or_insert_default() += p;
        }
        self.manifests.retain(&active);
        self.recorder.downloads_seen(downloads);
        Ok(())
    }

    fn on_ingest_event(&mut self, event: IngestEvent) {
        match event {
            IngestEvent::Started { .. } => {}
            IngestEvent::Stalled {
                reference,
                origin,
                offset,
                total,
                idle,
            } => {
                let registry = origin
                    .as_ref()
                    .map_or_else(|| ingest::UNKNOWN.to_string(), |o| self.registry_of(o));
                let repository = origin.as_ref().map_or("", |o| o.repository.as_str());
                self.recorder.download_stalled(&Stalled {
                    ingest: &reference,
                    registry: &registry,
                    repository,
                    offset,
                    total,
                    idle,
                    source: SOURCE,
                });
            }
            IngestEvent::Resumed { reference } => {
                tracing::info!(source = SOURCE, ingest = %reference, "stalled download resumed");
            }
            // Its bytes count with the pull's content record (exact sizes, once per blob); the
            // pulls view shows them as done for the pull in progress.
            IngestEvent::Gone {
                reference,
                digest,
                origin,
                offset,
                total,
                ..
            } => {
                tracing::debug!(source = SOURCE, ingest = %reference, offset, "ingest ended");
                // Committed, as a rule (a canceled pull's download also ends here).
                self.present.insert(digest);
                if let Some(o) = origin {
                    self.recorder
                        .download_committed(&o.registry, &o.repository, total.max(offset));
                }
            }
        }
    }

    /// The `registry` label of downloads from `origin` (its labels name the host alone).
    fn registry_of(&self, origin: &Origin) -> String {
        self.recorder.registry_of_host(&origin.registry)
    }

    fn publish_gauges(&self) {
        let m = &self.metrics;
        for g in [&m.bytes_in_flight, &m.downloads_in_flight, &m.stalled] {
            g.reset();
        }
        m.receive_rate.reset();
        for (registry, g) in self.tracker.gauges() {
            let registry = if registry == ingest::UNKNOWN {
                registry
            } else {
                self.recorder.registry_of_host(&registry)
            };
            // Several registries may share the `other` series: add, do not set.
            let r = ByRegistry {
                registry: self.recorder.registry_label(&registry),
            };
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            m.bytes_in_flight.with(&r).add(n(g.bytes));
            m.downloads_in_flight.with(&r).add(n(g.downloads));
            m.stalled.with(&r).add(n(g.stalled));
            m.receive_rate.with(&r).add(g.rate);
        }
    }

    async fn on_event(
        &mut self,
        envelope: containerd_client::types::Envelope,
        images: &mut ImagesClient<Channel>,
        content: &mut ContentClient<Channel>,
    ) -> Result<(), SessionError> {
        let Some(any) = envelope.event else {
            return Ok(());
        };
        let decoded = match envelope.topic.as_str() {
            // Its content may be collected now (kubelet's image GC): what the store holds is
            // read again at the next poll, so a re-pull's progress starts from what is there.
            "/images/delete" => {
                self.origins_refreshed = None;
                self.present_stale = true;
                return Ok(());
            }
            "/images/create" => ImageCreate::decode(any.value.as_slice()).map(|e| (e.name, true)),
            "/images/update" => ImageUpdate::decode(any.value.as_slice()).map(|e| (e.name, false)),
            _ => return Ok(()),
        };
        let Ok((name, created)) = decoded else {
            self.metrics.health.decode_error("containerd_event");
            return Ok(());
        };
        // The ID record (`sha256:…`) of a pull is not a name anyone pulled.
        if name.starts_with("sha256:") {
            return Ok(());
        }
        self.recorder.image_seen(&name);
        let recorded_at = content::wall_clock(envelope.timestamp.map(|t| (t.seconds, t.nanos)))
            .unwrap_or_else(SystemTime::now);
        let record = content::read(
            images,
            content,
            &self.config.namespace,
            &name,
            recorded_at,
            &self.started,
            &self.counted,
        )
        .await?;
        let Some(record) = record else {
            return Ok(());
        };
        let now = Instant::now();
        if !self.is_new_pull(&record, now) {
            return Ok(());
        }
        for b in &record.blobs {
            // Counted as of this commit: the same digest committed again (downloaded again
            // after a garbage collection) is a new download, with a new start.
            self.counted.set(&b.digest, b.committed_at, now);
            self.started.forget(&b.digest);
        }
        self.recorder.content_recorded(record, created);
        Ok(())
    }

    /// Whether `record` is a new pull rather than another record of one just seen: the same
    /// repository and target under another name within [`SAME_PULL_WINDOW`] (the digest
    /// record after the tag record). The same name again is a new pull (a re-pull), as is the
    /// same manifest from another registry or repository.
    fn is_new_pull(&mut self, record: &ContentRecord, now: Instant) -> bool {
        let (Some(target), Ok(reference)) = (record.blobs.first(), ImageRef::parse(&record.image))
        else {
            return false;
        };
        let key = (
            format!("{}/{}", reference.registry, reference.repository),
            target.digest.clone(),
        );
        if let Some((name, at)) = self.recent_pulls.get(&key)
            && now.saturating_duration_since(*at) < SAME_PULL_WINDOW
            && *name != record.image
        {
            return false;
        }
        self.recent_pulls.insert(key, (record.image.clone(), now));
        true
    }
}

/// The next event of a subscribed stream (pending while not subscribed).
async fn next_event(
    stream: &mut Option<tonic::Streaming<containerd_client::types::Envelope>>,
) -> Result<Option<containerd_client::types::Envelope>, tonic::Status> {
    match stream {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::anatomy::{Blob, BlobKind};
    use crate::core::attempt::Source;
    use crate::recorder::RecorderConfig;

    fn source() -> ContainerdSource {
        let config = ContainerdConfig {
            socket: "/nonexistent".into(),
            namespace: "k8s.io".into(),
            poll_interval: Duration::from_secs(1),
            stall_after: Duration::from_secs(60),
        };
        let reg = crate::telemetry::MetricsRegistry::new().unwrap();
        let shared = crate::telemetry::health::SourceFamilies::register(&reg).unwrap();
        ContainerdSource::new(
            config,
            Arc::new(Recorder::new(&RecorderConfig::default(), &reg).unwrap()),
            ContainerdMetrics::register(&reg, &shared).unwrap(),
        )
    }

    fn record(
        image: &str,
        target: &str,
        committed: SystemTime,
        recorded: SystemTime,
    ) -> ContentRecord {
        ContentRecord {
            image: image.into(),
            blobs: vec![
                Blob {
                    digest: target.into(),
                    kind: BlobKind::Manifest,
                    size: 400,
                    committed_at: committed,
                    started_at: None,
                    counted_before: false,
                },
                Blob {
                    digest: "sha256:layer".into(),
                    kind: BlobKind::Layer,
                    size: 2 << 20,
                    committed_at: committed + Duration::from_millis(100),
                    started_at: None,
                    counted_before: false,
                },
            ],
            recorded_at: recorded,
        }
    }

    #[test]
    fn one_attempt_per_pull_timed_by_containerds_own_clock() {
        let mut s = source();
        let t0 = SystemTime::now();
        let r = record(
            "127.0.0.1:5000/team/app:1",
            "sha256:m1",
            t0,
            t0 + Duration::from_millis(140),
        );
        let (a, anatomy) = r.passive_attempt().expect("attempt");
        assert_eq!(a.duration, Some(Duration::from_millis(140)));
        assert_eq!(a.source, Source::Containerd);
        assert_eq!(a.registry(), "127.0.0.1:5000", "the port is kept");
        assert_eq!(anatomy.downloaded_bytes, 400 + (2 << 20));
        let now = Instant::now();
        assert!(s.is_new_pull(&r, now));
        // The digest record of the same pull names the same target: not a new pull.
        let digest = record("127.0.0.1:5000/team/app@sha256:m1", "sha256:m1", t0, t0);
        assert!(!s.is_new_pull(&digest, now));
        // Another tag with another target, at once: a pull of its own.
        assert!(s.is_new_pull(
            &record("127.0.0.1:5000/team/app:2", "sha256:m2", t0, t0),
            now
        ));
        // The same manifest from another registry, and the same name again: pulls of their own.
        let elsewhere = record("127.0.0.1:6000/team/app:1", "sha256:m1", t0, t0);
        assert!(s.is_new_pull(&elsewhere, now));
        assert!(s.is_new_pull(&r, now));
        assert!(!s.is_new_pull(&digest, now + SAME_PULL_WINDOW / 2));
        assert!(s.is_new_pull(&digest, now + SAME_PULL_WINDOW));
        // Everything was present: the duration is unknown.
        let mut cached = r.clone();
        for b in &mut cached.blobs {
            b.counted_before = true;
        }
        assert_eq!(cached.passive_attempt().unwrap().0.duration, None);
    }
}
