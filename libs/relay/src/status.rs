//! Error responses the relay itself sends to a caller: a ttrpc `Response`
//! frame carrying a `Status`, on the stream id of the request it answers.

use crate::frame::{encode_frame, MessageType};
use protobuf::Message;
use ttrpc::{Code, Response};

/// Encodes a response frame that fails `stream_id` with `code` and `message`.
pub fn error_frame(stream_id: u32, code: Code, message: &str) -> Vec<u8> {
    let mut resp = Response::new();
    resp.status = protobuf::MessageField::some(ttrpc::get_status(code, message));
    // Encoding a message built from plain fields cannot fail.
    let payload = resp.write_to_bytes().unwrap_or_default();
    encode_frame(stream_id, MessageType::Response, 0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHeader, HEADER_LEN};

    #[test]
    fn error_frame_decodes_as_a_response_status() {
        let f = error_frame(5, Code::UNAVAILABLE, "gone");
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&f[..HEADER_LEN]);
        let h = FrameHeader::decode(&hb);
        assert_eq!(h.stream_id, 5);
        assert_eq!(h.kind, MessageType::Response);
        let r = Response::parse_from_bytes(&f[HEADER_LEN..]).unwrap();
        assert_eq!(r.status.code(), Code::UNAVAILABLE);
        assert_eq!(r.status.message, "gone");
    }
}
