//! The crate's error: every failure names the step that failed and keeps
//! libvirt's own code and message; [`Error::kind`] says whether a retry can
//! help.

use crate::xml::ParseError;
use peerpod_provider_api::{ErrorKind, ProviderError};
use std::io;
use virt::error::ErrorNumber;

/// A failure of the libvirt provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libvirt call failed.
    #[error("{step}: {message}")]
    Libvirt {
        step: String,
        code: ErrorNumber,
        message: String,
    },
    /// A file operation failed.
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
    /// A step outside libvirt failed (making the config drive).
    #[error("{step}: {why}")]
    Tool { step: String, why: String },
    /// libvirt handed back a document we could not read.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The network has no address left.
    #[error("{0}")]
    Exhausted(String),
}

impl Error {
    /// The provider error class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Libvirt { code, .. } => match code {
                ErrorNumber::NoDomain | ErrorNumber::NoStorageVolume => ErrorKind::NotFound,
                ErrorNumber::NoStoragePool
                | ErrorNumber::NoNetwork
                | ErrorNumber::XmlError
                | ErrorNumber::XmlDetail
                | ErrorNumber::NoSupport
                | ErrorNumber::ConfigUnsupported
                | ErrorNumber::InvalidArg => ErrorKind::InvalidConfig,
                ErrorNumber::AuthFailed
                | ErrorNumber::AuthCancelled
                | ErrorNumber::AuthUnavailable
                | ErrorNumber::OperationDenied
                | ErrorNumber::AccessDenied => ErrorKind::PermissionDenied,
                ErrorNumber::NoConnect
                | ErrorNumber::Rpc
                | ErrorNumber::SystemError
                | ErrorNumber::OperationTimeout
                | ErrorNumber::AgentUnresponsive
                | ErrorNumber::ResourceBusy => ErrorKind::Transient,
                _ => ErrorKind::Permanent,
            },
            Error::Io { source, .. } => match source.kind() {
                io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                io::ErrorKind::NotFound => ErrorKind::InvalidConfig,
                _ => ErrorKind::Transient,
            },
            Error::Tool { .. } | Error::Config(_) => ErrorKind::InvalidConfig,
            Error::Parse(_) => ErrorKind::Permanent,
            Error::Exhausted(_) => ErrorKind::InsufficientCapacity,
        }
    }

    /// Whether libvirt said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub fn into_provider_error(self, context: Option<&str>) -> ProviderError {
        let kind = self.kind();
        let code = match &self {
            Error::Libvirt { code, .. } => Some(format!("{code:?}")),
            _ => None,
        };
        let e = match context {
            Some(c) => ProviderError::new(kind, format!("{c}: {self}")),
            None => ProviderError::new(kind, self.to_string()),
        };
        match code {
            Some(c) => e.with_code(c),
            None => e,
        }
    }
}

impl From<Error> for ProviderError {
    fn from(e: Error) -> Self {
        e.into_provider_error(None)
    }
}

/// Names the step of a libvirt call.
pub trait Step<T> {
    fn step(self, step: impl Into<String>) -> Result<T, Error>;
}

impl<T> Step<T> for Result<T, virt::error::Error> {
    fn step(self, step: impl Into<String>) -> Result<T, Error> {
        self.map_err(|e| Error::Libvirt {
            step: step.into(),
            code: e.code(),
            message: e.message().to_string(),
        })
    }
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            step: step.into(),
            source,
        })
    }
}

/// The outcome of a `spawn_blocking` task, a panic reported as a failure
/// of `step`.
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
    fn kinds_keep_libvirt_code_and_message() {
        let e = Error::Libvirt {
            step: "look up domain podvm-x".into(),
            code: ErrorNumber::NoDomain,
            message: "Domain not found: no domain with matching name 'podvm-x'".into(),
        };
        assert!(e.is_not_found());
        let p = e.into_provider_error(Some("delete"));
        assert_eq!(p.kind, ErrorKind::NotFound);
        assert_eq!(p.code.as_deref(), Some("NoDomain"));
        assert!(p
            .message
            .starts_with("delete: look up domain podvm-x: Domain not found"));
        let e = Error::Libvirt {
            step: "open".into(),
            code: ErrorNumber::NoConnect,
            message: "Failed to connect socket".into(),
        };
        assert!(e.kind().retryable());
        let e = Error::Libvirt {
            step: "look up pool".into(),
            code: ErrorNumber::NoStoragePool,
            message: "no pool".into(),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    }
}
