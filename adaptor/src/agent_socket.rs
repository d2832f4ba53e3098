//! The per-sandbox agent socket (`<pods dir>/<id>/agent.ttrpc`): the shim
//! connects here and every connection is relayed, frame by frame, to the
//! pod VM's forwarder. A connection made before the VM is ready waits for
//! it; connections are never timed out for being quiet (long polls and
//! runtime-rs' read-only log connection are normal). When the socket is
//! closed (StopVM, a failed start), every call still waiting for its answer
//! gets `UNAVAILABLE` before its connection closes, so a caller with a
//! pending request (runtime-rs' GetOOMEvent) hears why.

use crate::upstream::Upstream;
use peerpod_relay::relay::RelayOutcome;
use peerpod_relay::{
    relay_connection_until, CreateContainerRewriter, RelayOptions, RequestRewriter,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What a caller whose request was in flight hears when the socket closes.
pub const CLOSED_REASON: &str =
    "the sandbox is stopping (StopVM or a failed start): its agent socket was closed";
/// How long closing the socket waits for its connections to answer their
/// callers and close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where connections go.
#[derive(Clone)]
pub enum Target {
    /// The VM is not ready yet: connections wait.
    Pending,
    /// Relay to this forwarder.
    Ready(Upstream),
    /// The sandbox failed or is stopping: connections are closed.
    Closed,
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is served by another live process; refusing to take it over")]
    InUse(PathBuf),
}

/// Binds a unix socket at `path`, removing a stale socket file but never
/// one that a live process still answers on.
pub fn bind_exclusive(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let l = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(l)
}

/// A served agent socket. Dropping it stops accepting and closes every
/// relayed connection, each after answering its waiting calls with
/// `UNAVAILABLE`.
pub struct AgentSocket {
    pub path: PathBuf,
    target: watch::Sender<Target>,
}

impl AgentSocket {
    /// Binds and starts serving.
    pub fn serve(path: &Path, target: Target, opts: RelayOptions) -> Result<Self, SocketError> {
        let listener = bind_exclusive(path)?;
        let (tx, rx) = watch::channel(target);
        tokio::spawn(accept_loop(listener, rx, opts));
        Ok(Self {
            path: path.to_path_buf(),
            target: tx,
        })
    }

    /// Points the socket at a ready forwarder (or closes it).
    pub fn set_target(&self, t: Target) {
        self.target.send_replace(t);
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        // The accept loop sees this, stops accepting and lets every
        // connection answer its waiting callers before it ends (not
        // aborted: that would cut the callers off without a word).
        self.target.send_replace(Target::Closed);
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(
    listener: UnixListener,
    mut target: watch::Receiver<Target>,
    opts: RelayOptions,
) {
    let rewriter: Arc<dyn RequestRewriter> = Arc::new(CreateContainerRewriter::default());
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle(stream, target.clone(), opts.clone(), rewriter.clone()));
                }
                Err(e) => {
                    tracing::warn!(sandbox = %opts.label, error = %e, "agent socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            changed = target.changed() => {
                if changed.is_err() || matches!(*target.borrow(), Target::Closed) {
                    break;
                }
            }
        }
    }
    drop(listener);
    // Each connection sees the same change, answers its waiting calls and
    // closes; whatever is still running after CLOSE_WAIT is aborted when
    // the set is dropped.
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_WAIT, all_done).await.is_err() {
        tracing::warn!(sandbox = %opts.label, left = conns.len(),
            "agent connections did not close in time after the socket was closed; cutting them");
    }
}

/// Completes when the socket is closed (or its owner is gone), with the
/// reason waiting callers are given.
async fn closed(mut target: watch::Receiver<Target>) -> String {
    loop {
        if matches!(*target.borrow_and_update(), Target::Closed) {
            break;
        }
        if target.changed().await.is_err() {
            break;
        }
    }
    CLOSED_REASON.to_string()
}

async fn handle(
    down: UnixStream,
    mut target: watch::Receiver<Target>,
    opts: RelayOptions,
    rewriter: Arc<dyn RequestRewriter>,
) {
    let up = loop {
        let current = target.borrow_and_update().clone();
        match current {
            Target::Ready(up) => break up,
            Target::Closed => return,
            Target::Pending => {
                if target.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    let stream = match up.connect().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox = %opts.label, error = %e, "cannot reach the pod VM; closing the shim's connection");
            return;
        }
    };
    let outcome =
        relay_connection_until(down, stream, opts.clone(), rewriter, closed(target)).await;
    match &outcome {
        RelayOutcome::Stopped { failed_requests } => {
            tracing::info!(sandbox = %opts.label, failed_requests, "agent connection closed with the socket; waiting calls were answered UNAVAILABLE");
        }
        // The caller cut a frame or sent bytes that are not ttrpc framing.
        RelayOutcome::DownstreamError(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            tracing::warn!(sandbox = %opts.label, error = %e, "closed an agent connection whose caller broke the ttrpc framing");
        }
        _ => tracing::debug!(sandbox = %opts.label, ?outcome, "agent connection ended"),
    }
}
