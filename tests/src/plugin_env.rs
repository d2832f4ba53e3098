//! Processes for the plugin end-to-end tests: the Python example plugin
//! (`providers/plugin/examples/python/plugin.py`), the Rust example plugin
//! serving the `local` provider (`peerpod-local-plugin`), and the real
//! `cloud-api-adaptor` binary with the `plugin` provider pointed at one of
//! them. Each is killed on drop, with everything it started (the Python
//! plugin's instance processes by the pids its records name).

use crate::bins::{bin_path, workspace_root};
use cloud_api_adaptor::client::Hypervisor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Fails (never skips) when Python lacks grpcio / grpcio-tools.
pub fn require_python_grpc() {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 lacks grpcio/grpcio-tools (scripts/setup.sh --tests installs them): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed for the Python plugin test: {e}"),
    }
}

/// A /24 of loopback addresses for one test's instances (`127.A.B`).
pub fn loopback_prefix() -> String {
    let r: u32 = rand::random();
    format!("127.{}.{}", 100 + r % 100, 1 + (r >> 8) % 250)
}

/// Waits until `sock` accepts connections, or panics with `log`'s text.
pub fn wait_for_socket(sock: &Path, child: &mut Child, log: &Path, what: &str) {
    for _ in 0..1500 {
        if std::os::unix::net::UnixStream::connect(sock).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited with {st}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what} did not listen on {} in 30 s:\n{}",
        sock.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn log_file(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .expect("log file")
}

/// The Python example plugin; see the module doc.
pub struct PythonPlugin {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub prefix: String,
    pub forwarder_port: u16,
    /// The kata-agent the plugin starts (default: the double).
    pub agent_bin: Option<PathBuf>,
}

impl PythonPlugin {
    /// Starts the plugin in `dir`; its forwarders listen on `forwarder_port`.
    pub fn start(dir: &Path, forwarder_port: u16) -> Self {
        require_python_grpc();
        let mut p = Self {
            child: None,
            socket: dir.join("python-plugin.sock"),
            state: dir.join("python-plugin"),
            log: dir.join("python-plugin.log"),
            prefix: loopback_prefix(),
            forwarder_port,
            agent_bin: None,
        };
        p.spawn();
        p
    }

    /// (Re)starts the process on the same socket and state.
    pub fn spawn(&mut self) {
        let script = workspace_root().join("providers/plugin/examples/python/plugin.py");
        let bin_dir = bin_path("agent-protocol-forwarder")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut cmd = Command::new("python3");
        if let Some(a) = &self.agent_bin {
            cmd.arg(&script).arg("--agent-bin").arg(a);
        } else {
            cmd.arg(&script);
        }
        let mut child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--forwarder-port")
            .arg(self.forwarder_port.to_string())
            .arg("--ip-prefix")
            .arg(&self.prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(&self.log)))
            .stderr(Stdio::from(log_file(&self.log)))
            .spawn()
            .expect("spawn python3 plugin.py");
        wait_for_socket(&self.socket, &mut child, &self.log, "the Python plugin");
        self.child = Some(child);
    }

    /// Stops the process (SIGKILL) and starts it again.
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn();
    }

    /// SIGKILL (a crash): its instances' processes stay, as a VM would.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instance records on disk: (id, node tag, pids).
    pub fn records(&self) -> Vec<(String, String, Vec<i32>)> {
        let Ok(rd) = std::fs::read_dir(&self.state) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("instance.json")).ok())
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| {
                (
                    v["id"].as_str().unwrap_or_default().to_string(),
                    v["tags"]["peerpod-node"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    v["pids"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p.as_i64())
                                .map(|p| p as i32)
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Instance directories present (records or not).
    pub fn instance_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.state)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for PythonPlugin {
    fn drop(&mut self) {
        self.sigkill();
        for (_, _, pids) in self.records() {
            for pid in pids {
                // Each instance process leads its own process group.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether a process runs (zombies do not count).
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The adaptor binary with `plugin --socket <plugin socket>`.
pub struct PluginAdaptor {
    child: Option<Child>,
    pub dir: PathBuf,
    pub node: String,
    pub forwarder_port: u16,
    pub plugin_socket: PathBuf,
    /// Extra arguments after `plugin` (e.g. `--plugin-timeout 2`).
    pub plugin_args: Vec<String>,
}

impl PluginAdaptor {
    pub fn new(dir: &Path, node: &str, forwarder_port: u16, plugin_socket: &Path) -> Self {
        Self {
            child: None,
            dir: dir.to_path_buf(),
            node: node.into(),
            forwarder_port,
            plugin_socket: plugin_socket.to_path_buf(),
            plugin_args: Vec::new(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("hv.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("adaptor.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `cloud-api-adaptor … plugin …` with these extra args and waits
    /// for it to exit (for `--check` and start-up failures).
    pub fn run_to_exit(&self, global: &[&str]) -> std::process::Output {
        self.command(global)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run cloud-api-adaptor")
    }

    fn command(&self, global: &[&str]) -> Command {
        let mut cmd = Command::new(bin_path("cloud-api-adaptor"));
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("--pods-dir")
            .arg(self.dir.join("pods"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--node-name")
            .arg(&self.node)
            .arg("--forwarder-port")
            .arg(self.forwarder_port.to_string())
            .args(global)
            .arg("plugin")
            .arg("--provider-socket")
            .arg(&self.plugin_socket)
            .args(&self.plugin_args)
            .stdin(Stdio::null())
            .env("PEERPOD_PROBE_LISTEN", "127.0.0.1:0");
        cmd
    }

    /// Starts the adaptor and waits until it answers Version.
    pub async fn start(&mut self, global: &[&str]) {
        let log = log_file(&self.log_path());
        let child = self
            .command(global)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cloud-api-adaptor");
        self.child = Some(child);
        for _ in 0..1500 {
            if let Ok(h) = Hypervisor::connect(&self.socket()).await {
                if h.version().await.is_ok() {
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("adaptor exited with {st}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("adaptor did not come up in 30 s:\n{}", self.log());
    }

    pub async fn hypervisor(&self) -> Hypervisor {
        Hypervisor::connect(&self.socket())
            .await
            .expect("connect the hypervisor socket")
    }

    /// The adaptor's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for PluginAdaptor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on loopback for forwarders (bind 0, then release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(15150)
}

/// One HTTP/1.0 GET on the probe endpoint; the body.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// The Rust example plugin (`peerpod-local-plugin`, the local provider)
/// in a private mount namespace whose `/run/netns` is a fresh tmpfs, as
/// [`crate::adaptor_process`] runs the adaptor: on drop every process of
/// that namespace is killed by pid, then the bridge and any veth a crash
/// left are removed. Needs root.
pub struct LocalPlugin {
    child: Option<Child>,
    mnt_inode: u64,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub bridge: String,
}

impl LocalPlugin {
    pub fn start(dir: &Path, subnet: &str) -> Self {
        use std::os::unix::fs::MetadataExt;
        let socket = dir.join("local-plugin.sock");
        let state = dir.join("local-plugin");
        let log = dir.join("local-plugin.log");
        let bridge = format!("pplp{}", rand::random::<u16>() % 10000);
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mkdir -p /run/netns && mount -t tmpfs -o mode=0755 peerpod-test /run/netns && exec \"$0\" \"$@\"")
            .arg(bin_path("peerpod-local-plugin"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--bridge")
            .arg(&bridge)
            .arg("--subnet")
            .arg(subnet)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(&log)))
            .stderr(Stdio::from(log_file(&log)))
            .spawn()
            .expect("spawn peerpod-local-plugin");
        wait_for_socket(&socket, &mut child, &log, "peerpod-local-plugin");
        let mnt_inode = std::fs::metadata(format!("/proc/{}/ns/mnt", child.id()))
            .map(|m| m.ino())
            .unwrap_or(0);
        Self {
            child: Some(child),
            mnt_inode,
            socket,
            state,
            log,
            bridge,
        }
    }

    /// Processes in the plugin's mount namespace (the plugin and its
    /// instances' forwarders and agents).
    pub fn processes(&self) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .map(|m| m.ino())
                .ok()
                == Some(self.mnt_inode)
            {
                out.push(pid);
            }
        }
        out
    }

    pub fn instance_dirs(&self) -> Vec<String> {
        crate::host_net::local_instance_ids(&self.state.join("local"))
    }
}

impl Drop for LocalPlugin {
    fn drop(&mut self) {
        let ids = self.instance_dirs();
        crate::host_net::kill_until_gone(|| self.processes());
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        crate::host_net::remove_local_links(&ids, &self.bridge);
    }
}
