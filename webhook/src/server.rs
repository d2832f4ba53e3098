//! The HTTPS endpoint: `POST /mutate` (AdmissionReview v1), `GET /healthz`
//! (the process answers) and `GET /readyz` (serving with a CA the API
//! server trusts, and not shutting down). HTTP/1.1 over rustls; a bad
//! request gets a 4xx naming what was wrong and the server keeps serving.
//! Shutdown is graceful: open requests finish, idle connections close.

use crate::mutate::MutationConfig;
use crate::review::{answer, Outcome};
use crate::tls::{server_config, CertStore, TlsError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest review body accepted (the API server's own request limit is
/// 3 MiB; a review carries the object once, plus its old version on updates).
pub const MAX_BODY: usize = 8 << 20;
/// Longest TLS handshake / request header wait.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct State {
    pub mutation: MutationConfig,
    ready: AtomicBool,
}

impl State {
    pub fn new(mutation: MutationConfig) -> Arc<Self> {
        Arc::new(Self {
            mutation,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A running server; [`WebhookServer::shutdown`] stops it gracefully.
pub struct WebhookServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookServer {
    /// Binds `addr` (port 0: any free port) and serves with `certs`.
    pub async fn bind(
        addr: SocketAddr,
        certs: Arc<CertStore>,
        state: Arc<State>,
    ) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(certs)?);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, state, stopped));
        Ok(Self { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish for up to `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(
                ?grace,
                "requests still open after the grace period; closing them"
            );
            self.task.abort();
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = stopped.wait_for(|s| *s).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "webhook connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn reply(status: StatusCode, body: impl Into<Bytes>, json: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let ct = if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ct),
    );
    r
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => reply(StatusCode::OK, "ok\n", false),
        (&Method::GET | &Method::HEAD, "/readyz") if state.is_ready() => {
            reply(StatusCode::OK, "ready\n", false)
        }
        (&Method::GET | &Method::HEAD, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the caBundle is not in place yet, or shutting down\n",
            false,
        ),
        (&Method::POST, "/mutate") => mutate(state, req).await,
        (_, "/mutate") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview\n",
            false,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: POST /mutate, GET /healthz, GET /readyz\n",
            false,
        ),
    }
}

async fn mutate(state: &State, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("review larger than {MAX_BODY} bytes\n"),
                    false,
                )
            } else {
                reply(
                    StatusCode::BAD_REQUEST,
                    format!("reading the review: {e}\n"),
                    false,
                )
            };
        }
    };
    match answer(&body, &state.mutation) {
        Ok((out, outcome)) => {
            match &outcome {
                Outcome::Skipped(why) => tracing::debug!(why, "pod left unchanged"),
                Outcome::Mutated { ops } => tracing::debug!(ops, "peer pod mutated"),
                Outcome::Denied(m) => tracing::warn!(reason = %m, "peer pod denied"),
            }
            reply(StatusCode::OK, out, true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "malformed admission review");
            reply(
                StatusCode::BAD_REQUEST,
                format!("bad AdmissionReview: {e}\n"),
                false,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{service_names, WebhookCa};
    use rustls::pki_types::ServerName;

    /// The leaf certificate a fresh TLS connection is served.
    async fn served_cert(addr: SocketAddr, ca: &WebhookCa) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("w.ns.svc").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart() {
        let ca = WebhookCa::generate().unwrap();
        let names = service_names("w", "ns");
        let store = CertStore::new(ca.issue_serving(&names).unwrap());
        let server = WebhookServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            store.clone(),
            State::new(MutationConfig::default()),
        )
        .await
        .unwrap();
        let first = served_cert(server.local_addr(), &ca).await;
        assert_eq!(served_cert(server.local_addr(), &ca).await, first);
        store.replace(ca.issue_serving(&names).unwrap());
        let second = served_cert(server.local_addr(), &ca).await;
        assert_ne!(second, first, "new connections get the renewed certificate");
        server.shutdown(Duration::from_secs(1)).await;
    }
}
