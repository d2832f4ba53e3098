//! The adaptor's end of the bootstrap channel: dial a pool VM's forwarder,
//! authenticate it by the exact one-time certificate this adaptor issued
//! to it (pinned, see `peerpod_relay::tls::pinned_client_config`), and
//! call Ping or Bind. TLS 1.3 verifies the server before the client sends
//! a byte of application data, so a host that is not that VM — another
//! forwarder, a VM that took over its address, one holding a certificate
//! some other CA or even our CA issued for the same name — fails the
//! handshake and never receives the per-pod configuration.

use peerpod_relay::bootstrap::{call, CallError};
use peerpod_vmconfig::bind::{BindRequest, BIND, PING, SERVICE};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a bootstrap call failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("pool VM {vm} at {addr} not reachable: {source}")]
    Connect {
        vm: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("pool VM {vm} at {addr}: no TCP connection within {after:?}")]
    ConnectTimeout {
        vm: String,
        addr: SocketAddr,
        after: Duration,
    },
    #[error(
        "refused to bind: the host at {addr} did not prove it is pool VM {vm} \
         (TLS handshake with its one-time bootstrap certificate failed: {source}); \
         nothing was sent to it"
    )]
    Identity {
        vm: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("pool VM {vm}: {source}")]
    Call { vm: String, source: CallError },
    #[error("pool VM {vm}: bootstrap TLS set-up: {source}")]
    Tls {
        vm: String,
        source: peerpod_relay::tls::TlsError,
    },
    #[error("pool VM name {0:?} is not a valid TLS server name")]
    ServerName(String),
}

impl BindError {
    /// Whether the VM proved to be someone else (never retried; the VM is
    /// deleted).
    pub fn is_identity(&self) -> bool {
        matches!(self, BindError::Identity { .. })
    }
}

/// How the adaptor authenticates itself (its node-CA client certificate)
/// and whom it trusts (the node CA).
#[derive(Clone)]
pub struct ClientIdentity {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The bootstrap channel to one pool VM.
pub struct BootstrapClient {
    vm: String,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl BootstrapClient {
    /// For the pool VM `vm` at `addr`, accepting only `pinned_cert_pem`.
    pub fn new(
        id: &ClientIdentity,
        vm: &str,
        pinned_cert_pem: &str,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Self, BindError> {
        let server_name = ServerName::try_from(vm.to_string())
            .map_err(|_| BindError::ServerName(vm.to_string()))?;
        let cfg: Arc<rustls::ClientConfig> = peerpod_relay::tls::pinned_client_config(
            &id.ca_cert_pem,
            pinned_cert_pem,
            &id.cert_pem,
            &id.key_pem,
        )
        .map_err(|source| BindError::Tls {
            vm: vm.to_string(),
            source,
        })?;
        Ok(Self {
            vm: vm.to_string(),
            addr,
            server_name,
            tls: TlsConnector::from(cfg),
            connect_timeout,
        })
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BindError> {
        let (vm, addr) = (self.vm.clone(), self.addr);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(BindError::Connect { vm, addr, source }),
            Err(_) => {
                return Err(BindError::ConnectTimeout {
                    vm,
                    addr,
                    after: self.connect_timeout,
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let handshake = self.tls.connect(self.server_name.clone(), tcp);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(BindError::Identity { vm, addr, source }),
            Err(_) => Err(BindError::ConnectTimeout {
                vm,
                addr,
                after: self.connect_timeout,
            }),
        }
    }

    /// OK once the VM is booted and its kata-agent accepts connections.
    pub async fn ping(&self) -> Result<(), BindError> {
        let mut s = self.connect().await?;
        call(&mut s, 1, SERVICE, PING, &[])
            .await
            .map_err(|source| BindError::Call {
                vm: self.vm.clone(),
                source,
            })
    }

    /// Sends the sandbox's configuration; OK once the forwarder applied
    /// it and serves the sandbox.
    pub async fn bind(&self, req: &BindRequest) -> Result<(), BindError> {
        let mut s = self.connect().await?;
        call(&mut s, 1, SERVICE, BIND, &req.to_bytes())
            .await
            .map_err(|source| BindError::Call {
                vm: self.vm.clone(),
                source,
            })
    }
}
