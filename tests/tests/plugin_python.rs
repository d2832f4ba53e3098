//! The Python example plugin (`providers/plugin/examples/python/`, grpcio):
//! it passes the conformance kit through the adaptor's plugin client, and
//! the real adaptor binary runs a sandbox on it end to end (CreateVM →
//! StartVM → Health through the forwarder it started → StopVM), leaving
//! no process or record behind. Needs python3 with grpcio and
//! grpcio-tools (scripts/setup.sh --tests); fails without them.

use async_trait::async_trait;
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_conformance::{basic_request, run_all, Fixture, Injection};
use peerpod_provider_plugin::{PluginConfig, PluginProvider};
use peerpod_tests::plugin_env::{free_port, running, PythonPlugin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct PyFixture {
    plugin: Mutex<PythonPlugin>,
    client: Arc<PluginProvider>,
    /// The next request carries user data the user-data step refuses.
    bad_user_data: AtomicBool,
}

#[async_trait]
impl Fixture for PyFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        self.client.clone()
    }

    fn unknown_instance_id(&self) -> String {
        "py-00000000ff".into()
    }

    fn request(&self, name: &str, owner: OwnerTags) -> InstanceRequest {
        let mut r = basic_request(name, owner);
        if self.bad_user_data.load(Ordering::SeqCst) {
            r.user_data = b"#cloud-config\nwrite_files: [ {{{ not yaml".to_vec();
            return r;
        }
        // The instance runs the real user-data step: give it a document.
        r.user_data = peerpod_vmconfig::userdata::UserData {
            forwarder: peerpod_vmconfig::ForwarderConfig::new(r.owner.sandbox_id.clone(), None),
            initdata: None,
            registry_auth: None,
        }
        .to_cloud_config();
        r
    }

    /// The plugin restarted with an agent that exits at once: the create
    /// fails after the user-data step and both processes were started.
    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        let mut p = self.plugin.lock().map_err(|e| e.to_string())?;
        p.agent_bin = Some("/bin/false".into());
        p.restart();
        Ok(ErrorKind::Permanent)
    }

    fn injections(&self) -> Vec<Injection> {
        vec![Injection {
            what: "user data the VM's user-data step refuses".into(),
            kind: ErrorKind::InvalidRequest,
            code: Some("BadUserData".into()),
            message_part: "refused by process-user-data".into(),
        }]
    }

    async fn inject(&self, _i: &Injection) -> Result<(), String> {
        self.bad_user_data.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn clear(&self) {
        self.bad_user_data.store(false, Ordering::SeqCst);
        if let Ok(mut p) = self.plugin.lock() {
            if p.agent_bin.take().is_some() {
                p.restart();
            }
        }
    }

    async fn leftovers(&self, node: &str) -> Vec<String> {
        let mut out = Vec::new();
        let records = self.plugin.lock().map(|p| p.records()).unwrap_or_default();
        for (id, n, pids) in records {
            if n == node {
                out.push(format!("record {id}"));
                out.extend(
                    pids.iter()
                        .filter(|p| running(**p))
                        .map(|p| format!("process {p} of {id}")),
                );
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_plugin_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = PythonPlugin::start(dir.path(), free_port());
    let mut cfg = PluginConfig::new(&plugin.socket);
    cfg.call_timeout = Duration::from_secs(30);
    let f = PyFixture {
        client: Arc::new(PluginProvider::new(cfg)),
        plugin: Mutex::new(plugin),
        bad_user_data: AtomicBool::new(false),
    };
    let report = run_all(&f).await;
    println!("{report}");
    // What a stand-in of local processes cannot be told to do.
    report.assert_passed(&["deadline"]);
    let dirs = f.plugin.lock().unwrap().instance_dirs();
    assert!(dirs.is_empty(), "no instance directory left: {dirs:?}");
    let info = f.client.info().expect("handshake done");
    assert_eq!(info.name, "python-local");
    assert!(info.console_tail);
}
