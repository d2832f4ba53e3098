//! Typed provider errors: what went wrong, the cloud's own words, and
//! whether trying again can help.

use std::fmt;

/// The class of a provider failure; decides retries and what the operator
/// is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The cloud asked us to slow down.
    Throttled,
    /// An account or project quota is used up.
    QuotaExceeded,
    /// The cloud has no capacity for this size here right now.
    InsufficientCapacity,
    /// The instance (or another named resource) does not exist.
    NotFound,
    /// The provider's configuration is wrong (image, subnet, credentials…).
    InvalidConfig,
    /// The request itself is invalid (bad size, empty id…).
    InvalidRequest,
    /// The credentials lack a permission.
    PermissionDenied,
    /// A passing failure: network error, 5xx, timeout.
    Transient,
    /// Anything else that will not get better by retrying.
    Permanent,
}

impl ErrorKind {
    /// Whether retrying the same call later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::InsufficientCapacity | ErrorKind::Transient
        )
    }

    /// Stable snake_case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::InsufficientCapacity => "insufficient_capacity",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// A provider failure carrying the cloud's code and message unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The cloud's own error code (`InsufficientInstanceCapacity`, `403`…).
    pub code: Option<String>,
    /// The cloud's own message, or ours where the cloud said nothing.
    pub message: String,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: message.into(),
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({}): {}", self.kind.as_str(), code, self.message),
            None => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_keeps_cloud_code_and_message() {
        let e = ProviderError::new(
            ErrorKind::InsufficientCapacity,
            "no m6a.large in us-east-1a",
        )
        .with_code("InsufficientInstanceCapacity");
        assert_eq!(
            e.to_string(),
            "insufficient_capacity (InsufficientInstanceCapacity): no m6a.large in us-east-1a"
        );
        assert!(e.retryable());
        assert!(!ProviderError::new(ErrorKind::InvalidConfig, "x").retryable());
    }
}
