//! The real `cloud-api-adaptor` binary with the `local` provider, run as
//! an operator runs it, for tests that kill it, feed it garbage or read
//! its logs. It runs inside a private mount namespace whose `/run/netns`
//! is a fresh tmpfs, so `ip netns` there lists exactly the namespaces this
//! adaptor's instances made (other tests on the host make their own), and
//! so cleanup is exact: dropping the fixture kills every process of that
//! mount namespace by pid, which also frees every network namespace it
//! held, then removes the test's bridge and any veth a crash left behind.
//! Needs root.

use peerpod_provider_local::{LocalConfig, LocalProvider};
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::bin_path;
use cloud_api_adaptor::client::Hypervisor;

/// A process holding a private mount namespace (see the module doc).
struct MountNs {
    holder: Child,
    inode: u64,
}

impl MountNs {
    fn new() -> std::io::Result<Self> {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mkdir -p /run/netns && mount -t tmpfs -o mode=0755 peerpod-test /run/netns \
                 && echo up && exec sleep 1000000",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "up" {
            let _ = holder.kill();
            let _ = holder.wait();
            return Err(std::io::Error::other(
                "unshare: the private mount namespace did not come up",
            ));
        }
        let inode = std::fs::metadata(format!("/proc/{}/ns/mnt", holder.id()))?.ino();
        Ok(Self { holder, inode })
    }

    /// Every process in this mount namespace except the holder.
    fn members(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.holder.id() {
                continue;
            }
            if std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .map(|m| m.ino())
                .ok()
                == Some(self.inode)
            {
                out.push(pid);
            }
        }
        out
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        // Our processes, by pid (they are all ours: nothing else joins
        // this namespace).
        crate::host_net::kill_until_gone(|| self.members());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// See the module doc.
pub struct AdaptorProcess {
    // Field order is drop order: processes first, then the directory.
    child: Option<Child>,
    mntns: MountNs,
    pub dir: tempfile::TempDir,
    pub node: String,
    pub bridge: String,
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length (24 unless a test needs more room).
    pub prefix_len: u8,
    /// Extra global flags (before the `local` subcommand).
    pub args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// How many times the adaptor was started.
    pub starts: u32,
}

impl AdaptorProcess {
    /// A stopped adaptor for node `node` whose instances get addresses in
    /// `subnet` (a /24 no other test uses).
    pub fn new(node: &str, subnet: Ipv4Addr) -> Self {
        Self {
            child: None,
            mntns: MountNs::new().expect("private mount namespace (unshare)"),
            dir: tempfile::tempdir().expect("tempdir"),
            node: node.into(),
            bridge: format!("pprl{}", rand::random::<u16>() % 10000),
            subnet,
            prefix_len: 24,
            args: Vec::new(),
            env: Vec::new(),
            starts: 0,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("hv.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pods(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    /// The agent socket CreateVM answers for `id`.
    pub fn agent_socket(&self, id: &str) -> PathBuf {
        self.pods().join(id).join("agent.ttrpc")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("adaptor.log")
    }

    /// Everything the adaptor wrote to stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The adaptor's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A local provider over the adaptor's instance state (to list what
    /// the adaptor's provider holds, as it would see it).
    pub fn local(&self) -> LocalProvider {
        let mut cfg = LocalConfig::with_defaults(self.state().join("local"));
        cfg.forwarder_bin = bin_path("agent-protocol-forwarder");
        cfg.agent_bin = bin_path("kata-agent-double");
        cfg.user_data_bin = bin_path("process-user-data");
        cfg.bridge = self.bridge.clone();
        cfg.subnet = self.subnet;
        cfg.prefix_len = self.prefix_len;
        LocalProvider::new(cfg).expect("local provider config")
    }

    /// Starts the binary and waits until it answers Version.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_up().await;
    }

    /// Starts the binary without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "adaptor already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("adaptor log");
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.mntns.pid().to_string())
            .args(["--mount", "--"])
            .arg(bin_path("cloud-api-adaptor"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--pods-dir")
            .arg(self.pods())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--node-name")
            .arg(&self.node)
            .args(&self.args)
            .arg("local")
            .arg("--bridge")
            .arg(&self.bridge)
            .arg("--subnet")
            .arg(format!("{}/{}", self.subnet, self.prefix_len))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            // Any free port: other tests run adaptors at the same time.
            .env("PEERPOD_PROBE_LISTEN", "127.0.0.1:0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn cloud-api-adaptor"));
        self.starts += 1;
    }

    /// Waits until the running adaptor answers Version (recovery done).
    pub async fn wait_up(&mut self) {
        for _ in 0..1500 {
            if let Ok(h) = Hypervisor::connect(&self.socket()).await {
                if h.version().await.is_ok() {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("adaptor exited with {status}:\n{}", self.log());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("adaptor did not come up in 30 s:\n{}", self.log());
    }

    /// The exit status once the adaptor has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, as an OOM kill or a node crash would stop it.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (an orderly stop).
    pub fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Runs a command in the adaptor's mount namespace (e.g. `ip netns
    /// add` for a pod namespace only this adaptor sees).
    pub fn in_mount_ns(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("--target")
            .arg(self.mntns.pid().to_string())
            .args(["--mount", "--", program])
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// `ip netns list` as this adaptor sees it (names only).
    pub fn netns_list(&self) -> Vec<String> {
        let out = Command::new("nsenter")
            .arg("--target")
            .arg(self.mntns.pid().to_string())
            .args(["--mount", "--", "ip", "netns", "list"])
            .output()
            .expect("ip netns list");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// The links enslaved to the test's bridge (instances' host veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .stderr(Stdio::null())
            .output()
            .expect("ip link show");
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    }

    /// The identity (inode) of network namespace `name` as the adaptor
    /// sees it under its `/run/netns`.
    pub fn netns_inode(&self, name: &str) -> Option<u64> {
        let p = Path::new("/proc")
            .join(self.mntns.pid().to_string())
            .join("root/run/netns")
            .join(name);
        std::fs::metadata(p).ok().map(|m| m.ino())
    }

    /// Processes of this adaptor's world (its instances' forwarders and
    /// agents, and the adaptor itself while it runs).
    pub fn processes(&self) -> Vec<u32> {
        let mut v = self.mntns.members();
        v.sort();
        v
    }
}

/// Resident set size of a process in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

impl Drop for AdaptorProcess {
    fn drop(&mut self) {
        self.sigkill();
        let ids = crate::host_net::local_instance_ids(&self.state().join("local"));
        // Killing every process of the mount namespace frees its network
        // namespaces and with them the veths inside.
        crate::host_net::kill_until_gone(|| self.mntns.members());
        crate::host_net::remove_local_links(&ids, &self.bridge);
    }
}
