//! Client side of the daemon's two sockets, for the operator CLI, tests
//! and benchmarks: the hypervisor API (as the shim calls it) and a Health
//! check through a sandbox's agent socket.

use peerpod_protocols::health::{health_check_response::ServingStatus, CheckRequest};
use peerpod_protocols::health_ttrpc::HealthClient;
use peerpod_protocols::hypervisor::{
    CreateVMRequest, StartVMRequest, StopVMRequest, VersionRequest,
};
use peerpod_protocols::hypervisor_ttrpc::HypervisorClient;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// A failed call; says whether the daemon was reachable at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is cloud-api-adaptor running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("{call}: {message}")]
    Call { call: &'static str, message: String },
}

fn call_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> ClientError {
    move |e| ClientError::Call {
        call,
        message: match e {
            ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
            other => other.to_string(),
        },
    }
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

async fn connect(path: &Path) -> Result<ttrpc::r#async::Client, ClientError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    Ok(ttrpc::r#async::Client::new(stream.into()))
}

/// The hypervisor API client.
pub struct Hypervisor {
    inner: HypervisorClient,
}

impl Hypervisor {
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            inner: HypervisorClient::new(connect(socket).await?),
        })
    }

    pub async fn version(&self) -> Result<String, ClientError> {
        let mut req = VersionRequest::new();
        req.version = crate::service::API_VERSION.into();
        let r = self
            .inner
            .version(ctx(Duration::from_secs(10)), &req)
            .await
            .map_err(call_err("Version"))?;
        Ok(r.version)
    }

    pub async fn create_vm(
        &self,
        id: &str,
        annotations: HashMap<String, String>,
        netns: &str,
    ) -> Result<String, ClientError> {
        let mut req = CreateVMRequest::new();
        req.id = id.into();
        req.annotations = annotations;
        req.networkNamespacePath = netns.into();
        let r = self
            .inner
            .create_vm(ctx(Duration::from_secs(60)), &req)
            .await
            .map_err(call_err("CreateVM"))?;
        Ok(r.agentSocketPath)
    }

    pub async fn start_vm(&self, id: &str, timeout: Duration) -> Result<(), ClientError> {
        let mut req = StartVMRequest::new();
        req.id = id.into();
        self.inner
            .start_vm(ctx(timeout), &req)
            .await
            .map_err(call_err("StartVM"))?;
        Ok(())
    }

    pub async fn stop_vm(&self, id: &str) -> Result<(), ClientError> {
        let mut req = StopVMRequest::new();
        req.id = id.into();
        self.inner
            .stop_vm(ctx(Duration::from_secs(10)), &req)
            .await
            .map_err(call_err("StopVM"))?;
        Ok(())
    }
}

/// One `grpc.Health/Check` on an open ttrpc connection, with `timeout`
/// passed to the callee as the request's deadline.
pub async fn health_check(
    client: ttrpc::r#async::Client,
    timeout: Duration,
) -> ttrpc::Result<ServingStatus> {
    let r = HealthClient::new(client)
        .check(ctx(timeout), &CheckRequest::new())
        .await?;
    Ok(r.status.enum_value().unwrap_or(ServingStatus::UNKNOWN))
}

/// Why a Health check on a raw stream failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthCallError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before the answer")]
    Closed,
    #[error("answer is not a ttrpc response: {0}")]
    Decode(String),
    #[error("{code:?}: {message}")]
    Status { code: ttrpc::Code, message: String },
}

/// One `grpc.Health/Check` on a stream the caller owns (and closes).
///
/// ttrpc's client takes ownership of its socket and drops it without a
/// shutdown, which a TLS peer reads as a truncated stream (no
/// `close_notify`); readiness checks run many times per StartVM, so they
/// speak the one request and response here, frame by frame (the framing
/// is the relay's), and the caller closes the stream properly.
pub async fn health_check_on<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ServingStatus, HealthCallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use peerpod_protocols::health::HealthCheckResponse;
    use peerpod_protocols::protobuf::Message;
    use peerpod_relay::frame::{encode_frame, read_header, MessageType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let decode = |e: peerpod_protocols::protobuf::Error| HealthCallError::Decode(e.to_string());
    let mut req = ttrpc::Request::new();
    req.service = peerpod_protocols::services::HEALTH.into();
    req.method = "Check".into();
    req.payload = CheckRequest::new().write_to_bytes().map_err(decode)?;
    req.timeout_nano = timeout.as_nanos().min(i64::MAX as u128) as i64;
    let body = req.write_to_bytes().map_err(decode)?;
    stream
        .write_all(&encode_frame(1, MessageType::Request, 0, &body))
        .await?;
    stream.flush().await?;
    loop {
        let h = read_header(stream).await?.ok_or(HealthCallError::Closed)?;
        if h.length > peerpod_relay::frame::DEFAULT_MAX_PAYLOAD {
            return Err(HealthCallError::Decode(format!(
                "a frame of {} bytes",
                h.length
            )));
        }
        let mut payload = vec![0u8; h.length as usize];
        stream.read_exact(&mut payload).await?;
        if h.kind != MessageType::Response || h.stream_id != 1 {
            continue;
        }
        let resp = ttrpc::Response::parse_from_bytes(&payload).map_err(decode)?;
        if let Some(s) = resp.status.as_ref() {
            if s.code() != ttrpc::Code::OK {
                return Err(HealthCallError::Status {
                    code: s.code(),
                    message: s.message.clone(),
                });
            }
        }
        let r = HealthCheckResponse::parse_from_bytes(&resp.payload).map_err(decode)?;
        return Ok(r.status.enum_value().unwrap_or(ServingStatus::UNKNOWN));
    }
}

/// A Health check through a sandbox's agent socket.
pub async fn agent_health(
    agent_socket: &Path,
    timeout: Duration,
) -> Result<ServingStatus, ClientError> {
    health_check(connect(agent_socket).await?, timeout)
        .await
        .map_err(call_err("grpc.Health/Check"))
}

pub use crate::annotations::shim_annotations;
