//! The local provider against the real kernel: namespaces, veth, bridge
//! and processes are created and must all be gone after delete. Needs
//! root (CI has it); without root each test says why it is skipped.

use peerpod_provider_api::{InstanceRequest, OwnerTags, Provider};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: the local provider needs root (network namespaces, links)");
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test's private world: state dir, stand-in binaries, unique bridge and
/// subnet; removes anything left (by its unique names) even on failure.
struct World {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: Ipv4Addr,
}

impl World {
    fn new(n: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tag: u16 = rand::random::<u16>() % 10000;
        let w = Self {
            bridge: format!("pplt{tag}"),
            subnet: Ipv4Addr::new(10, 214, n, 0),
            dir,
        };
        std::fs::write(
            w.dir.path().join("agent"),
            "#!/bin/sh\necho \"agent addr=$KATA_AGENT_SERVER_ADDR\"\nwhile :; do sleep 1; done\n",
        )
        .unwrap();
        std::fs::write(
            w.dir.path().join("forwarder"),
            "#!/bin/sh\nd=$(dirname \"$2\")\necho \"$@\" > \"$d/args\"\nip -o -4 addr show dev eth0 > \"$d/addr\"\nwhile :; do sleep 1; done\n",
        )
        .unwrap();
        for b in ["agent", "forwarder"] {
            sh(&format!("chmod +x {}", w.dir.path().join(b).display()));
        }
        w
    }

    fn config(&self) -> LocalConfig {
        LocalConfig {
            state_dir: self.dir.path().join("state"),
            forwarder_bin: self.dir.path().join("forwarder"),
            agent_bin: self.dir.path().join("agent"),
            bridge: self.bridge.clone(),
            subnet: self.subnet,
        }
    }

    fn provider(&self) -> LocalProvider {
        LocalProvider::new(self.config()).unwrap()
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("state/instances").join(id)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Processes first (they hold nothing the kernel needs, but must not leak).
        let me = self.dir.path().display().to_string();
        sh(&format!("pkill -f '{me}' ; true"));
        for ns in sh("ls /run/netns 2>/dev/null").lines() {
            if ns.starts_with("pplocal-l") {
                let dir = self
                    .dir
                    .path()
                    .join("state/instances")
                    .join(&ns["pplocal-".len()..]);
                if dir.exists() {
                    sh(&format!("ip netns del {ns}"));
                }
            }
        }
        sh(&format!("ip link del {} 2>/dev/null; true", self.bridge));
    }
}

fn request(sandbox: &str) -> InstanceRequest {
    InstanceRequest {
        name: format!("podvm-test-{sandbox}"),
        owner: OwnerTags {
            node: "node-a".into(),
            sandbox_id: sandbox.into(),
        },
        extra_tags: BTreeMap::new(),
        vcpus: None,
        memory_mib: None,
        image: None,
        machine_type: None,
        user_data: b"{\"secret\":\"key material\"}".to_vec(),
    }
}

fn wait_for(p: &Path) -> bool {
    for _ in 0..300 {
        if p.exists() && std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Live (non-zombie) processes whose command line mentions `dir`.
fn pids_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(true);
        if cmd.contains(&needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Tests here share the host's namespace list: run them one at a time so
/// before/after comparisons are exact.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn our_netns() -> Vec<String> {
    sh("ls /run/netns 2>/dev/null")
        .lines()
        .filter(|l| l.starts_with("pplocal-"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn create_runs_processes_in_their_own_namespace_and_delete_leaves_nothing() {
    if !root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let w = World::new(1);
    let p = w.provider();
    let inst = p.create_instance(request("sb1")).await.unwrap();
    let ip = inst.ips[0].to_string();
    assert_eq!(ip, "10.214.1.2");
    let ns = format!("pplocal-{}", inst.id);
    let veth = format!("ppl{}", &inst.id[1..]);

    assert!(sh("ip netns list").contains(&ns), "netns listed");
    let link = sh(&format!("ip -o link show {veth}"));
    assert!(
        link.contains(&format!("master {}", w.bridge)),
        "veth on the bridge: {link}"
    );
    let dir = w.instance_dir(&inst.id);
    assert!(wait_for(&dir.join("addr")), "forwarder ran");
    // The forwarder saw eth0 with the instance's address: it ran inside the namespace.
    let addr = std::fs::read_to_string(dir.join("addr")).unwrap();
    assert!(addr.contains(&format!("{ip}/24")), "{addr}");
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    assert!(
        args.contains("--config") && args.contains("user-data") && args.contains("--agent-socket"),
        "{args}"
    );
    // The agent got its address the way the real kata-agent reads it.
    assert!(wait_for(&dir.join("agent.log")));
    assert!(std::fs::read_to_string(dir.join("agent.log"))
        .unwrap()
        .contains("unix://"));
    // user-data is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("user-data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A real network hop: the host reaches the instance address.
    let ping = Command::new("ping")
        .args(["-c1", "-W2", &ip])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(
        pids_under(w.dir.path()).len(),
        2,
        "agent and forwarder running"
    );

    p.delete_instance(&inst.id).await.unwrap();
    assert!(!sh("ip netns list").contains(&ns), "netns removed");
    assert!(
        sh(&format!("ip -o link show {veth} 2>&1")).contains("does not exist"),
        "veth removed"
    );
    assert!(
        sh(&format!("ip -o link show {} 2>&1", w.bridge)).contains("does not exist"),
        "bridge removed with the last instance"
    );
    assert!(pids_under(w.dir.path()).is_empty(), "processes stopped");
    assert!(!dir.exists(), "instance directory removed");
    // Idempotent.
    p.delete_instance(&inst.id).await.unwrap();
    p.delete_instance("lnever").await.unwrap();
}

#[tokio::test]
async fn list_by_owner_and_after_a_restart() {
    if !root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let w = World::new(2);
    let p = w.provider();
    let a = p.create_instance(request("sbA")).await.unwrap();
    let b = p.create_instance(request("sbB")).await.unwrap();
    assert_ne!(a.ips, b.ips, "distinct addresses");
    let only_a = OwnerTags {
        node: "node-a".into(),
        sandbox_id: "sbA".into(),
    };
    let found = p.list_instances(&only_a).await.unwrap();
    assert_eq!(
        found.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![a.id.clone()]
    );
    let node = OwnerTags {
        node: "node-a".into(),
        sandbox_id: String::new(),
    };
    assert_eq!(p.list_instances(&node).await.unwrap().len(), 2);
    let other = OwnerTags {
        node: "node-b".into(),
        sandbox_id: String::new(),
    };
    assert!(p.list_instances(&other).await.unwrap().is_empty());

    // The adaptor "crashes": a new provider over the same state finds both
    // and deletes them completely.
    drop(p);
    let p2 = w.provider();
    let found = p2.list_instances(&node).await.unwrap();
    assert_eq!(found.len(), 2);
    for i in found {
        p2.delete_instance(&i.id).await.unwrap();
    }
    assert!(pids_under(w.dir.path()).is_empty());
    assert!(!sh("ip netns list").contains(&format!("pplocal-{}", a.id)));
    assert!(!sh("ip netns list").contains(&format!("pplocal-{}", b.id)));
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    if !root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let w = World::new(3);
    // The forwarder cannot start (exists, executable, but exec fails).
    std::fs::write(
        w.dir.path().join("forwarder"),
        "#!/nonexistent/interpreter\n",
    )
    .unwrap();
    let p = w.provider();
    let before = our_netns();
    let e = p
        .create_instance(request("sbF"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("start forwarder"), "{e}");
    assert_eq!(
        our_netns(),
        before,
        "the namespace made for the failed create is gone"
    );
    assert!(pids_under(w.dir.path()).is_empty(), "agent stopped again");
    assert!(
        sh(&format!("ip -o link show master {} 2>/dev/null", w.bridge))
            .trim()
            .is_empty()
    );
    let any = OwnerTags {
        node: "node-a".into(),
        sandbox_id: String::new(),
    };
    assert!(p.list_instances(&any).await.unwrap().is_empty());

    // A missing binary is a configuration error naming the path.
    let mut cfg = w.config();
    cfg.agent_bin = w.dir.path().join("nope");
    let e = LocalProvider::new(cfg)
        .unwrap()
        .create_instance(request("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, peerpod_provider_api::ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("nope"), "{e}");
}
