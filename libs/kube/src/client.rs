//! When the daemons talk to Kubernetes and how they build the client: a
//! kubeconfig given on the command line wins; otherwise the in-cluster
//! service account (`KUBERNETES_SERVICE_HOST` set, as in every pod);
//! otherwise Kubernetes features are off (a node daemon run by hand).

use crate::KubeError;
use std::path::{Path, PathBuf};

/// The environment variable every pod gets; its presence means "in a cluster".
pub const IN_CLUSTER_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// Where the API server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAccess {
    /// The pod's service account token and CA.
    InCluster,
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
}

impl std::fmt::Display for KubeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeAccess::InCluster => f.write_str("in-cluster service account"),
            KubeAccess::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
        }
    }
}

/// Picks the access: the kubeconfig flag, else in-cluster when
/// `KUBERNETES_SERVICE_HOST` is set (and not empty), else none.
pub fn detect(kubeconfig: Option<&Path>) -> Option<KubeAccess> {
    detect_with(kubeconfig, std::env::var_os(IN_CLUSTER_ENV).as_deref())
}

fn detect_with(
    kubeconfig: Option<&Path>,
    service_host: Option<&std::ffi::OsStr>,
) -> Option<KubeAccess> {
    if let Some(p) = kubeconfig.filter(|p| !p.as_os_str().is_empty()) {
        return Some(KubeAccess::Kubeconfig(p.to_path_buf()));
    }
    service_host
        .filter(|h| !h.is_empty())
        .map(|_| KubeAccess::InCluster)
}

/// Builds a client for `access`. Nothing is sent to the server yet.
pub async fn client(access: &KubeAccess) -> Result<kube::Client, KubeError> {
    // kube's rustls connector takes the process-wide crypto provider;
    // several providers may be compiled in (the AWS SDK brings its own),
    // so say which one. Already set (by us or anyone) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match access {
        KubeAccess::InCluster => {
            kube::Config::incluster().map_err(|e| KubeError::InCluster(e.to_string()))?
        }
        KubeAccess::Kubeconfig(path) => {
            let bad = |message: String| KubeError::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
    };
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn kubeconfig_flag_wins_then_in_cluster_then_off() {
        let p = Path::new("/etc/kube.conf");
        assert_eq!(
            detect_with(Some(p), Some(OsStr::new("10.0.0.1"))),
            Some(KubeAccess::Kubeconfig(p.into()))
        );
        assert_eq!(
            detect_with(None, Some(OsStr::new("10.0.0.1"))),
            Some(KubeAccess::InCluster)
        );
        assert_eq!(detect_with(None, Some(OsStr::new(""))), None);
        assert_eq!(detect_with(Some(Path::new("")), None), None);
        assert_eq!(detect_with(None, None), None);
    }

    #[tokio::test]
    async fn unreadable_kubeconfig_names_the_file() {
        let Err(e) = client(&KubeAccess::Kubeconfig("/nonexistent/kubeconfig".into())).await else {
            panic!("a missing kubeconfig was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
    }
}
