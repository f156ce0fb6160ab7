//! The only CRI messages the interposer decodes: a PullImage request (image and pod, never the
//! credentials: see `ObservedPullImageRequest`) and a PullImage response (the image ref). Pure
//! functions over the framed bytes, so they are fuzzed directly (`fuzz/`).

use crate::core::attempt::{MAX_IMAGE_LEN, PodRef, truncate};
use crate::core::reference::ImageRef;
use crate::cri::{ObservedPullImageRequest, ObservedPullImageResponse};
use crate::grpc::frame;
use prost::Message;

/// What the interposer reads from a PullImage request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObservedPull {
    /// The image as requested.
    pub image: String,
    /// Parsed reference, if `image` parses.
    pub reference: Option<ImageRef>,
    /// The pod, if the caller named one (kubelet always does).
    pub pod: Option<PodRef>,
    /// Whether the request carried registry credentials (a non-empty `auth`, field 2). Only
    /// the field's length is read: its content is skipped, never decoded.
    pub credentials: bool,
}

/// Whether the protobuf `message` has a non-empty length-delimited field `field`, reading
/// only keys and lengths (values are skipped). `None` if the message is malformed.
fn has_nonempty_field(mut message: &[u8], field: u64) -> Option<bool> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut found = false;
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut message)?;
                0
            }
            1 => 8,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                found |= key >> 3 == field && len > 0;
                len
            }
            5 => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
    }
    Some(found)
}

/// One field of a protobuf message: its number, wire type and, for a length-delimited field,
/// its bytes. `None` if the message is malformed.
fn fields(mut message: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let (field, wire) = (key >> 3, key & 7);
        let value: &[u8] = match wire {
            0 => {
                varint(&mut message)?;
                &[]
            }
            1 => message.get(..8)?,
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                message.get(..len)?
            }
            5 => message.get(..4)?,
            _ => return None,
        };
        if wire != 0 {
            message = &message[value.len()..];
        }
        out.push((field, wire, value));
        if out.len() > 1024 {
            return None;
        }
    }
    Some(out)
}

/// Whether `message` has only fields of `allowed` (number, wire type), and the bytes of the
/// length-delimited field `want` (the last, as protobuf reads it), if present.
fn only<'a>(message: &'a [u8], allowed: &[(u64, u64)], want: u64) -> Option<Option<&'a [u8]>> {
    let mut found = None;
    for (field, wire, value) in fields(message)? {
        if !allowed.contains(&(field, wire)) {
            return None;
        }
        if field == want && wire == 2 {
            found = Some(value);
        }
    }
    Some(found)
}

/// A framed request that is a PullImageRequest by its shape alone, for a call whose method
/// could not be read: only PullImageRequest's fields, an `ImageSpec` whose image is an image
/// reference, and the pod's sandbox config (kubelet always sends one) with a name, namespace
/// and uid. No other CRI request has that shape (CreateContainer's field 1 is a sandbox id, not
/// a message; RunPodSandbox and the image calls have no field 3). Then decoded as
/// [`pull_request`] does.
pub(crate) fn pull_request_by_shape(framed: &[u8]) -> Option<ObservedPull> {
    const LEN: u64 = 2;
    let message = frame::first_message(framed).ok()?;
    let spec = only(message, &[(1, LEN), (2, LEN), (3, LEN)], 1)??;
    let image = only(spec, &[(1, LEN), (2, LEN), (18, LEN), (19, LEN)], 1)??;
    ImageRef::parse(std::str::from_utf8(image).ok()?).ok()?;
    let sandbox = only(message, &[(1, LEN), (2, LEN), (3, LEN)], 3)??;
    let config: Vec<(u64, u64)> = (1..=9).map(|f| (f, LEN)).collect();
    let metadata = only(sandbox, &config, 1)??;
    let meta_fields = [(1, LEN), (2, LEN), (3, LEN), (4, 0)];
    for f in [1, 2, 3] {
        only(metadata, &meta_fields, f)?.filter(|v| !v.is_empty())?;
    }
    pull_request(framed)
}

/// A framed response that is a PullImageResponse by its shape: one string field, not empty.
pub(crate) fn pull_response_by_shape(framed: &[u8]) -> Option<String> {
    let message = frame::first_message(framed).ok()?;
    only(message, &[(1, 2)], 1)?.filter(|v| !v.is_empty())?;
    pull_response(framed)
}

/// Decodes a framed PullImage request; `None` if it is not one (truncated, compressed, not
/// protobuf). The caller forwards the bytes unchanged either way.
pub(crate) fn pull_request(framed: &[u8]) -> Option<ObservedPull> {
    let message = frame::first_message(framed).ok()?;
    let req = ObservedPullImageRequest::decode(message).ok()?;
    let credentials = has_nonempty_field(message, 2).unwrap_or(false);
    let lossy = |b: Vec<u8>| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    let mut image = req.image.map(|i| lossy(i.image)).unwrap_or_default();
    // Parsed whole (an overlong reference is invalid), then cut for labels and logs.
    let reference = ImageRef::parse(&image).ok();
    truncate(&mut image, MAX_IMAGE_LEN);
    let pod = req
        .sandbox_config
        .and_then(|c| c.metadata)
        .filter(|m| !(m.name.is_empty() && m.namespace.is_empty() && m.uid.is_empty()))
        .map(|m| {
            PodRef {
                namespace: lossy(m.namespace),
                name: lossy(m.name),
                uid: lossy(m.uid),
            }
            .bounded()
        });
    Some(ObservedPull {
        reference,
        image,
        pod,
        credentials,
    })
}

/// Decodes a framed PullImage response into its image ref; `None` if it is not one.
pub(crate) fn pull_response(framed: &[u8]) -> Option<String> {
    ObservedPullImageResponse::decode(frame::first_message(framed).ok()?)
        .ok()
        .map(|r| String::from_utf8_lossy(&r.image_ref).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::{AuthConfig, ImageSpec, PullImageRequest};

    fn framed(auth: Option<AuthConfig>) -> Vec<u8> {
        frame::encode(
            &PullImageRequest {
                image: Some(ImageSpec {
                    image: "reg.example/app:1".into(),
                    ..Default::default()
                }),
                auth,
                ..Default::default()
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn a_pull_is_told_by_its_shape_and_no_other_cri_request_passes() {
        use crate::cri::{ImageStatusRequest, PodSandboxConfig, PodSandboxMetadata};
        // Length-delimited fields, for requests the proto subset does not declare.
        fn msg(fields: &[(u8, &[u8])]) -> Vec<u8> {
            let mut out = Vec::new();
            for (f, v) in fields {
                out.push(f << 3 | 2);
                prost::encoding::encode_varint(v.len() as u64, &mut out);
                out.extend_from_slice(v);
            }
            out
        }
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web-1".into(),
                uid: "0f6b1c2e".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
        };
        let pull = PullImageRequest {
            image: Some(ImageSpec {
                image: "reg.example/app:1".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                password: "p".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.clone()),
        };
        let o = pull_request_by_shape(&frame::encode(&pull.encode_to_vec())).unwrap();
        assert_eq!(o.image, "reg.example/app:1");
        assert_eq!(o.pod.unwrap().name, "web-1");
        // Without the sandbox config (crictl): not recognizable.
        let bare = PullImageRequest {
            sandbox_config: None,
            ..pull
        };
        assert!(pull_request_by_shape(&frame::encode(&bare.encode_to_vec())).is_none());
        // CreateContainer: sandbox id, container config, sandbox config.
        let sandbox = sandbox.encode_to_vec();
        let id = "3f9a0c".repeat(10) + "abcd";
        let create = msg(&[(1, id.as_bytes()), (2, &msg(&[(1, b"c")])), (3, &sandbox)]);
        assert!(pull_request_by_shape(&frame::encode(&create)).is_none());
        // RunPodSandbox: sandbox config, runtime handler.
        let run = msg(&[(1, &sandbox), (2, b"runc")]);
        assert!(pull_request_by_shape(&frame::encode(&run)).is_none());
        let status = ImageStatusRequest {
            image: Some(ImageSpec {
                image: "reg.example/app:1".into(),
                ..Default::default()
            }),
            verbose: true,
        };
        assert!(pull_request_by_shape(&frame::encode(&status.encode_to_vec())).is_none());
        let reply = crate::cri::PullImageResponse {
            image_ref: "sha256:abc".into(),
        };
        assert_eq!(
            pull_response_by_shape(&frame::encode(&reply.encode_to_vec())).as_deref(),
            Some("sha256:abc")
        );
        assert!(pull_response_by_shape(&frame::encode(&[])).is_none());
    }

    #[test]
    fn a_bad_byte_loses_only_its_character() {
        let good = PullImageRequest {
            image: Some(ImageSpec {
                image: "reg.example/app:1".into(),
                ..Default::default()
            }),
            sandbox_config: Some(crate::cri::PodSandboxConfig {
                metadata: Some(crate::cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "UIDX".into(),
                    namespace: "shop".into(),
                    attempt: 0,
                }),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        // Turn the uid's "X" into a byte that is not UTF-8.
        let at = good.windows(4).position(|w| w == b"UIDX").unwrap() + 3;
        let mut bad = good.clone();
        bad[at] = 0xff;
        let o = pull_request(&frame::encode(&bad)).expect("still decoded");
        assert_eq!(o.image, "reg.example/app:1");
        let pod = o.pod.unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web"));
        assert_eq!(pod.uid, "UID\u{fffd}");
    }

    #[test]
    fn credentials_are_seen_present_never_read() {
        let with = framed(Some(AuthConfig {
            username: "u".into(),
            password: "p4ss".into(),
            ..Default::default()
        }));
        let o = pull_request(&with).unwrap();
        assert!(o.credentials);
        assert!(!format!("{o:?}").contains("p4ss"));
        assert!(!pull_request(&framed(None)).unwrap().credentials);
        // An AuthConfig with nothing in it is no credentials.
        let empty = framed(Some(AuthConfig::default()));
        assert!(!pull_request(&empty).unwrap().credentials);
    }
}
