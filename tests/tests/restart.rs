//! The real `cloud-api-adaptor` binary with the `local` provider, killed
//! with SIGKILL while two sandboxes run and started again: both agent
//! sockets answer again and StopVM removes everything. Needs root (the
//! local provider makes network namespaces); CI runs it as root.

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use peerpod_tests::bins::bin_path;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Adaptor {
    dir: tempfile::TempDir,
    bridge: String,
    child: Option<Child>,
}

impl Adaptor {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            bridge: format!("pprs{}", rand::random::<u16>() % 10000),
            child: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("hv.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn local(&self) -> LocalProvider {
        let mut cfg = LocalConfig::with_defaults(self.state().join("local"));
        cfg.forwarder_bin = bin_path("agent-protocol-forwarder");
        cfg.agent_bin = bin_path("kata-agent-double");
        cfg.user_data_bin = bin_path("process-user-data");
        cfg.bridge = self.bridge.clone();
        cfg.subnet = "10.216.9.0".parse().unwrap();
        cfg.prefix_len = 24;
        LocalProvider::new(cfg).unwrap()
    }

    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("adaptor.log"))
            .unwrap();
        let child = Command::new(bin_path("cloud-api-adaptor"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--pods-dir")
            .arg(self.dir.path().join("pods"))
            .arg("--state-dir")
            .arg(self.state())
            .arg("--node-name")
            .arg("restart-node")
            .arg("local")
            .arg("--bridge")
            .arg(&self.bridge)
            .arg("--subnet")
            .arg("10.216.9.0")
            // Any free port: other tests run adaptors at the same time.
            .env("PEERPOD_PROBE_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..500 {
            if let Ok(h) = Hypervisor::connect(&self.socket()).await {
                if h.version().await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("adaptor did not come up: {}", self.log());
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("adaptor.log")).unwrap_or_default()
    }
}

impl Drop for Adaptor {
    fn drop(&mut self) {
        self.sigkill();
        // Whatever a failed run left: processes, namespaces, links.
        let me = self.dir.path().display().to_string();
        let _ = Command::new("pkill").args(["-f", &me]).status();
        if let Ok(rd) = std::fs::read_dir(self.state().join("local/instances")) {
            for e in rd.flatten() {
                let ns = format!("pplocal-{}", e.file_name().to_string_lossy());
                let _ = Command::new("ip")
                    .args(["netns", "del", &ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

async fn healthy(sock: &Path) -> bool {
    matches!(
        agent_health(sock, Duration::from_secs(5)).await,
        Ok(ServingStatus::SERVING)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_adaptor_recovers_running_sandboxes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (the local provider creates network namespaces): run the tests as root"
    );
    let mut a = Adaptor::new();
    a.start().await;
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    let ids = ["restart-one", "restart-two"];
    let mut socks = Vec::new();
    for id in ids {
        let s = h
            .create_vm(id, shim_annotations(id, "default"), "")
            .await
            .unwrap();
        h.start_vm(id, Duration::from_secs(30)).await.unwrap();
        assert!(healthy(Path::new(&s)).await);
        socks.push(PathBuf::from(s));
    }
    drop(h);

    a.sigkill();
    // The VMs outlive the adaptor, and the provider finds them by owner tag.
    let node = OwnerTags {
        cluster: String::new(),
        node: "restart-node".into(),
        sandbox_id: String::new(),
    };
    assert_eq!(a.local().list_instances(&node).await.unwrap().len(), 2);
    assert!(
        !healthy(&socks[0]).await,
        "nobody serves the socket while the adaptor is down"
    );

    a.start().await;
    for s in &socks {
        assert!(
            healthy(s).await,
            "agent socket {} answers after restart; log:\n{}",
            s.display(),
            a.log()
        );
    }
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    for id in ids {
        h.stop_vm(id).await.unwrap();
    }
    // Teardown runs in the background: wait for the provider to be empty.
    let mut left = usize::MAX;
    for _ in 0..300 {
        left = a.local().list_instances(&node).await.unwrap().len();
        let records = std::fs::read_dir(a.state().join("sandboxes"))
            .map(|r| r.count())
            .unwrap_or(0);
        if left == 0 && records == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "instances deleted; log:\n{}", a.log());
    for id in ids {
        assert!(!a.dir.path().join("pods").join(id).exists());
        assert!(!a
            .state()
            .join("sandboxes")
            .join(format!("{id}.json"))
            .exists());
    }
    let instances = std::fs::read_dir(a.state().join("local/instances"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(instances, 0, "no instance directories left");
    assert!(
        !a.log().contains("panicked"),
        "adaptor log has a panic:\n{}",
        a.log()
    );
}
