//! The runtime status source (`--runtime-status-interval`; `source="cri"` in metrics): polls the
//! runtime's CRI socket for its health and inventory — version, status conditions, image count
//! and size, image filesystem usage — so the headroom operators need (disk full is a pull
//! failure cause) sits next to the failures. Works against any CRI runtime (containerd, CRI-O).

use crate::cri::client::CriClient;
use crate::cri::{
    FilesystemUsage, Image, ImageFsInfoRequest, ListImagesRequest, RuntimeCondition, StatusRequest,
    VersionRequest, VersionResponse,
};
use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{GaugeFamily, MetricsError, MetricsRegistry};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Label value of this source in `pullwatch_runtime_up` and `pullwatch_source_errors_total`.
pub(crate) const SOURCE: &str = "cri";

/// Flags of the runtime status poller.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Runtime status")]
pub struct RuntimeStatusArgs {
    /// How often runtime health and inventory (CRI Version, Status, ListImages, ImageFsInfo) are
    /// read from --runtime-socket; `0s` turns this off.
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_STATUS_INTERVAL",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = crate::flags::duration
    )]
    pub runtime_status_interval: Duration,
}

/// Settings of the poller.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeStatusConfig {
    /// The runtime's CRI socket.
    pub socket: PathBuf,
    /// Time between polls.
    pub interval: Duration,
}

/// The shortest poll interval: each poll lists every image, which costs the runtime CPU.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl RuntimeStatusConfig {
    /// The poller's settings for `runtime_socket`, or `None` when the interval is `0s`.
    pub(crate) fn from_args(
        args: &RuntimeStatusArgs,
        runtime_socket: &std::path::Path,
    ) -> Result<Option<Self>, crate::flags::ConfigError> {
        let interval = args.runtime_status_interval;
        if interval.is_zero() {
            return Ok(None);
        }
        if interval < MIN_INTERVAL {
            return Err(crate::flags::err(
                "runtime-status-interval",
                "must be 0s (off) or at least 1s (each poll lists every image)",
            ));
        }
        Ok(Some(Self {
            socket: runtime_socket.to_path_buf(),
            interval,
        }))
    }
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] crate::cri::client::ConnectError),
    /// A CRI call failed.
    #[error("CRI {call}: {status}")]
    Call {
        /// Method.
        call: &'static str,
        /// gRPC status.
        status: tonic::Status,
    },
}

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> PollError {
    move |status| PollError::Call { call: name, status }
}

crate::label_set! {
    /// Labels of `pullwatch_runtime_info`.
    pub(crate) struct RuntimeLabels<'a> { runtime: &'a str, version: &'a str, api_version: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_runtime_condition`.
    pub(crate) struct ByCondition<'a> { condition: &'a str }
}

crate::label_set! {
    /// Labels of the image filesystem families.
    pub(crate) struct ByMountpoint<'a> { mountpoint: &'a str }
}

/// The poller's families: the runtime's identity, conditions and image inventory, and its
/// series of the shared source families (`source="cri"`).
#[derive(Clone)]
pub(crate) struct RuntimeStatusMetrics {
    info: GaugeFamily<RuntimeLabels<'static>>,
    condition: GaugeFamily<ByCondition<'static>>,
    images: GaugeFamily<()>,
    images_size: GaugeFamily<()>,
    fs_used: GaugeFamily<ByMountpoint<'static>>,
    fs_inodes: GaugeFamily<ByMountpoint<'static>>,
    health: SourceHealth,
}

/// Series per family a poll exports at most, whatever the runtime reports: conditions beyond it
/// are left out (with a warning), image filesystems beyond it are summed as `mountpoint="other"`.
pub(crate) const MAX_REPORTED: usize = 32;
/// Longest label value taken from the runtime (names, versions, condition types, mountpoints).
pub(crate) const MAX_LABEL_LEN: usize = 128;

/// `value` cut to [`MAX_LABEL_LEN`] bytes.
fn label(value: &str) -> String {
    let mut v = value.to_string();
    crate::core::attempt::truncate(&mut v, MAX_LABEL_LEN);
    v
}

impl RuntimeStatusMetrics {
    /// Replaces the exported inventory with one poll's answers, bounded in series and label
    /// length whatever the runtime says.
    fn publish(
        &self,
        version: &VersionResponse,
        conditions: &[RuntimeCondition],
        images: &[Image],
        filesystems: &[FilesystemUsage],
    ) {
        let (runtime, runtime_version, api_version) = (
            label(&version.runtime_name),
            label(&version.runtime_version),
            label(&version.runtime_api_version),
        );
        self.info.reset();
        self.info.set(
            &RuntimeLabels {
                runtime: &runtime,
                version: &runtime_version,
                api_version: &api_version,
            },
            1,
        );
        self.condition.reset();
        if conditions.len() > MAX_REPORTED {
            tracing::warn!(
                source = SOURCE,
                reported = conditions.len(),
                exported = MAX_REPORTED,
                "runtime reports more conditions than exported; the rest are left out"
            );
        }
        for c in conditions.iter().take(MAX_REPORTED) {
            let condition = label(&c.r#type);
            self.condition.set(
                &ByCondition {
                    condition: &condition,
                },
                i64::from(c.status),
            );
        }
        let size: u64 = images.iter().map(|i| i.size).sum();
        self.images.set(&(), images.len());
        self.images_size.set(&(), size);
        self.fs_used.reset();
        self.fs_inodes.reset();
        let mut other: Option<(u64, u64)> = None;
        for (i, u) in filesystems.iter().enumerate() {
            let used = u.used_bytes.as_ref().map_or(0, |v| v.value);
            let inodes = u.inodes_used.as_ref().map_or(0, |v| v.value);
            if i + 1 >= MAX_REPORTED && filesystems.len() > MAX_REPORTED {
                let (b, n) = other.get_or_insert((0, 0));
                *b = b.saturating_add(used);
                *n = n.saturating_add(inodes);
                continue;
            }
            let mountpoint = label(u.fs_id.as_ref().map_or("", |f| f.mountpoint.as_str()));
            let labels = ByMountpoint {
                mountpoint: &mountpoint,
            };
            self.fs_used.set(&labels, used);
            self.fs_inodes.set(&labels, inodes);
        }
        if let Some((used, inodes)) = other {
            let labels = ByMountpoint {
                mountpoint: "other",
            };
            self.fs_used.set(&labels, used);
            self.fs_inodes.set(&labels, inodes);
        }
    }

    /// Registers the poller's families in `reg`; `shared` gives its `source="cri"` series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            info: GaugeFamily::register(reg, crate::family_name!("pullwatch_runtime_info"))?,
            condition: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_runtime_condition"),
            )?,
            images: GaugeFamily::register(reg, crate::family_name!("pullwatch_images"))?,
            images_size: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_images_size_bytes"),
            )?,
            fs_used: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_fs_used_bytes"),
            )?,
            fs_inodes: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_fs_inodes_used"),
            )?,
            health: shared.health(SOURCE),
        })
    }
}

/// The poller.
pub(crate) struct RuntimeStatusSource {
    socket: PathBuf,
    interval: Duration,
    metrics: RuntimeStatusMetrics,
    client: Option<CriClient>,
}

impl RuntimeStatusSource {
    /// Polls the CRI socket of `config` every interval, into `metrics`.
    pub(crate) fn new(config: RuntimeStatusConfig, metrics: RuntimeStatusMetrics) -> Self {
        Self {
            socket: config.socket,
            interval: config.interval,
            metrics,
            client: None,
        }
    }

    /// Runs until `shutdown` flips to true.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let result = self.poll().await;
            let health = &self.metrics.health;
            match result {
                Ok(()) => {
                    health.set_up(true);
                    health.set_source_up(true);
                }
                Err(e) => {
                    // Reconnect next time: the runtime may have restarted.
                    self.client = None;
                    health.set_up(false);
                    health.set_source_up(false);
                    health.error();
                    tracing::warn!(source = SOURCE, socket = %self.socket.display(), error = %crate::causes::Causes(&e), "runtime poll failed");
                }
            }
        }
    }

    /// One poll: every call must succeed for the runtime to count as up.
    pub(crate) async fn poll(&mut self) -> Result<(), PollError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self
                .client
                .insert(CriClient::connect(&self.socket, Duration::from_secs(2)).await?),
        };
        let version = client
            .runtime
            .version(VersionRequest::default())
            .await
            .map_err(call("Version"))?
            .into_inner();
        let status = client
            .runtime
            .status(StatusRequest { verbose: false })
            .await
            .map_err(call("Status"))?
            .into_inner();
        let images = client
            .images
            .list_images(ListImagesRequest::default())
            .await
            .map_err(call("ListImages"))?
            .into_inner()
            .images;
        let fs = client
            .images
            .image_fs_info(ImageFsInfoRequest {})
            .await
            .map_err(call("ImageFsInfo"))?
            .into_inner();

        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        self.metrics
            .publish(&version, &conditions, &images, &fs.image_filesystems);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::{FilesystemIdentifier, UInt64Value};
    use crate::telemetry::MetricsRegistry;

    #[test]
    fn whatever_the_runtime_reports_the_series_and_labels_stay_bounded() {
        let reg = MetricsRegistry::new().unwrap();
        let shared = SourceFamilies::register(&reg).unwrap();
        let m = RuntimeStatusMetrics::register(&reg, &shared).unwrap();
        let version = VersionResponse {
            runtime_name: "x".repeat(10_000),
            ..Default::default()
        };
        let conditions: Vec<RuntimeCondition> = (0..100)
            .map(|i| RuntimeCondition {
                r#type: format!("Cond{i}"),
                status: true,
                ..Default::default()
            })
            .collect();
        let filesystems: Vec<FilesystemUsage> = (0..100u64)
            .map(|i| FilesystemUsage {
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: format!("/m{i}"),
                }),
                used_bytes: Some(UInt64Value { value: 1 }),
                inodes_used: Some(UInt64Value { value: 2 }),
                ..Default::default()
            })
            .collect();
        m.publish(&version, &conditions, &[], &filesystems);
        let text = reg.render();
        let count = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(count("pullwatch_runtime_condition{"), MAX_REPORTED);
        assert_eq!(count("pullwatch_image_fs_used_bytes{"), MAX_REPORTED);
        // Nothing lost in the sums: the 69 filesystems beyond the first 31 are "other".
        assert_eq!(reg.value("pullwatch_image_fs_used_bytes", &[]), 100.0);
        assert_eq!(
            reg.value("pullwatch_image_fs_used_bytes", &[("mountpoint", "other")]),
            69.0
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("pullwatch_runtime_info{"))
            .unwrap();
        assert!(info.len() < 400, "{info}");
    }
}
