//! The `hypervisor.Hypervisor` ttrpc service the Kata shim calls, a thin
//! layer over the [`Manager`]: it turns requests into manager calls and
//! manager errors into ttrpc statuses whose message names what was wrong.

use crate::manager::{Manager, ManagerError};
use peerpod_protocols::hypervisor::{
    CreateVMRequest, CreateVMResponse, StartVMRequest, StartVMResponse, StopVMRequest,
    StopVMResponse, VersionRequest, VersionResponse,
};
use peerpod_protocols::hypervisor_ttrpc::Hypervisor;
use std::sync::Arc;
use std::time::Duration;
use ttrpc::r#async::TtrpcContext;

/// The protocol version we answer with (the shim checks it).
pub const API_VERSION: &str = "0.0.1";

pub struct HypervisorService {
    manager: Arc<Manager>,
}

impl HypervisorService {
    pub fn new(manager: Arc<Manager>) -> Arc<Self> {
        Arc::new(Self { manager })
    }
}

fn status(e: ManagerError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
}

#[async_trait::async_trait]
impl Hypervisor for HypervisorService {
    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        tracing::debug!(shim_version = %req.version, "Version");
        let mut r = VersionResponse::new();
        r.version = API_VERSION.to_string();
        Ok(r)
    }

    async fn create_vm(
        &self,
        _ctx: &TtrpcContext,
        req: CreateVMRequest,
    ) -> ttrpc::Result<CreateVMResponse> {
        let path = self
            .manager
            .create_vm(&req.id, &req.annotations, &req.networkNamespacePath)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "CreateVM refused");
                status(e)
            })?;
        let mut r = CreateVMResponse::new();
        r.agentSocketPath = path.to_string_lossy().into_owned();
        Ok(r)
    }

    async fn start_vm(
        &self,
        ctx: &TtrpcContext,
        req: StartVMRequest,
    ) -> ttrpc::Result<StartVMResponse> {
        let timeout = (ctx.timeout_nano > 0).then(|| Duration::from_nanos(ctx.timeout_nano as u64));
        self.manager.start_vm(&req.id, timeout).await.map_err(|e| {
            tracing::warn!(error = %e, "StartVM failed");
            status(e)
        })?;
        Ok(StartVMResponse::new())
    }

    async fn stop_vm(
        &self,
        _ctx: &TtrpcContext,
        req: StopVMRequest,
    ) -> ttrpc::Result<StopVMResponse> {
        self.manager.stop_vm(&req.id).await.map_err(|e| {
            tracing::warn!(error = %e, "StopVM failed");
            status(e)
        })?;
        Ok(StopVMResponse::new())
    }
}
