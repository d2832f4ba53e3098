//! The HTTP endpoint for the kubelet and Prometheus: `/healthz` (the
//! process answers), `/readyz` (the hypervisor socket serves and the
//! recovery of persisted sandboxes finished) and `/metrics` (the text
//! exposition format of [`crate::metrics`]). Bound at start-up before
//! recovery, so liveness answers while a large node recovers.

use crate::manager::Manager;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Longest time a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probes report; shared with the daemon that fills it in.
#[derive(Default)]
pub struct ProbeState {
    ready: AtomicBool,
    manager: OnceLock<Arc<Manager>>,
}

impl ProbeState {
    /// Recovery finished and the hypervisor socket serves.
    pub fn set_ready(&self, manager: Arc<Manager>) {
        let _ = self.manager.set(manager);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Shutting down: no longer ready.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A running probe server; stops when dropped.
pub struct ProbeServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProbeServer {
    /// Binds `addr` (port 0: any free port) and serves in the background.
    pub async fn bind(addr: SocketAddr, state: Arc<ProbeState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, state));
        Ok(Self { addr, task })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<ProbeState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "probe endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "probe connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn answer<B>(state: &ProbeState, req: &Request<B>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN);
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n", PLAIN),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: recovering persisted sandboxes or shutting down\n",
            PLAIN,
        ),
        "/metrics" => match state.manager.get() {
            Some(m) => text(
                StatusCode::OK,
                m.metrics_text().await,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n", PLAIN),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /readyz, /metrics\n",
            PLAIN,
        ),
    }
}
