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
