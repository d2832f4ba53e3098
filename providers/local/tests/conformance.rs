//! The provider conformance kit (providers/conformance) against the local
//! provider on the real kernel, with the real user-data step, forwarder
//! and kata-agent double. The stand-in's abilities: a forwarder that
//! cannot start (a create failing after the namespace, veth and agent were
//! made) and a kata-agent binary that is not executable (a configuration
//! error). What the host still holds is read from the kernel and /proc:
//! instance directories, links on the test's bridge, the bridge itself,
//! processes running in the test's state directory. There is no backend
//! to stall, so `deadline` does not apply. Needs root.

use async_trait::async_trait;
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_conformance::{basic_request, run_all, Fixture, Injection};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A workspace binary next to this test's directory.
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn write_exe(p: &Path, text: &str, mode: u32) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct LocalFixture {
    dir: tempfile::TempDir,
    bridge: String,
    provider: Arc<LocalProvider>,
}

impl LocalFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let used = sh("ip -o -4 addr");
        let third = loop {
            let n = rand::random::<u8>();
            if n != 0 && n != 255 && !used.contains(&format!(" 10.215.{n}.")) {
                break n;
            }
        };
        let bridge = format!("pplc{:08x}", rand::random::<u32>());
        let f = LocalFixture {
            provider: Arc::new(
                LocalProvider::new(LocalConfig {
                    state_dir: dir.path().join("state"),
                    forwarder_bin: dir.path().join("forwarder"),
                    agent_bin: dir.path().join("agent"),
                    user_data_bin: bin("process-user-data"),
                    bridge: bridge.clone(),
                    subnet: format!("10.215.{third}.0").parse().unwrap(),
                    prefix_len: 24,
                })
                .unwrap(),
            ),
            bridge,
            dir,
        };
        f.restore();
        f
    }

    /// The wrappers that run the real forwarder and agent double.
    fn restore(&self) {
        let d = self.dir.path();
        write_exe(
            &d.join("forwarder"),
            &format!(
                "#!/bin/sh\nexec {} \"$@\"\n",
                bin("agent-protocol-forwarder").display()
            ),
            0o755,
        );
        write_exe(
            &d.join("agent"),
            &format!("#!/bin/sh\nexec {}\n", bin("kata-agent-double").display()),
            0o755,
        );
    }

    fn processes(&self) -> Vec<String> {
        let root = self.dir.path();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                if cwd.starts_with(root) {
                    out.push(format!(
                        "process {} in {}",
                        e.file_name().to_string_lossy(),
                        cwd.display()
                    ));
                }
            }
        }
        out
    }
}

impl Drop for LocalFixture {
    fn drop(&mut self) {
        for p in self.processes() {
            if let Some(pid) = p
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<i32>().ok())
            {
                // SAFETY: a plain syscall on a pid whose cwd is in our tempdir.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for e in std::fs::read_dir(self.dir.path().join("state/instances"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.len() > 1 {
                sh(&format!(
                    "ip netns del pplocal-{id}-pod 2>/dev/null; ip netns del pplocal-{id} 2>/dev/null; ip link del ppl{} 2>/dev/null",
                    &id[1..]
                ));
            }
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
    }
}

#[async_trait]
impl Fixture for LocalFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }

    fn unknown_instance_id(&self) -> String {
        "l0000000000".into()
    }

    fn request(&self, name: &str, owner: OwnerTags) -> InstanceRequest {
        let mut r = basic_request(name, owner);
        r.user_data = peerpod_vmconfig::userdata::UserData {
            forwarder: peerpod_vmconfig::ForwarderConfig::new(r.owner.sandbox_id.clone(), None),
            initdata: None,
            registry_auth: None,
        }
        .to_cloud_config();
        r
    }

    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        // Exists and is executable, but exec fails: the create has made
        // the namespace, the veth and the agent by then.
        write_exe(
            &self.dir.path().join("forwarder"),
            "#!/nonexistent/interpreter\n",
            0o755,
        );
        Ok(ErrorKind::InvalidConfig)
    }

    fn injections(&self) -> Vec<Injection> {
        vec![Injection {
            what: "a kata-agent binary that is not executable".into(),
            kind: ErrorKind::InvalidConfig,
            code: None,
            message_part: "not executable".into(),
        }]
    }

    async fn inject(&self, _i: &Injection) -> Result<(), String> {
        let p = self.dir.path().join("agent");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())
    }

    async fn clear(&self) {
        self.restore();
    }

    async fn leftovers(&self, _node: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.path().join("state/instances"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("instance directory {}", e.file_name().to_string_lossy()))
            .collect();
        out.extend(
            sh(&format!(
                "ip -o link show master {} 2>/dev/null",
                self.bridge
            ))
            .lines()
            .map(|l| format!("link on the bridge: {l}")),
        );
        if !sh(&format!("ip -o link show {} 2>/dev/null", self.bridge)).is_empty() {
            out.push(format!("bridge {}", self.bridge));
        }
        out.extend(self.processes());
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_passes_the_conformance_kit() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the local provider's conformance run needs root (network namespaces, links)"
    );
    let f = LocalFixture::new();
    let report = run_all(&f).await;
    println!("{report}");
    report.assert_passed(&["deadline"]);
}
