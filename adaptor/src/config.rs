//! The adaptor's settings (flags and env vars are mapped onto this in the
//! binary; see docs/configuration.md).

use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/peerpod/hypervisor.sock";
pub const DEFAULT_PODS_DIR: &str = "/run/peerpod/pods";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/peerpod";
/// StartVM's own bound when the shim sends no deadline.
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 180;

/// Everything the daemon needs besides its provider.
#[derive(Debug, Clone)]
pub struct AdaptorConfig {
    /// Unix socket of the remote hypervisor API.
    pub socket: PathBuf,
    /// Parent of the per-sandbox directories holding `agent.ttrpc`.
    pub pods_dir: PathBuf,
    /// Persisted state: sandbox records and the node CA.
    pub state_dir: PathBuf,
    /// This node's name, carried by every instance as its owner tag.
    pub node_name: String,
    /// This cluster's id, carried by every instance as an owner tag so two
    /// clusters with equal node names never collect each other's VMs
    /// (empty: instances carry no cluster tag).
    pub cluster_id: String,
    /// Mutual TLS to the forwarders (off only for debugging).
    pub tls: bool,
    /// The forwarder's TCP port in the VM.
    pub forwarder_port: u16,
    /// Longest StartVM wait when the caller gave no deadline (the shim's
    /// own timeout, when it sends one, is used if shorter).
    pub start_timeout: Duration,
    /// TCP connect / TLS handshake limit per attempt to reach a forwarder.
    pub connect_timeout: Duration,
    /// Largest ttrpc frame payload relayed.
    pub max_frame_bytes: u32,
    /// Longest instance name the provider accepts.
    pub instance_name_max: usize,
    /// UDP port of the pod network tunnels.
    pub vxlan_port: u16,
    /// First VXLAN id; each sandbox of this node takes the next free one.
    pub vni_base: u32,
    /// The node's address the VMs send tunnel traffic to (default: the
    /// source address of the default route).
    pub worker_ip: Option<std::net::IpAddr>,
    /// Most sandboxes this node runs at once (the Go adaptor's
    /// `PEERPODS_LIMIT_PER_NODE`); CreateVM beyond it is refused. `None`:
    /// no limit (a negative `PEERPODS_LIMIT_PER_NODE`).
    pub limit_per_node: Option<usize>,
    /// Most provider creates in flight at once (others queue).
    pub max_concurrent_creates: usize,
    /// Initdata for pods without the `cc_init_data` annotation (base64,
    /// as the annotation; the Go adaptor's `INITDATA`).
    pub initdata: Option<String>,
    /// Registry credentials (`auth.json`) every VM gets, only when the
    /// operator configured a file explicitly (never a default). Secret.
    pub registry_auth: Option<String>,
    /// Orphan VM collection.
    pub orphans: crate::orphans::OrphanPolicy,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (none: off).
    pub probe_addr: Option<std::net::SocketAddr>,
    /// Longest wait for one provider call before it is abandoned with a
    /// retryable error (zero: no limit); see [`crate::provider_timeout`].
    pub provider_timeout: Duration,
    /// The kubelet device plugin advertising `kata.peerpods.io/vm` (one
    /// device per allowed sandbox), when on; see docs/kubernetes.md.
    pub device_plugin: Option<peerpod_deviceplugin::Config>,
    /// The warm pool (off unless a key has a size); see [`crate::pool`].
    pub warm_pool: crate::pool::PoolSettings,
    /// The liveness watch over running sandboxes; see [`crate::liveness`].
    pub liveness: crate::liveness::LivenessSettings,
    /// TCP keepalive on the connections to the VMs (`None`: off); see
    /// [`crate::keepalive`].
    pub keepalive: Option<crate::keepalive::KeepaliveSettings>,
}

impl AdaptorConfig {
    /// Defaults for `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            pods_dir: DEFAULT_PODS_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            node_name: node_name.into(),
            cluster_id: String::new(),
            tls: true,
            forwarder_port: peerpod_vmconfig::DEFAULT_PORT,
            // Covers a slow cloud boot; the Go shim's own StartVM budget
            // is 60 s by default (often raised to 600 s), kubelet gives
            // CreateContainer 120 s: a shorter shim deadline always wins.
            start_timeout: Duration::from_secs(DEFAULT_START_TIMEOUT_SECS),
            connect_timeout: Duration::from_secs(3),
            max_frame_bytes: peerpod_relay::frame::DEFAULT_MAX_PAYLOAD,
            instance_name_max: 63,
            vxlan_port: peerpod_podnet::spec::DEFAULT_VXLAN_PORT,
            vni_base: peerpod_podnet::spec::DEFAULT_VNI_BASE,
            worker_ip: None,
            limit_per_node: Some(10),
            max_concurrent_creates: 8,
            initdata: None,
            registry_auth: None,
            orphans: crate::orphans::OrphanPolicy::default(),
            probe_addr: None,
            provider_timeout: Duration::from_secs(600),
            device_plugin: None,
            warm_pool: crate::pool::PoolSettings::default(),
            liveness: crate::liveness::LivenessSettings::default(),
            keepalive: Some(crate::keepalive::KeepaliveSettings::default()),
        }
    }

    /// The agent socket path returned by CreateVM.
    pub fn agent_socket(&self, sandbox_id: &str) -> PathBuf {
        self.pods_dir.join(sandbox_id).join("agent.ttrpc")
    }
}

/// Largest registry credentials file accepted.
pub const MAX_REGISTRY_AUTH_BYTES: u64 = 16 * 1024;

/// Reads the registry credentials file the operator configured: JSON, at
/// most 16 KiB. No path, no credentials: nothing on the node (such as the
/// node's own `auth.json`) is shipped to pod VMs unless asked for, since
/// every pod VM would get it. Per-pod image pull secrets come with the
/// Kubernetes integration. Errors name the file, never its content.
pub fn read_registry_auth(path: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("registry auth file {}: {e}", path.display()))?;
    if meta.len() > MAX_REGISTRY_AUTH_BYTES {
        return Err(format!(
            "registry auth file {} is {} bytes, more than {MAX_REGISTRY_AUTH_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("registry auth file {}: {e}", path.display()))?;
    if serde_json::from_str::<serde_json::Value>(&text).is_err() {
        return Err(format!(
            "registry auth file {} is not valid JSON (auth.json format expected)",
            path.display()
        ));
    }
    Ok(Some(text))
}

/// The host name, for the default node name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The daemon's three paths as flags, shared by `cloud-api-adaptor` and
/// `peerpodctl` so both read the same flags and env vars.
#[derive(Debug, Clone, clap::Args)]
pub struct PathArgs {
    /// Unix socket of the remote hypervisor API (the Kata shim calls it).
    #[arg(long, env = "PEERPOD_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Directory of the per-sandbox agent sockets (<dir>/<sandbox id>/agent.ttrpc).
    #[arg(long, env = "PEERPOD_PODS_DIR", default_value = DEFAULT_PODS_DIR, global = true)]
    pub pods_dir: PathBuf,
    /// Persisted state: sandbox records and the node CA.
    #[arg(long, env = "PEERPOD_STATE_DIR", default_value = DEFAULT_STATE_DIR, global = true)]
    pub state_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("auth.json");
        std::fs::write(&good, r#"{"auths":{"r.io":{"auth":"c2VjcmV0"}}}"#).unwrap();
        assert!(read_registry_auth(Some(&good))
            .unwrap()
            .unwrap()
            .contains("auths"));
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "user:c2VjcmV0").unwrap();
        let e = read_registry_auth(Some(&bad)).unwrap_err();
        assert!(
            e.contains("not valid JSON") && e.contains("bad.json"),
            "{e}"
        );
        assert!(!e.contains("c2VjcmV0"), "never the content: {e}");
        let e = read_registry_auth(Some(&d.path().join("none.json"))).unwrap_err();
        assert!(e.contains("none.json"), "{e}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_REGISTRY_AUTH_BYTES as usize + 1]).unwrap();
        assert!(read_registry_auth(Some(&big))
            .unwrap_err()
            .contains("bytes"));
        // Nothing configured: nothing read, wherever a file may lie.
        assert_eq!(read_registry_auth(None), Ok(None));
    }
}
