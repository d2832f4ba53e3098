//! Typed pod-network errors: each names the step and the namespace or
//! device it was about, and keeps the kernel's errno when the kernel said no.

/// A pod-network failure.
#[derive(Debug, thiserror::Error)]
pub enum PodnetError {
    /// The kernel (or the netlink socket) refused a step.
    #[error("{step}: {detail}")]
    Netlink {
        step: String,
        detail: String,
        errno: Option<i32>,
    },
    /// A network namespace could not be opened, entered or created.
    #[error("network namespace {path}: {detail}")]
    Netns { path: String, detail: String },
    /// The pod's network is not something we can carry (no address, no
    /// default route, no interface…), or a spec is invalid.
    #[error("pod network: {0}")]
    Unsupported(String),
    /// Every VNI of the configured range is held by a sandbox.
    #[error("no free VXLAN id: all {0} ids from the configured base are in use")]
    VniExhausted(u32),
}

impl PodnetError {
    pub(crate) fn netns(path: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        PodnetError::Netns {
            path: path.to_string(),
            detail: e.to_string(),
        }
    }

    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PodnetError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }
}
