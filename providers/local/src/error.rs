//! The crate's internal error: every failure names the step that failed
//! (`create veth ppl1a2b3c4d5e: File exists (os error 17)`) and maps to a
//! [`ProviderError`] whose kind says whether retrying can help.

use crate::link::LinkError;
use peerpod_provider_api::{ErrorKind, ProviderError};
use std::io;

/// A failure of the local provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
    /// A binary could not be started (missing, not executable, bad
    /// interpreter): the configuration names a broken program.
    #[error("{step}: {source}")]
    Spawn {
        step: String,
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// We lack a privilege the provider needs.
    #[error("{0}")]
    Privilege(String),
    /// Every address of the subnet is taken.
    #[error("{0}")]
    Full(String),
}

fn errno_kind(errno: Option<i32>) -> ErrorKind {
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => ErrorKind::PermissionDenied,
        _ => ErrorKind::Transient,
    }
}

impl Error {
    /// The provider error class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } => errno_kind(source.raw_os_error()),
            Error::Spawn { source, .. } => match source.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EACCES) | Some(libc::ENOEXEC)
                | Some(libc::ENOTDIR) => ErrorKind::InvalidConfig,
                other => errno_kind(other),
            },
            Error::Link(e) => errno_kind(e.errno),
            Error::Config(_) => ErrorKind::InvalidConfig,
            Error::Privilege(_) => ErrorKind::PermissionDenied,
            Error::Full(_) => ErrorKind::InsufficientCapacity,
        }
    }

    /// Prefixes the message with context (e.g. the instance id), keeping
    /// the kind.
    pub fn into_provider_error(self, context: Option<&str>) -> ProviderError {
        let kind = self.kind();
        match context {
            Some(c) => ProviderError::new(kind, format!("{c}: {self}")),
            None => ProviderError::new(kind, self.to_string()),
        }
    }
}

impl From<Error> for ProviderError {
    fn from(e: Error) -> Self {
        e.into_provider_error(None)
    }
}

/// Names the step of an `io::Result`.
pub trait Step<T> {
    fn step(self, step: impl Into<String>) -> Result<T, Error>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            step: step.into(),
            source,
        })
    }
}

/// The outcome of a `spawn_blocking` task, with a panic or cancellation
/// reported as a failure of `step`.
pub fn joined<T>(
    r: Result<Result<T, Error>, tokio::task::JoinError>,
    step: &str,
) -> Result<T, Error> {
    r.map_err(|e| Error::Io {
        step: step.to_string(),
        source: io::Error::other(e.to_string()),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_errno() {
        let e = Err::<(), _>(io::Error::from_raw_os_error(libc::EPERM))
            .step("create network namespace pplocal-x")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e
            .to_string()
            .starts_with("create network namespace pplocal-x: "));
        let e = Error::Spawn {
            step: "start forwarder /nope".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let p = e.into_provider_error(Some("instance l0123456789"));
        assert_eq!(p.kind, ErrorKind::InvalidConfig);
        assert!(
            p.message
                .starts_with("instance l0123456789: start forwarder /nope: "),
            "{}",
            p.message
        );
        assert_eq!(
            Error::Full("x".into()).kind(),
            ErrorKind::InsufficientCapacity
        );
        let e = Err::<(), _>(io::Error::from_raw_os_error(libc::EEXIST))
            .step("s")
            .unwrap_err();
        assert!(e.kind().retryable());
    }
}
