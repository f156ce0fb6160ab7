//! The only CRI messages the interposer decodes: a PullImage request (image and pod, never the
//! credentials: see `ObservedPullImageRequest`) and a PullImage response (the image ref). Pure
//! functions over the framed bytes, so they are fuzzed directly (`fuzz/`).

use crate::core::attempt::{MAX_IMAGE_LEN, PodRef, truncate};
use crate::core::reference::ImageRef;
use crate::cri::{ObservedPullImageRequest, PullImageResponse};
use crate::grpc::frame;
use prost::Message;

/// What the interposer reads from a PullImage request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPull {
    /// The image as requested.
    pub image: String,
    /// Parsed reference, if `image` parses.
    pub reference: Option<ImageRef>,
    /// The pod, if the caller named one (kubelet always does).
    pub pod: Option<PodRef>,
}

/// Decodes a framed PullImage request; `None` if it is not one (truncated, compressed, not
/// protobuf). The caller forwards the bytes unchanged either way.
pub fn pull_request(framed: &[u8]) -> Option<ObservedPull> {
    let req = ObservedPullImageRequest::decode(frame::first_message(framed).ok()?).ok()?;
    let mut image = req.image.map(|i| i.image).unwrap_or_default();
    // Parsed whole (an overlong reference is invalid), then cut for labels and logs.
    let reference = ImageRef::parse(&image).ok();
    truncate(&mut image, MAX_IMAGE_LEN);
    let pod = req
        .sandbox_config
        .and_then(|c| c.metadata)
        .filter(|m| !(m.name.is_empty() && m.namespace.is_empty() && m.uid.is_empty()))
        .map(|m| {
            PodRef {
                namespace: m.namespace,
                name: m.name,
                uid: m.uid,
            }
            .bounded()
        });
    Some(ObservedPull {
        reference,
        image,
        pod,
    })
}

/// Decodes a framed PullImage response into its image ref; `None` if it is not one.
pub fn pull_response(framed: &[u8]) -> Option<String> {
    PullImageResponse::decode(frame::first_message(framed).ok()?)
        .ok()
        .map(|r| r.image_ref)
}
