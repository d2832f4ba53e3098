//! The controller's HTTP probe endpoint: `/healthz` (the process serves),
//! `/readyz` (same: a standby replica is ready, it waits for the Lease)
//! and `/leader` (200 while this replica leads, 503 otherwise), on hyper's
//! HTTP/1 server as the adaptor's probes.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A running endpoint; stops when dropped.
pub struct Probes {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(path: &str, leading: bool) -> Response<Full<Bytes>> {
    let (code, text) = match path {
        "/healthz" | "/readyz" => (StatusCode::OK, "ok\n"),
        "/leader" if leading => (StatusCode::OK, "leading\n"),
        "/leader" => (StatusCode::SERVICE_UNAVAILABLE, "standby\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}

impl Probes {
    pub async fn bind(addr: SocketAddr, leading: Arc<AtomicBool>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let leading = leading.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let l = leading.load(Ordering::SeqCst);
                            async move { Ok::<_, Infallible>(answer(req.uri().path(), l)) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_probe_tells_leader_from_standby() {
        assert_eq!(answer("/leader", true).status(), StatusCode::OK);
        assert_eq!(
            answer("/leader", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer("/healthz", false).status(), StatusCode::OK);
        assert_eq!(answer("/nope", true).status(), StatusCode::NOT_FOUND);
    }
}
