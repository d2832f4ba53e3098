//! Real `local` provider instances for tests that need a provider but no
//! adaptor (e.g. `peerpod-ctrl`'s): a private state directory, a bridge
//! and a /24 no other test uses, the workspace's forwarder and agent
//! double. Dropping it deletes every instance still recorded in its
//! state directory (through the provider, as a restarted adaptor would)
//! and the bridge, even when the test failed. Needs root.

use crate::bins::bin_path;
use peerpod_provider_api::{Instance, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// A request for an instance `name` owned by `node` / `sandbox` whose user
/// data starts a forwarder for the sandbox (no TLS, no pod network).
pub fn forwarder_request(name: &str, node: &str, sandbox: &str) -> InstanceRequest {
    InstanceRequest::new(
        name,
        OwnerTags::new("", node, sandbox),
        peerpod_vmconfig::userdata::UserData {
            forwarder: peerpod_vmconfig::ForwarderConfig::new(sandbox, None),
            initdata: None,
            registry_auth: None,
        }
        .to_cloud_config(),
    )
}

pub struct LocalWorld {
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub provider: Arc<LocalProvider>,
}

impl LocalWorld {
    pub fn new() -> Self {
        let used = std::process::Command::new("ip")
            .args(["-o", "-4", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let third = loop {
            let n = rand::random::<u8>();
            if n != 0 && n != 255 && !used.contains(&format!(" 10.218.{n}.")) {
                break n;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let bridge = format!("ppkw{:08x}", rand::random::<u32>());
        let subnet = Ipv4Addr::new(10, 218, third, 0);
        let cfg = LocalConfig {
            state_dir: dir.path().join("state"),
            forwarder_bin: bin_path("agent-protocol-forwarder"),
            agent_bin: bin_path("kata-agent-double"),
            user_data_bin: bin_path("process-user-data"),
            bridge: bridge.clone(),
            subnet,
            prefix_len: 24,
        };
        let provider = Arc::new(LocalProvider::new(cfg).expect("local provider"));
        Self {
            dir,
            bridge,
            subnet,
            provider,
        }
    }

    /// The provider as the controller takes it.
    pub fn dyn_provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }

    /// A running instance owned by `node` / `sandbox` (no TLS, no pod network).
    pub async fn instance(&self, node: &str, sandbox: &str) -> Instance {
        let req = forwarder_request(&format!("podvm-t-{sandbox}"), node, sandbox);
        self.provider
            .create_instance(req)
            .await
            .unwrap_or_else(|e| panic!("local instance for {sandbox}: {e}"))
    }

    /// Whether the provider still holds the instance (its record is
    /// removed only once everything it owned is gone).
    pub fn exists(&self, id: &str) -> bool {
        peerpod_provider_local::state::load_all(&self.dir.path().join("state"))
            .iter()
            .any(|m| m.id == id)
    }
}

impl Default for LocalWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LocalWorld {
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let state = self.dir.path().join("state");
        let bridge = self.bridge.clone();
        // Drop cannot await: a thread with its own runtime does the deletes.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for m in peerpod_provider_local::state::load_all(&state) {
                    let _ = provider.delete_instance(&m.id).await;
                }
            });
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &bridge])
                .stderr(std::process::Stdio::null())
                .status();
        })
        .join();
    }
}
