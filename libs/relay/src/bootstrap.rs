//! The bootstrap channel's wire, shared by the adaptor (caller) and a
//! warm-pool VM's forwarder (server): one ttrpc request frame, one
//! response frame with a status, over the mutual-TLS stream. The request
//! and response bodies are ttrpc's own `Request`/`Response` messages, so
//! the frames are what any ttrpc peer would send; the payload is the
//! document of `peerpod_vmconfig::bind`.

use crate::frame::{encode_frame, read_header, MessageType};
use protobuf::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ttrpc::Code;

/// One request as the server reads it.
#[derive(Debug)]
pub struct BootstrapRequest {
    pub stream_id: u32,
    pub service: String,
    pub method: String,
    pub payload: Vec<u8>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("bootstrap channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("bootstrap channel: the peer answered {code:?}: {message}")]
    Status { code: Code, message: String },
    #[error("bootstrap channel: malformed frame: {0}")]
    Malformed(String),
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    max: u32,
    want: MessageType,
) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let Some(h) = read_header(s).await? else {
        return Ok(None);
    };
    if h.kind != want {
        return Err(invalid(format!(
            "expected a {want:?} frame, got {:?}",
            h.kind
        )));
    }
    if h.length > max {
        return Err(invalid(format!(
            "frame of {} bytes is over the {max}-byte limit",
            h.length
        )));
    }
    let mut body = vec![0u8; h.length as usize];
    s.read_exact(&mut body).await?;
    Ok(Some((h.stream_id, body)))
}

/// Reads the next request (`None`: the peer closed cleanly).
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    max: u32,
) -> std::io::Result<Option<BootstrapRequest>> {
    let Some((stream_id, body)) = read_body(s, max, MessageType::Request).await? else {
        return Ok(None);
    };
    let r = ttrpc::Request::parse_from_bytes(&body).map_err(|e| invalid(e.to_string()))?;
    Ok(Some(BootstrapRequest {
        stream_id,
        service: r.service,
        method: r.method,
        payload: r.payload,
    }))
}

/// Writes the answer to request `stream_id`.
pub async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    stream_id: u32,
    outcome: Result<(), (Code, String)>,
) -> std::io::Result<()> {
    let mut resp = ttrpc::Response::new();
    let (code, msg) = match outcome {
        Ok(()) => (Code::OK, String::new()),
        Err((c, m)) => (c, m),
    };
    resp.status = protobuf::MessageField::some(ttrpc::get_status(code, msg));
    let body = resp.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
    s.write_all(&encode_frame(stream_id, MessageType::Response, 0, &body))
        .await?;
    s.flush().await
}

/// One call: sends `service/method` with `payload` and waits for its
/// answer; a status other than OK is an error carrying the peer's code
/// and message.
pub async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    stream_id: u32,
    service: &str,
    method: &str,
    payload: &[u8],
) -> Result<(), CallError> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload.to_vec();
    let body = r
        .write_to_bytes()
        .map_err(|e| CallError::Malformed(e.to_string()))?;
    s.write_all(&encode_frame(stream_id, MessageType::Request, 0, &body))
        .await?;
    s.flush().await?;
    let (sid, body) = read_body(s, 64 * 1024, MessageType::Response)
        .await?
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without answering",
            )
        })?;
    if sid != stream_id {
        return Err(CallError::Malformed(format!(
            "answer for stream {sid}, expected {stream_id}"
        )));
    }
    let resp = ttrpc::Response::parse_from_bytes(&body)
        .map_err(|e| CallError::Malformed(e.to_string()))?;
    match resp.status.as_ref() {
        Some(st) if st.code() != Code::OK => Err(CallError::Status {
            code: st.code(),
            message: st.message.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_and_its_answers() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let r = read_request(&mut b, 1024).await.unwrap().unwrap();
            assert_eq!((r.service.as_str(), r.method.as_str()), ("svc", "Ping"));
            assert_eq!(r.payload, b"hi");
            write_response(&mut b, r.stream_id, Ok(())).await.unwrap();
            let r = read_request(&mut b, 1024).await.unwrap().unwrap();
            write_response(
                &mut b,
                r.stream_id,
                Err((Code::FAILED_PRECONDITION, "already bound".into())),
            )
            .await
            .unwrap();
            assert!(read_request(&mut b, 1024).await.unwrap().is_none());
        });
        call(&mut a, 1, "svc", "Ping", b"hi").await.unwrap();
        let e = call(&mut a, 3, "svc", "Bind", b"{}").await.unwrap_err();
        assert!(
            matches!(&e, CallError::Status { code: Code::FAILED_PRECONDITION, message } if message == "already bound"),
            "{e}"
        );
        drop(a);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_and_wrong_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let big = vec![b'x'; 5000];
        let client = tokio::spawn(async move { call(&mut a, 1, "s", "m", &big).await });
        let e = read_request(&mut b, 1024).await.unwrap_err();
        assert!(e.to_string().contains("over the 1024-byte limit"), "{e}");
        drop(b);
        assert!(client.await.unwrap().is_err());
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_response(&mut a, 1, Ok(())).await.unwrap();
        let e = read_request(&mut b, 1024).await.unwrap_err();
        assert!(e.to_string().contains("expected a Request frame"), "{e}");
    }
}
