//! A ttrpc framing check in front of the hypervisor socket's server. The
//! ttrpc crate's server reads past a frame announcing a length beyond its
//! limit (waiting for all of it), ignores frames of unknown type and logs
//! cut frames only at trace level; on this socket, where the only
//! legitimate peer is a Kata shim sending requests, such bytes mean the
//! peer is not speaking ttrpc. Each accepted connection is relayed to the
//! server through an in-process pipe, frame by frame (never buffering a
//! whole frame): the first frame whose header is not a request or stream
//! data within the size limit, or a connection cut inside a frame, closes
//! the connection with a log line saying why.

use futures::StreamExt;
use peerpod_relay::frame::{read_header, FrameHeader, MessageType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::transport::Listener;

/// Pipe capacity between a connection and the server.
const PIPE_BYTES: usize = 64 * 1024;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("frame of message type {0}, which a shim never sends (not ttrpc?)")]
    UnknownType(u8),
    #[error("frame announces {length} payload bytes, beyond the {max}-byte limit")]
    TooLong { length: u32, max: u32 },
    #[error("connection cut inside a frame: {0}")]
    Cut(std::io::Error),
    #[error("reading the connection: {0}")]
    Io(std::io::Error),
}

/// Checks one frame header.
pub fn check_header(h: &FrameHeader, max: u32) -> Result<(), FramingError> {
    match h.kind {
        MessageType::Request | MessageType::Data => {}
        other => return Err(FramingError::UnknownType(u8::from(other))),
    }
    if h.length > max {
        return Err(FramingError::TooLong {
            length: h.length,
            max,
        });
    }
    Ok(())
}

/// Copies frames from `from` to `to` until `from` ends cleanly between
/// frames (`Ok`) or breaks the framing (`Err`).
pub async fn copy_frames<R, W>(from: &mut R, to: &mut W, max: u32) -> Result<(), FramingError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    loop {
        let h = match read_header(from).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FramingError::Cut(e))
            }
            Err(e) => return Err(FramingError::Io(e)),
        };
        check_header(&h, max)?;
        to.write_all(&h.encode()).await.map_err(FramingError::Io)?;
        let want = u64::from(h.length);
        let got = tokio::io::copy(&mut from.take(want), to)
            .await
            .map_err(FramingError::Io)?;
        if got < want {
            return Err(FramingError::Cut(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{got} of {want} payload bytes"),
            )));
        }
        to.flush().await.map_err(FramingError::Io)?;
    }
}

/// Relays one accepted connection to the server end of a pipe.
async fn pump(conn: UnixStream, server: tokio::io::DuplexStream, max: u32) {
    let (mut conn_r, mut conn_w) = conn.into_split();
    let (mut srv_r, mut srv_w) = tokio::io::split(server);
    let answers = async {
        let _ = tokio::io::copy(&mut srv_r, &mut conn_w).await;
        let _ = conn_w.shutdown().await;
    };
    tokio::pin!(answers);
    tokio::select! {
        checked = copy_frames(&mut conn_r, &mut srv_w, max) => match checked {
            Ok(()) => {
                // The caller is done sending: let the server finish answering.
                let _ = srv_w.shutdown().await;
                answers.await;
            }
            Err(FramingError::Io(e)) => {
                tracing::debug!(error = %e, "hypervisor connection ended");
            }
            Err(e) => {
                tracing::warn!(error = %e, "closed a hypervisor API connection that broke the ttrpc framing");
            }
        },
        () = &mut answers => {}
    }
}

/// A ttrpc listener over `listener` whose connections pass the framing
/// check (payloads up to `max` bytes).
pub fn listener(listener: UnixListener, max: u32) -> Listener {
    let accepted = futures::stream::unfold(listener, move |l| async move {
        let next = l.accept().await.map(|(conn, _)| {
            let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
            tokio::spawn(pump(conn, ours, max));
            theirs
        });
        Some((next, l))
    });
    Listener::new(accepted.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpod_relay::frame::encode_frame;

    async fn run(input: &[u8]) -> (Result<(), FramingError>, Vec<u8>) {
        let mut from = input;
        let mut out = Vec::new();
        let r = copy_frames(&mut from, &mut out, 1024).await;
        (r, out)
    }

    #[tokio::test]
    async fn good_frames_pass_unchanged() {
        let mut input = encode_frame(1, MessageType::Request, 0, b"hello");
        input.extend(encode_frame(3, MessageType::Data, 2, &[9u8; 1024]));
        let (r, out) = run(&input).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn broken_framing_is_refused_before_anything_passes() {
        let unknown = encode_frame(1, MessageType::Other(9), 0, b"x");
        let (r, out) = run(&unknown).await;
        assert!(matches!(r, Err(FramingError::UnknownType(9))), "{r:?}");
        assert!(out.is_empty());
        let response = encode_frame(1, MessageType::Response, 0, b"x");
        assert!(matches!(
            run(&response).await.0,
            Err(FramingError::UnknownType(2))
        ));
        let huge = FrameHeader {
            length: u32::MAX,
            stream_id: 1,
            kind: MessageType::Request,
            flags: 0,
        };
        let (r, out) = run(&huge.encode()).await;
        assert!(
            matches!(
                r,
                Err(FramingError::TooLong {
                    length: u32::MAX,
                    max: 1024
                })
            ),
            "{r:?}"
        );
        assert!(out.is_empty());
        let whole = encode_frame(1, MessageType::Request, 0, &[1u8; 100]);
        let (r, _) = run(&whole[..50]).await;
        let e = r.unwrap_err();
        assert!(matches!(e, FramingError::Cut(_)), "{e:?}");
        assert!(e.to_string().contains("40 of 100"), "{e}");
        let (r, _) = run(&whole[..4]).await;
        assert!(matches!(r, Err(FramingError::Cut(_))), "{r:?}");
    }
}
