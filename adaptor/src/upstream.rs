//! Dialing a pod VM's forwarder: TCP to `<instance IP>:<port>`, then mutual
//! TLS with the instance name as server name (or plain TCP when the
//! operator turned TLS off).

use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A byte stream to the forwarder, TLS or not.
pub trait UpstreamStream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> UpstreamStream for T {}

/// Which step of reaching the forwarder failed (named in errors, so an
/// operator knows whether the VM, the network or TLS is at fault).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("forwarder at {addr} not reachable: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("forwarder at {addr} did not accept a TCP connection within {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with the forwarder at {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("instance name {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Everything needed to reach one sandbox's forwarder.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    /// TCP keepalive on every connection (see [`crate::keepalive`]).
    keepalive: Option<crate::keepalive::KeepaliveSettings>,
}

impl Upstream {
    pub fn new(
        addr: SocketAddr,
        instance_name: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Result<Self, DialError> {
        let server_name = ServerName::try_from(instance_name.to_string())
            .map_err(|_| DialError::ServerName(instance_name.to_string()))?;
        Ok(Self {
            addr,
            server_name,
            tls: tls.map(TlsConnector::from),
            connect_timeout,
            keepalive: None,
        })
    }

    /// Turns TCP keepalive on for the connections this upstream makes.
    pub fn with_keepalive(mut self, k: Option<crate::keepalive::KeepaliveSettings>) -> Self {
        self.keepalive = k;
        self
    }

    /// One connection to the forwarder.
    pub async fn connect(&self) -> Result<Box<dyn UpstreamStream>, DialError> {
        let addr = self.addr;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(DialError::Connect { addr, source }),
            Err(_) => {
                return Err(DialError::ConnectTimeout {
                    addr,
                    after: self.connect_timeout,
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(k) = &self.keepalive {
            if let Err(e) = crate::keepalive::apply(&tcp, k) {
                tracing::warn!(%addr, error = %e, "cannot turn TCP keepalive on");
            }
        }
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(c) => {
                let handshake = c.connect(self.server_name.clone(), tcp);
                match tokio::time::timeout(self.connect_timeout, handshake).await {
                    Ok(Ok(s)) => Ok(Box::new(s)),
                    Ok(Err(source)) => Err(DialError::Tls { addr, source }),
                    Err(_) => Err(DialError::Tls {
                        addr,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "handshake timed out",
                        ),
                    }),
                }
            }
        }
    }
}
