//! Registration with the kubelet: a gRPC call to its `Registration`
//! service on `kubelet.sock`, naming our socket and resource.

use crate::api::registration_client::RegistrationClient;
use crate::api::{DevicePluginOptions, RegisterRequest};
use crate::config::{Config, VERSION};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// Longest wait for the kubelet to answer Register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("the kubelet refused the registration: {0}")]
    Refused(tonic::Status),
    #[error("no answer from the kubelet within {0:?}")]
    Timeout(Duration),
}

/// A gRPC channel over the unix socket at `path` (the URI is a placeholder
/// tonic needs; the connector ignores it).
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(REGISTER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

/// The request we send: API version, our socket's file name, the resource.
pub fn request(config: &Config) -> RegisterRequest {
    RegisterRequest {
        version: VERSION.into(),
        endpoint: config.endpoint.clone(),
        resource_name: config.resource_name.clone(),
        options: Some(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: false,
        }),
    }
}

/// Registers once.
pub(crate) async fn register(config: &Config) -> Result<(), RegisterError> {
    let call = async {
        let channel = unix_channel(&config.kubelet_socket)
            .await
            .map_err(|source| RegisterError::Connect {
                path: config.kubelet_socket.display().to_string(),
                source,
            })?;
        RegistrationClient::new(channel)
            .register(request(config))
            .await
            .map_err(RegisterError::Refused)?;
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| RegisterError::Timeout(REGISTER_TIMEOUT))?
}
