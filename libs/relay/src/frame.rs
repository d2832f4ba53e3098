//! ttrpc framing: a 10-byte header (payload length u32 BE, stream id u32 BE,
//! message type u8, flags u8) followed by the payload.
//!
//! The ttrpc crate frames messages inside its own client and server but does
//! not expose a reader of raw frames, which the relay needs to pass frames on
//! without decoding them; this is that reader.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// Default largest payload relayed (ttrpc's own default limit).
pub const DEFAULT_MAX_PAYLOAD: u32 = 4 << 20;

/// A frame's message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Request,
    Response,
    Data,
    /// A type this relay does not know; passed through unchanged.
    Other(u8),
}

impl From<u8> for MessageType {
    fn from(v: u8) -> Self {
        match v {
            1 => MessageType::Request,
            2 => MessageType::Response,
            3 => MessageType::Data,
            o => MessageType::Other(o),
        }
    }
}

impl From<MessageType> for u8 {
    fn from(t: MessageType) -> u8 {
        match t {
            MessageType::Request => 1,
            MessageType::Response => 2,
            MessageType::Data => 3,
            MessageType::Other(o) => o,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub stream_id: u32,
    pub kind: MessageType,
    pub flags: u8,
}

impl FrameHeader {
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            kind: MessageType::from(b[8]),
            flags: b[9],
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.kind.into();
        b[9] = self.flags;
        b
    }
}

/// Reads one header. `Ok(None)` is a clean end of stream before any byte of
/// a header; a stream that ends inside a header is an `UnexpectedEof` error.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<FrameHeader>> {
    let mut b = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed inside a frame header ({got} of {HEADER_LEN} bytes)"),
            ));
        }
        got += n;
    }
    Ok(Some(FrameHeader::decode(&b)))
}

/// Builds a whole frame (header + payload) in one buffer.
pub fn encode_frame(stream_id: u32, kind: MessageType, flags: u8, payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        length: payload.len() as u32,
        stream_id,
        kind,
        flags,
    };
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&h.encode());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            length: 0x0102_0304,
            stream_id: 7,
            kind: MessageType::Response,
            flags: 0x4,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 7, 2, 4]);
        assert_eq!(FrameHeader::decode(&b), h);
    }

    #[tokio::test]
    async fn eof_cases() {
        let mut empty: &[u8] = &[];
        assert!(read_header(&mut empty).await.unwrap().is_none());
        let mut short: &[u8] = &[0, 0, 0];
        let e = read_header(&mut short).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn unknown_type_is_kept() {
        assert_eq!(u8::from(MessageType::from(9)), 9);
    }
}
