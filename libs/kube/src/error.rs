//! The one error type of this crate: which call to the API server failed
//! and why, with the server's own reason when it gave one.

/// What went wrong talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: no answer from the API server within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl KubeError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Api {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }
}

/// Runs one API call with a deadline, naming it in any error.
pub(crate) async fn call<T>(
    what: impl Fn() -> String,
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KubeError::Api {
            what: what(),
            source,
        }),
        Err(_) => Err(KubeError::Timeout {
            what: what(),
            secs: timeout.as_secs(),
        }),
    }
}
