//! The gRPC service: each call of `peerpod.provider.v1.Provider` mapped
//! onto the [`Provider`] trait. A provider's own error goes back typed in
//! the reply (never as a gRPC status), so the adaptor keeps its retry and
//! capacity-fallback decisions. The client's deadline (gRPC timeout) is
//! enforced by tonic: past it, the provider's future is dropped, as the
//! adaptor's own provider timeout would drop it in process.

use peerpod_protocols::provider_v1 as pb;
use peerpod_protocols::tonic::{self, Request, Response, Status};
use peerpod_provider_api::Provider;
use peerpod_provider_plugin::wire;
use std::pin::Pin;
use std::sync::Arc;

/// See the module doc.
pub struct ProviderService {
    provider: Arc<dyn Provider>,
    pub(crate) version: String,
    pub(crate) console_tail: bool,
    pub(crate) protocol_version: u32,
}

impl ProviderService {
    pub fn new(provider: Arc<dyn Provider>) -> Self {
        Self {
            provider,
            version: env!("CARGO_PKG_VERSION").to_string(),
            console_tail: true,
            protocol_version: pb::PROTOCOL_VERSION,
        }
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }
}

type ListStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ListInstancesReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::provider_server::Provider for ProviderService {
    async fn handshake(
        &self,
        req: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeReply>, Status> {
        let r = req.into_inner();
        tracing::info!(adaptor_version = %r.adaptor_version, adaptor_protocol = r.protocol_version,
            "adaptor connected");
        let mut capabilities = Vec::new();
        if self.console_tail {
            capabilities.push(pb::Capability::ConsoleTail as i32);
        }
        Ok(Response::new(pb::HandshakeReply {
            protocol_version: self.protocol_version,
            provider_name: self.provider.name().to_string(),
            capabilities,
            plugin_version: self.version.clone(),
        }))
    }

    async fn create_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::CreateInstanceReply>, Status> {
        use pb::create_instance_reply::Result as R;
        let result = match wire::request_from_pb(req.into_inner().request) {
            Err(e) => R::Error(wire::error_to_pb(&e)),
            Ok(r) => match self.provider.create_instance(r).await {
                Ok(i) => R::Instance(wire::instance_to_pb(i)),
                Err(e) => R::Error(wire::error_to_pb(&e)),
            },
        };
        Ok(Response::new(pb::CreateInstanceReply {
            result: Some(result),
        }))
    }

    async fn delete_instance(
        &self,
        req: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<pb::DeleteInstanceReply>, Status> {
        let id = req.into_inner().instance_id;
        let error = match peerpod_provider_api::check_instance_id(&id) {
            Err(e) => Some(wire::error_to_pb(&e)),
            Ok(()) => self
                .provider
                .delete_instance(&id)
                .await
                .err()
                .map(|e| wire::error_to_pb(&e)),
        };
        Ok(Response::new(pb::DeleteInstanceReply { error }))
    }

    type ListInstancesStream = ListStream;

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<ListStream>, Status> {
        use pb::list_instances_reply::Result as R;
        let owner = wire::owner_from_pb(req.into_inner().owner);
        let items: Vec<R> = match self.provider.list_instances(&owner).await {
            Ok(v) => v
                .into_iter()
                .map(|i| R::Instance(wire::instance_to_pb(i)))
                .collect(),
            Err(e) => vec![R::Error(wire::error_to_pb(&e))],
        };
        let stream = futures::stream::iter(
            items
                .into_iter()
                .map(|r| Ok(pb::ListInstancesReply { result: Some(r) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify(
        &self,
        _req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        Ok(Response::new(match self.provider.verify().await {
            Ok(lines) => pb::VerifyReply { lines, error: None },
            Err(e) => pb::VerifyReply {
                lines: vec![],
                error: Some(wire::error_to_pb(&e)),
            },
        }))
    }

    async fn console_tail(
        &self,
        req: Request<pb::ConsoleTailRequest>,
    ) -> Result<Response<pb::ConsoleTailReply>, Status> {
        let id = req.into_inner().instance_id;
        let tail = if self.console_tail {
            self.provider.console_tail(&id).await
        } else {
            None
        };
        Ok(Response::new(pb::ConsoleTailReply { tail }))
    }
}
