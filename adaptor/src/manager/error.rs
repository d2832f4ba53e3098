//! What the manager's calls can fail with, the ttrpc status each failure
//! gives the shim, the names of the StartVM phases errors carry, and the
//! sandbox id rules checked before an id is used in paths and tags.

use crate::agent_socket::SocketError;
use crate::annotations::AnnotationError;
use crate::ca::CaError;
use crate::state::StoreError;
use peerpod_provider_api::ProviderError;

/// Longest accepted sandbox id (containerd uses 64 hex characters).
const MAX_ID_LEN: usize = 128;

/// What went wrong, with the ttrpc code the shim gets.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("invalid sandbox id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("CreateVM {id}: {source}")]
    Annotation { id: String, source: AnnotationError },
    #[error("CreateVM {id}: sandbox id is already in use (phase {phase})")]
    Duplicate { id: String, phase: &'static str },
    #[error(
        "CreateVM {id}: this node already runs {limit} peer pods, its limit \
         (PEERPODS_LIMIT_PER_NODE); stop one or raise the limit"
    )]
    NodeFull { id: String, limit: usize },
    #[error("StartVM {0}: no such sandbox (CreateVM was not called, or it was stopped)")]
    Unknown(String),
    #[error("StartVM {id}: sandbox is {phase}, not created")]
    WrongPhase { id: String, phase: &'static str },
    #[error("StartVM {id} failed in phase \"{phase}\": {message}")]
    Start {
        id: String,
        phase: &'static str,
        message: String,
        provider_error: Option<ProviderError>,
    },
    #[error("StartVM {id}: stopped by StopVM before it was ready")]
    Cancelled { id: String },
    #[error("persisting sandbox state: {0}")]
    Store(#[from] StoreError),
    #[error("agent socket: {0}")]
    Socket(#[from] SocketError),
    #[error("node CA: {0}")]
    Ca(#[from] CaError),
    #[error("CreateVM {id}: {source}")]
    Network {
        id: String,
        source: peerpod_podnet::PodnetError,
    },
    #[error("pod network settings: {0}")]
    NetworkConfig(peerpod_podnet::PodnetError),
    #[error("warm pool state: {0}")]
    Pool(#[from] crate::pool::PoolStoreError),
    #[error("warm pool settings: {0}")]
    PoolConfig(String),
}

impl ManagerError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        use peerpod_provider_api::ErrorKind as K;
        match self {
            ManagerError::InvalidId { .. } | ManagerError::Annotation { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ManagerError::Duplicate { .. } => ttrpc::Code::ALREADY_EXISTS,
            ManagerError::NodeFull { .. } => ttrpc::Code::RESOURCE_EXHAUSTED,
            ManagerError::Unknown(_) => ttrpc::Code::NOT_FOUND,
            ManagerError::WrongPhase { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ManagerError::Cancelled { .. } => ttrpc::Code::CANCELLED,
            ManagerError::Start {
                provider_error,
                phase,
                ..
            } => match provider_error.as_ref().map(|e| e.kind) {
                Some(K::Throttled | K::QuotaExceeded | K::InsufficientCapacity) => {
                    ttrpc::Code::RESOURCE_EXHAUSTED
                }
                Some(K::InvalidConfig | K::InvalidRequest) => ttrpc::Code::INVALID_ARGUMENT,
                Some(K::PermissionDenied) => ttrpc::Code::PERMISSION_DENIED,
                Some(K::NotFound) => ttrpc::Code::NOT_FOUND,
                Some(K::Transient) => ttrpc::Code::UNAVAILABLE,
                Some(K::Permanent) => ttrpc::Code::FAILED_PRECONDITION,
                // Readiness, or a create abandoned at the StartVM deadline.
                None if *phase == PHASE_READY || *phase == PHASE_CREATE => {
                    ttrpc::Code::DEADLINE_EXCEEDED
                }
                None => ttrpc::Code::INTERNAL,
            },
            ManagerError::Network { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ManagerError::Store(_)
            | ManagerError::Socket(_)
            | ManagerError::Ca(_)
            | ManagerError::NetworkConfig(_)
            | ManagerError::Pool(_) => ttrpc::Code::INTERNAL,
            ManagerError::PoolConfig(_) => ttrpc::Code::INVALID_ARGUMENT,
        }
    }
}

pub const PHASE_CREATE: &str = "provider create";
pub const PHASE_READY: &str = "agent ready";
pub const PHASE_CONFIG: &str = "VM config";
pub const PHASE_NETWORK: &str = "pod network";
/// Binding a warm pool VM to the sandbox (a failure falls back to a cold start).
pub const PHASE_BIND: &str = "pool bind";

/// Checks a sandbox id before it is used in paths and tags.
pub fn check_sandbox_id(id: &str) -> Result<(), ManagerError> {
    let bad = |why| {
        Err(ManagerError::InvalidId {
            id: id.chars().take(MAX_ID_LEN).collect(),
            why,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 128 characters");
    }
    if id.starts_with('.') {
        return bad("starts with a dot");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_id_rules() {
        check_sandbox_id("a1b2c3-d_e.f").unwrap();
        for bad in ["", "../etc", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            let e = check_sandbox_id(bad).unwrap_err().to_string();
            assert!(e.contains("invalid sandbox id"), "{bad}: {e}");
        }
    }
}
