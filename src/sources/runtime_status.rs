//! The runtime status source (`--runtime-status-interval`; `source="cri"` in metrics): polls the
//! runtime's CRI socket for its health and inventory — version, status conditions, image count
//! and size, image filesystem usage — so the headroom operators need (disk full is a pull
//! failure cause) sits next to the failures. Works against any CRI runtime (containerd, CRI-O).

use crate::cri::client::CriClient;
use crate::cri::{ImageFsInfoRequest, ListImagesRequest, StatusRequest, VersionRequest};
use crate::recorder::Recorder;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Label value of this source in `pullwatch_runtime_up` and `pullwatch_source_errors_total`.
pub const SOURCE: &str = "cri";

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
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

/// The poller.
pub struct RuntimeStatusSource {
    socket: PathBuf,
    interval: Duration,
    recorder: Arc<Recorder>,
    client: Option<CriClient>,
}

impl RuntimeStatusSource {
    /// Polls the CRI socket `socket` every `interval`.
    pub fn new(socket: PathBuf, interval: Duration, recorder: Arc<Recorder>) -> Self {
        Self {
            socket,
            interval,
            recorder,
            client: None,
        }
    }

    /// Runs until `shutdown` flips to true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let result = self.poll().await;
            let m = self.recorder.metrics();
            match result {
                Ok(()) => m.runtime_up.with_label_values(&[SOURCE]).set(1),
                Err(e) => {
                    // Reconnect next time: the runtime may have restarted.
                    self.client = None;
                    m.runtime_up.with_label_values(&[SOURCE]).set(0);
                    m.source_errors.with_label_values(&[SOURCE]).inc();
                    tracing::warn!(source = SOURCE, socket = %self.socket.display(), error = %e, "runtime poll failed");
                }
            }
        }
    }

    /// One poll: every call must succeed for the runtime to count as up.
    pub async fn poll(&mut self) -> Result<(), PollError> {
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

        let m = self.recorder.metrics();
        m.runtime_info.reset();
        m.runtime_info
            .with_label_values(&[
                &version.runtime_name,
                &version.runtime_version,
                &version.runtime_api_version,
            ])
            .set(1);
        m.runtime_condition.reset();
        for c in status.status.map(|s| s.conditions).unwrap_or_default() {
            m.runtime_condition
                .with_label_values(&[&c.r#type])
                .set(i64::from(c.status));
        }
        let size: u64 = images.iter().map(|i| i.size).sum();
        m.images
            .with_label_values::<&str>(&[])
            .set(i64::try_from(images.len()).unwrap_or(i64::MAX));
        m.images_size
            .with_label_values::<&str>(&[])
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        m.image_fs_used.reset();
        m.image_fs_inodes.reset();
        for u in fs.image_filesystems {
            let mount = u.fs_id.map(|f| f.mountpoint).unwrap_or_default();
            let used = u.used_bytes.map_or(0, |v| v.value);
            let inodes = u.inodes_used.map_or(0, |v| v.value);
            m.image_fs_used
                .with_label_values(&[&mount])
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            m.image_fs_inodes
                .with_label_values(&[&mount])
                .set(i64::try_from(inodes).unwrap_or(i64::MAX));
        }
        Ok(())
    }
}
