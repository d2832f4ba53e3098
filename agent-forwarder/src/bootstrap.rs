//! A warm-pool VM's bootstrap service: until it is bound, the forwarder
//! answers only `peerpod.Bootstrap/Ping` (is the kata-agent up?) and
//! `peerpod.Bootstrap/Bind`, over mutual TLS with the one-time bootstrap
//! identity from its user data (so only the adaptor that created it — the
//! holder of a node-CA client certificate — can bind it). A Bind carries
//! the sandbox's per-pod configuration: the forwarder builds the pod
//! network, writes the bound config over its own (a restart inside the VM
//! then serves the sandbox), writes the registry credentials, and switches
//! to relaying the agent API with the sandbox's certificate. Every other
//! request gets FAILED_PRECONDITION: no agent call reaches the kata-agent
//! of an unbound VM.

use crate::{serving, Forwarder, Mode};
use peerpod_relay::bootstrap::{read_request, write_response};
use peerpod_vmconfig::bind::{BindRequest, BIND, PING, SERVICE};
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};
use ttrpc::Code;

/// Largest bootstrap request accepted.
const MAX_REQUEST: u32 = peerpod_vmconfig::MAX_DOCUMENT_BYTES as u32;

type Outcome = Result<(), (Code, String)>;

/// Serves one bootstrap connection until the peer closes it or a Bind
/// succeeds (the connection is then closed: the adaptor dials again with
/// the sandbox's identity).
pub(crate) async fn serve_connection<S>(fwd: &Forwarder, mut s: S, peer: SocketAddr, pool_vm: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let req = match read_request(&mut s, MAX_REQUEST).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bootstrap connection: unreadable request; closing");
                return;
            }
        };
        let (outcome, bound) = match (req.service.as_str(), req.method.as_str()) {
            (SERVICE, PING) => (ping(fwd).await, false),
            (SERVICE, BIND) => {
                let r = apply_bind(fwd, &req.payload).await;
                let ok = r.is_ok();
                (r, ok)
            }
            (svc, method) => {
                tracing::info!(%peer, service = svc, method, "refused a call: this pod VM is not bound to a sandbox yet");
                (
                    Err((
                        Code::FAILED_PRECONDITION,
                        format!(
                            "pod VM {pool_vm} is in the warm pool and not bound to a sandbox: \
                             {svc}/{method} is not served"
                        ),
                    )),
                    false,
                )
            }
        };
        if let Err(e) = write_response(&mut s, req.stream_id, outcome).await {
            tracing::warn!(%peer, error = %e, "bootstrap connection: cannot answer");
            return;
        }
        if bound {
            return;
        }
    }
}

async fn ping(fwd: &Forwarder) -> Outcome {
    match tokio::net::UnixStream::connect(&fwd.agent_socket).await {
        Ok(_) => Ok(()),
        Err(e) => Err((
            Code::UNAVAILABLE,
            format!(
                "kata-agent at {} is not reachable yet: {e}",
                fwd.agent_socket.display()
            ),
        )),
    }
}

fn write_private(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    peerpod_fsutil::write_atomic(path, &bytes, 0o600)
}

async fn apply_bind(fwd: &Forwarder, payload: &[u8]) -> Outcome {
    let _one = fwd.bind.lock.lock().await;
    if matches!(fwd.mode(), Mode::Serving(_)) {
        return Err((
            Code::FAILED_PRECONDITION,
            "this pod VM is already bound to a sandbox".into(),
        ));
    }
    let started = std::time::Instant::now();
    let req = BindRequest::parse(payload)
        .map_err(|e| (Code::INVALID_ARGUMENT, format!("bind request: {e}")))?;
    let mut cfg = req.forwarder;
    // The VM's own listen address and agent socket stay.
    if let Ok(addr) = fwd.listener.local_addr() {
        cfg.listen = addr.to_string();
    }
    cfg.agent_socket = fwd.agent_socket.clone();
    // Material we cannot use is refused before anything changes.
    serving(&cfg, None, fwd.counters.clone())
        .map_err(|e| (Code::INVALID_ARGUMENT, e.to_string()))?;
    let netns = crate::setup_pod_network(&cfg, &fwd.bind.pod_netns)
        .await
        .map_err(|e| (Code::INTERNAL, e.to_string()))?;
    let dir = fwd
        .bind
        .config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    // The registry credentials are in place before the agent can be
    // asked to pull an image.
    if let (Some(dir), Some(auth)) = (dir, req.registry_auth.clone()) {
        let name = Path::new(peerpod_vmconfig::userdata::AUTH_JSON_PATH)
            .file_name()
            .unwrap_or_default()
            .to_owned();
        let written =
            tokio::task::spawn_blocking(move || write_private(&dir.join(name), auth.into_bytes()))
                .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((Code::INTERNAL, format!("writing auth.json: {e}"))),
            Err(e) => return Err((Code::INTERNAL, format!("writing auth.json: {e}"))),
        }
    }
    let s = serving(&cfg, netns, fwd.counters.clone())
        .map_err(|e| (Code::INVALID_ARGUMENT, e.to_string()))?;
    match fwd.mode.write() {
        Ok(mut m) => *m = Mode::Serving(s),
        Err(p) => *p.into_inner() = Mode::Serving(s),
    }
    // The bound config replaces the bootstrap one on disk, so a forwarder
    // restarted in this VM serves the sandbox. Written after the switch,
    // off StartVM's path (an fsync is milliseconds): a restart before it
    // lands comes back in bootstrap mode, where the adaptor can no longer
    // reach it and its liveness watch marks the sandbox failed.
    if let Some(path) = fwd.bind.config_path.clone() {
        let bytes = cfg.to_bytes();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_private(&path, bytes) {
                tracing::warn!(path = %path.display(), error = %e, "cannot persist the bound config");
            }
        });
    }
    tracing::info!(
        sandbox = %cfg.sandbox_id,
        pod = %req.pod_name,
        namespace = %req.pod_namespace,
        took = ?started.elapsed(),
        "bound to a sandbox: serving the agent API"
    );
    Ok(())
}
