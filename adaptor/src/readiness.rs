//! Readiness: StartVM returns only after a `grpc.Health/Check` went end to
//! end (adaptor → forwarder → kata-agent). Attempts back off from 5 ms to
//! at most 100 ms, so a VM that comes up is noticed within a tenth of a
//! second. That costs nothing while the VM is still booting: an attempt
//! then either waits in its TCP connect (no host yet) or is refused at
//! once by the guest kernel. Each attempt closes its connection properly
//! (TLS `close_notify`), so the forwarder sees a clean end, not an error.

use crate::client::health_check_on;
use crate::upstream::{DialError, Upstream};
use peerpod_protocols::health::health_check_response::ServingStatus;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub const FIRST_BACKOFF: Duration = Duration::from_millis(5);
pub const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// One Health call may take this long before the attempt counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Closing the connection (TLS close_notify) may take this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The outcome of one Health check attempt.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("kata-agent did not answer the Health check through the forwarder: {0}")]
    Agent(String),
    #[error("kata-agent answered the Health check with status {0:?}")]
    NotServing(ServingStatus),
}

/// One Health check over a fresh connection, closed properly afterwards.
pub async fn check_once(up: &Upstream) -> Result<(), CheckError> {
    let mut stream = up.connect().await?;
    let answer =
        tokio::time::timeout(CHECK_TIMEOUT, health_check_on(&mut stream, CHECK_TIMEOUT)).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
    match answer {
        Ok(Ok(ServingStatus::SERVING)) => Ok(()),
        Ok(Ok(other)) => Err(CheckError::NotServing(other)),
        Ok(Err(e)) => Err(CheckError::Agent(e.to_string())),
        Err(_) => Err(CheckError::Agent(format!(
            "no answer within {CHECK_TIMEOUT:?}"
        ))),
    }
}

/// Why readiness was not reached.
#[derive(Debug, thiserror::Error)]
#[error("not ready after {attempts} attempts in {waited:?}; last error: {last}")]
pub struct NotReady {
    pub attempts: u32,
    pub waited: Duration,
    pub last: CheckError,
}

/// Retries [`check_once`] until it succeeds or `deadline` passes; returns
/// how long it took.
pub async fn wait_ready(up: &Upstream, deadline: Instant) -> Result<Duration, NotReady> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt =
            tokio::time::timeout(remaining.max(Duration::from_millis(1)), check_once(up)).await;
        let err = match attempt {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(e)) => e,
            Err(_) => CheckError::Agent("deadline reached during the attempt".into()),
        };
        tracing::trace!(attempt = attempts, error = %err, "not ready yet");
        if Instant::now() + backoff >= deadline {
            return Err(NotReady {
                attempts,
                waited: start.elapsed(),
                last: err,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
