//! gRPC length-prefixed message framing (`1 byte compressed flag | 4 bytes big-endian length |
//! message`), just enough to read the first message of a unary request or response.

/// Size of the frame header.
pub(crate) const HEADER_LEN: usize = 5;

/// Why a gRPC message could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// Fewer bytes than the header or the declared length.
    #[error("truncated gRPC frame: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The compressed flag is set; pullwatch does not decompress (kubelet never compresses).
    #[error("compressed gRPC message (flag {0}) is not decoded")]
    Compressed(u8),
}

/// Returns the first message in `buf`.
pub(crate) fn first_message(buf: &[u8]) -> Result<&[u8], FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(FrameError::Truncated {
            have: buf.len(),
            need: HEADER_LEN,
        });
    };
    if header[0] != 0 {
        return Err(FrameError::Compressed(header[0]));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let need = HEADER_LEN.saturating_add(len);
    buf.get(HEADER_LEN..need).ok_or(FrameError::Truncated {
        have: buf.len(),
        need,
    })
}

/// Frames `message` uncompressed.
pub(crate) fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes_ignored() {
        let mut f = encode(b"hello");
        assert_eq!(first_message(&f), Ok(&b"hello"[..]));
        f.extend_from_slice(&encode(b"second"));
        assert_eq!(first_message(&f), Ok(&b"hello"[..]));
        assert_eq!(first_message(&encode(b"")), Ok(&b""[..]));
    }

    #[test]
    fn truncation_and_compression_are_errors() {
        assert_eq!(
            first_message(&[0, 0]),
            Err(FrameError::Truncated { have: 2, need: 5 })
        );
        let f = encode(b"hello");
        assert_eq!(
            first_message(&f[..7]),
            Err(FrameError::Truncated { have: 7, need: 10 })
        );
        let mut c = f.clone();
        c[0] = 1;
        assert_eq!(first_message(&c), Err(FrameError::Compressed(1)));
        // A length near u32::MAX must not overflow or allocate.
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            first_message(&huge),
            Err(FrameError::Truncated { .. })
        ));
    }
}
