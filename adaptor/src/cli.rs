//! The daemon's global flags (every provider shares them), with their env
//! var fallbacks, and how they become an [`AdaptorConfig`]. Provider flags
//! live with each provider (`providers/<p>/src/cli.rs`); the binary only
//! joins the two.

use crate::config::{hostname, read_registry_auth, AdaptorConfig, PathArgs};
use crate::orphans::OrphanPolicy;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// A global flag with a value the daemon cannot use.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{flag}: {why}")]
    Invalid { flag: &'static str, why: String },
}

fn invalid(flag: &'static str, why: impl Into<String>) -> CliError {
    CliError::Invalid {
        flag,
        why: why.into(),
    }
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    #[command(flatten)]
    pub kube: crate::kube::KubeArgs,
    /// This node's name, the owner tag on every instance (default: host name).
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// This cluster's id, an owner tag on every instance so two clusters with
    /// equal node names never collect each other's VMs (default: none).
    #[arg(long, env = "PEERPOD_CLUSTER_ID", global = true)]
    pub cluster_id: Option<String>,
    /// Turn mutual TLS to the pod VMs off. For debugging only: agent traffic is then unauthenticated.
    #[arg(long, env = "PEERPOD_NO_TLS", global = true)]
    pub no_tls: bool,
    /// TCP port of the forwarder in the pod VM.
    #[arg(long, env = "FORWARDER_PORT", default_value_t = peerpod_vmconfig::DEFAULT_PORT, global = true)]
    pub forwarder_port: u16,
    /// Longest StartVM wait in seconds when the shim sends no deadline.
    #[arg(
        long,
        env = "PEERPOD_START_TIMEOUT",
        default_value_t = crate::config::DEFAULT_START_TIMEOUT_SECS,
        global = true
    )]
    pub start_timeout: u64,
    /// Largest ttrpc frame payload relayed, in bytes.
    #[arg(long, env = "PEERPOD_MAX_FRAME_BYTES", default_value_t = peerpod_relay::frame::DEFAULT_MAX_PAYLOAD, global = true)]
    pub max_frame_bytes: u32,
    /// UDP port of the pod network tunnels (VXLAN), on the node and in the VMs.
    #[arg(long, env = "VXLAN_PORT", default_value_t = peerpod_podnet::spec::DEFAULT_VXLAN_PORT, global = true)]
    pub vxlan_port: u16,
    /// First VXLAN id of this node; each sandbox takes the lowest free id from here.
    #[arg(long, env = "VXLAN_MIN_ID", default_value_t = peerpod_podnet::spec::DEFAULT_VNI_BASE, global = true)]
    pub vxlan_min_id: u32,
    /// This node's address the pod VMs send tunnel traffic to (default: the source address of the default route).
    #[arg(long, env = "PEERPOD_WORKER_IP", global = true)]
    pub worker_ip: Option<std::net::IpAddr>,
    /// Most peer pods this node runs at once; CreateVM beyond it fails with RESOURCE_EXHAUSTED (negative: no limit).
    #[arg(
        long,
        env = "PEERPODS_LIMIT_PER_NODE",
        default_value_t = 10,
        allow_negative_numbers = true,
        global = true
    )]
    pub limit_per_node: i64,
    /// Most provider create calls in flight at once (more wait their turn).
    #[arg(
        long,
        env = "PEERPOD_MAX_CONCURRENT_CREATES",
        default_value_t = 8,
        global = true
    )]
    pub max_concurrent_creates: usize,
    /// Initdata (base64, as the cc_init_data annotation) for pods that carry none.
    #[arg(long, env = "INITDATA", global = true)]
    pub initdata: Option<String>,
    /// Registry credentials (auth.json) given to every pod VM; none unless set (the node's own auth.json is never shipped).
    #[arg(long, env = "PEERPOD_REGISTRY_AUTH_FILE", global = true)]
    pub registry_auth_file: Option<PathBuf>,
    /// Seconds between orphan VM collection passes (0: only at start-up).
    #[arg(
        long,
        env = "PEERPOD_ORPHAN_INTERVAL",
        default_value_t = 300,
        global = true
    )]
    pub orphan_interval: u64,
    /// Seconds an instance must be seen without a sandbox before it is deleted.
    #[arg(
        long,
        env = "PEERPOD_ORPHAN_GRACE",
        default_value_t = 300,
        global = true
    )]
    pub orphan_grace: u64,
    /// Address of the HTTP probe endpoint (/healthz, /readyz, /metrics); "off" turns it off. Only this host can reach the default; 0.0.0.0:8000 opens it to the network.
    #[arg(
        long,
        env = "PEERPOD_PROBE_LISTEN",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub probe_listen: String,
    /// Log orphan VMs instead of deleting them.
    #[arg(long, env = "PEERPOD_ORPHAN_DRY_RUN", global = true)]
    pub orphan_dry_run: bool,
    /// Seconds one provider call (create, delete, list) may take before it is abandoned and retried (0: no limit).
    #[arg(
        long,
        env = "PEERPOD_PROVIDER_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    pub provider_timeout: u64,
    /// Advertise the node's peer pod slots (kata.peerpods.io/vm, one per --limit-per-node) to the kubelet as a device plugin: on, off, or auto (on when the device plugin directory exists).
    #[arg(
        long,
        env = "PEERPOD_DEVICE_PLUGIN",
        default_value = "auto",
        global = true
    )]
    pub device_plugin: String,
    /// The kubelet's device plugin directory (its kubelet.sock, and our socket beside it).
    #[arg(
        long,
        env = "PEERPOD_DEVICE_PLUGIN_DIR",
        default_value = peerpod_deviceplugin::DEFAULT_DIR,
        global = true
    )]
    pub device_plugin_dir: PathBuf,
    /// Booted pod VMs kept waiting for the default pool key (0: no warm pool).
    #[arg(long, env = "PEERPODS_WARM_POOL", default_value_t = 0, global = true)]
    pub warm_pool: usize,
    /// More warm pool keys: `;`-separated lists of machine_type=, vcpus=, memory=, image=, initdata=default|none|<file>, size=.
    #[arg(long, env = "PEERPODS_WARM_POOL_KEYS", global = true)]
    pub warm_pool_keys: Option<String>,
    /// Most pool VM creates started per minute.
    #[arg(
        long,
        env = "PEERPODS_WARM_POOL_CREATES_PER_MINUTE",
        default_value_t = 60,
        global = true
    )]
    pub warm_pool_creates_per_minute: u32,
    /// Seconds a new pool VM may take to answer its first Ping before it is deleted.
    #[arg(
        long,
        env = "PEERPODS_WARM_POOL_BOOT_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    pub warm_pool_boot_timeout: u64,
    /// Delete every warm pool VM of this node and exit (uninstall).
    #[arg(long, global = true)]
    pub drain_pool: bool,
    /// Seconds between liveness Health checks of each running sandbox (0: off).
    #[arg(
        long,
        env = "PEERPOD_LIVENESS_INTERVAL",
        default_value_t = 30,
        global = true
    )]
    pub liveness_interval: u64,
    /// Consecutive failed liveness checks after which a sandbox is marked failed.
    #[arg(
        long,
        env = "PEERPOD_LIVENESS_FAILURES",
        default_value_t = 3,
        global = true
    )]
    pub liveness_failures: u32,
    /// Seconds a connection to a VM is idle before TCP keepalive probes it (0: keepalive off).
    #[arg(
        long,
        env = "PEERPOD_KEEPALIVE_IDLE",
        default_value_t = 30,
        global = true
    )]
    pub keepalive_idle: u64,
    /// Seconds between TCP keepalive probes.
    #[arg(
        long,
        env = "PEERPOD_KEEPALIVE_INTERVAL",
        default_value_t = 10,
        global = true
    )]
    pub keepalive_interval: u64,
    /// Unanswered keepalive probes before the connection is dropped.
    #[arg(
        long,
        env = "PEERPOD_KEEPALIVE_COUNT",
        default_value_t = 3,
        global = true
    )]
    pub keepalive_count: u32,
    /// Check the provider's configuration, print what was checked, and exit.
    #[arg(long, global = true)]
    pub check: bool,
    /// Delete every pod VM tagged with this cluster's id (--cluster-id), on every node, then exit: the Helm chart's uninstall hook.
    #[arg(long, global = true, conflicts_with = "check")]
    pub delete_cluster_vms: bool,
}

/// Warns when instances get no cluster tag (call once the cluster id is
/// final: in a cluster it defaults to the kube-system namespace's uid).
pub fn warn_without_cluster_id(cfg: &AdaptorConfig) {
    if cfg.cluster_id.is_empty() {
        tracing::warn!(
            "no cluster id (--cluster-id / PEERPOD_CLUSTER_ID, or running in a cluster): \
             instances are tagged with the node name only, so another cluster with a node of \
             the same name would collect this node's VMs as orphans"
        );
    }
}

impl GlobalArgs {
    /// The daemon's configuration from these flags.
    pub fn into_config(self) -> Result<AdaptorConfig, CliError> {
        let mut cfg = AdaptorConfig::new(self.node_name.unwrap_or_else(hostname));
        cfg.cluster_id = self
            .cluster_id
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        cfg.socket = self.paths.socket;
        cfg.pods_dir = self.paths.pods_dir;
        cfg.state_dir = self.paths.state_dir;
        cfg.tls = !self.no_tls;
        cfg.forwarder_port = self.forwarder_port;
        cfg.start_timeout = Duration::from_secs(self.start_timeout);
        cfg.max_frame_bytes = self.max_frame_bytes;
        cfg.vxlan_port = self.vxlan_port;
        cfg.vni_base = self.vxlan_min_id;
        cfg.worker_ip = self.worker_ip;
        cfg.limit_per_node = usize::try_from(self.limit_per_node).ok();
        cfg.device_plugin = device_plugin(
            &self.device_plugin,
            self.device_plugin_dir,
            self.limit_per_node,
        )?;
        cfg.probe_addr = match self.probe_listen.trim() {
            "" | "off" => None,
            a => Some(a.parse().map_err(|_| {
                invalid(
                    "--probe-listen / PEERPOD_PROBE_LISTEN",
                    format!("{a:?}: expected host:port (e.g. 127.0.0.1:8000) or \"off\""),
                )
            })?),
        };
        cfg.orphans = OrphanPolicy {
            interval: Duration::from_secs(self.orphan_interval),
            grace: Duration::from_secs(self.orphan_grace),
            dry_run: self.orphan_dry_run,
        };
        if let Some(i) = self.initdata.filter(|i| !i.trim().is_empty()) {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(i.trim())
                .map_err(|e| invalid("INITDATA", format!("not valid base64: {e}")))?;
            cfg.initdata = Some(i.trim().to_string());
        }
        cfg.registry_auth = read_registry_auth(self.registry_auth_file.as_deref())
            .map_err(|e| invalid("--registry-auth-file / PEERPOD_REGISTRY_AUTH_FILE", e))?;
        cfg.max_concurrent_creates = self.max_concurrent_creates;
        cfg.provider_timeout = Duration::from_secs(self.provider_timeout);
        let keys = crate::pool::key::parse_keys(
            self.warm_pool,
            cfg.initdata.as_deref(),
            self.warm_pool_keys.as_deref().unwrap_or(""),
        )
        .map_err(|e| invalid("PEERPODS_WARM_POOL_KEYS", e.to_string()))?;
        if self.warm_pool_creates_per_minute == 0 {
            return Err(invalid(
                "--warm-pool-creates-per-minute / PEERPODS_WARM_POOL_CREATES_PER_MINUTE",
                "must be at least 1",
            ));
        }
        cfg.warm_pool = crate::pool::PoolSettings {
            keys,
            creates_per_minute: self.warm_pool_creates_per_minute,
            boot_timeout: Duration::from_secs(self.warm_pool_boot_timeout),
        };
        if cfg.warm_pool.enabled() && !cfg.tls {
            return Err(invalid(
                "PEERPODS_WARM_POOL",
                "the warm pool needs TLS (a pool VM is bound over mutual TLS with its \
                 one-time identity); do not combine it with --no-tls",
            ));
        }
        cfg.liveness = crate::liveness::LivenessSettings {
            interval: Duration::from_secs(self.liveness_interval),
            failures: self.liveness_failures.max(1),
        };
        cfg.keepalive = (self.keepalive_idle > 0).then(|| crate::keepalive::KeepaliveSettings {
            idle: Duration::from_secs(self.keepalive_idle),
            interval: Duration::from_secs(self.keepalive_interval.max(1)),
            count: self.keepalive_count.max(1),
        });
        Ok(cfg)
    }
}

/// The device plugin setting: `on`, `off` or `auto` (on when `dir`
/// exists, i.e. on a Kubernetes node with the directory mounted). A
/// negative limit advertises nothing, so no plugin either way.
fn device_plugin(
    mode: &str,
    dir: PathBuf,
    limit: i64,
) -> Result<Option<peerpod_deviceplugin::Config>, CliError> {
    let on = match mode.trim().to_ascii_lowercase().as_str() {
        "on" | "true" => true,
        "off" | "false" => false,
        "auto" | "" => dir.is_dir(),
        other => {
            return Err(invalid(
                "--device-plugin / PEERPOD_DEVICE_PLUGIN",
                format!("{other:?}: expected on, off or auto"),
            ))
        }
    };
    if !on {
        return Ok(None);
    }
    if limit < 0 {
        tracing::info!("negative PEERPODS_LIMIT_PER_NODE: no device plugin, nothing advertised");
        return Ok(None);
    }
    Ok(Some(peerpod_deviceplugin::Config::new(dir, limit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        g: GlobalArgs,
    }

    fn parse(args: &[&str]) -> Result<AdaptorConfig, CliError> {
        let mut v = vec!["t", "--node-name", "n1"];
        v.extend_from_slice(args);
        T::try_parse_from(v).unwrap().g.into_config()
    }

    #[test]
    fn defaults_are_safe() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.limit_per_node, Some(10));
        assert_eq!(c.probe_addr, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(c.cluster_id, "");
        assert_eq!(c.start_timeout, Duration::from_secs(180));
        assert!(!c.warm_pool.enabled());
        assert_eq!(c.liveness.interval, Duration::from_secs(30));
        assert_eq!(
            c.keepalive.map(|k| k.detection_time()),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn warm_pool_flags() {
        let c = parse(&["--warm-pool", "3", "--warm-pool-keys", "vcpus=2,size=1"]).unwrap();
        assert!(c.warm_pool.enabled());
        assert_eq!(c.warm_pool.keys.len(), 2);
        assert_eq!(c.warm_pool.keys[0].size, 3);
        assert_eq!(c.warm_pool.keys[1].key.vcpus, Some(2));
        let e = parse(&["--warm-pool-keys", "vcpus=x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PEERPODS_WARM_POOL_KEYS") && e.contains("vcpus"),
            "{e}"
        );
        let e = parse(&["--warm-pool", "1", "--no-tls"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs TLS"), "{e}");
        assert_eq!(parse(&["--keepalive-idle", "0"]).unwrap().keepalive, None);
    }

    #[test]
    fn negative_limit_means_none() {
        assert_eq!(
            parse(&["--limit-per-node", "-1"]).unwrap().limit_per_node,
            None
        );
        assert_eq!(
            parse(&["--limit-per-node", "0"]).unwrap().limit_per_node,
            Some(0)
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--probe-listen", "nowhere"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PEERPOD_PROBE_LISTEN") && e.contains("nowhere"),
            "{e}"
        );
        let e = parse(&["--initdata", "%%%"]).unwrap_err().to_string();
        assert!(e.contains("INITDATA"), "{e}");
        assert_eq!(parse(&["--cluster-id", " c1 "]).unwrap().cluster_id, "c1");
        let e = parse(&["--device-plugin", "maybe"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PEERPOD_DEVICE_PLUGIN") && e.contains("maybe"),
            "{e}"
        );
    }

    #[test]
    fn device_plugin_on_off_auto() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let missing = d.path().join("none");
        let missing = missing.to_str().unwrap();
        let plugin = |args: &[&str]| parse(args).unwrap().device_plugin;
        let on = plugin(&["--device-plugin-dir", dir, "--limit-per-node", "7"])
            .expect("auto: dir exists");
        assert_eq!(on.devices, 7);
        assert_eq!(on.kubelet_socket, d.path().join("kubelet.sock"));
        assert!(
            plugin(&["--device-plugin-dir", missing]).is_none(),
            "auto: no dir"
        );
        assert!(plugin(&["--device-plugin", "on", "--device-plugin-dir", missing]).is_some());
        assert!(plugin(&["--device-plugin", "off", "--device-plugin-dir", dir]).is_none());
        assert!(
            plugin(&[
                "--device-plugin",
                "on",
                "--device-plugin-dir",
                dir,
                "--limit-per-node",
                "-1"
            ])
            .is_none(),
            "negative limit: nothing advertised"
        );
    }
}
