//! A provider for tests and benchmarks: each "instance" is a real
//! `agent-protocol-forwarder` process listening on its own loopback
//! address (127.x.y.z) plus the kata-agent double, both on this host. It
//! needs no root, and lets tests reach into an instance (its request
//! record, killing its forwarder) and inject failures.

use async_trait::async_trait;
use peerpod_provider_api::{
    ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use tokio::process::{Child, Command};

/// Instance counter for the whole process (addresses must not repeat
/// across providers in one test binary).
static NEXT: AtomicU32 = AtomicU32::new(1);

struct Inst {
    name: String,
    ip: IpAddr,
    tags: BTreeMap<String, String>,
    dir: PathBuf,
    agent: Option<Child>,
    forwarder: Option<Child>,
}

/// See the module doc.
pub struct ProcessProvider {
    dir: PathBuf,
    port: u16,
    forwarder_bin: PathBuf,
    agent_bin: PathBuf,
    instances: Mutex<HashMap<String, Inst>>,
    /// Fail every create with this message (QuotaExceeded).
    pub fail_create: Mutex<Option<String>>,
    /// Start only the agent: the forwarder never listens (VM never ready).
    pub no_forwarder: AtomicBool,
    /// Instances ever created (to check nothing leaked).
    pub created: AtomicU32,
}

fn base_ip() -> [u8; 2] {
    // A per-process range of loopback addresses, so parallel test binaries
    // do not collide.
    let pid = std::process::id();
    [(pid % 200) as u8 + 20, ((pid / 200) % 250) as u8 + 1]
}

impl ProcessProvider {
    /// Instances live in `dir`; forwarders listen on `port`.
    pub fn new(dir: &Path, port: u16) -> Self {
        Self {
            dir: dir.to_path_buf(),
            port,
            forwarder_bin: crate::bins::bin_path("agent-protocol-forwarder"),
            agent_bin: crate::bins::bin_path("kata-agent-double"),
            instances: Mutex::new(HashMap::new()),
            fail_create: Mutex::new(None),
            no_forwarder: AtomicBool::new(false),
            created: AtomicU32::new(0),
        }
    }

    /// The instance's request record (what the agent double received).
    pub fn record_file(&self, instance_id: &str) -> PathBuf {
        self.dir.join(instance_id).join("records.jsonl")
    }

    /// The instance's agent socket (to call the agent directly).
    pub fn agent_socket(&self, instance_id: &str) -> PathBuf {
        self.dir.join(instance_id).join("agent.sock")
    }

    /// Kills the instance's forwarder (the VM's daemon "goes away").
    pub async fn kill_forwarder(&self, instance_id: &str) -> bool {
        let child = self
            .instances
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(instance_id).and_then(|i| i.forwarder.take()));
        match child {
            Some(mut c) => {
                let _ = c.kill().await;
                true
            }
            None => false,
        }
    }

    /// Ids of the live instances.
    pub fn live(&self) -> Vec<String> {
        self.instances
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    }
}

fn perr(kind: ErrorKind, msg: impl Into<String>) -> ProviderError {
    ProviderError::new(kind, msg)
}

#[async_trait]
impl Provider for ProcessProvider {
    fn name(&self) -> &str {
        "process"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        if let Some(msg) = self.fail_create.lock().ok().and_then(|m| m.clone()) {
            return Err(perr(ErrorKind::QuotaExceeded, msg).with_code("TestQuota"));
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("p{}-{n}", std::process::id());
        let [a, b] = base_ip();
        let ip = IpAddr::V4(Ipv4Addr::new(127, a, b, (n % 250 + 2) as u8));
        let dir = self.dir.join(&id);
        let io = |what: &str, e: std::io::Error| perr(ErrorKind::Transient, format!("{what}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| io("instance dir", e))?;
        let user_data = dir.join("user-data");
        std::fs::write(&user_data, &req.user_data).map_err(|e| io("user-data", e))?;
        // The VM's user-data step, as a pod VM runs it at boot.
        let out = std::process::Command::new(crate::bins::bin_path("process-user-data"))
            .args(["--source", "file", "--file"])
            .arg(&user_data)
            .arg("--out-dir")
            .arg(dir.join("run"))
            .output()
            .map_err(|e| io("run process-user-data", e))?;
        if !out.status.success() {
            return Err(perr(
                ErrorKind::InvalidConfig,
                format!(
                    "process-user-data: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let config = dir.join("run/daemon.json");
        let sock = dir.join("agent.sock");
        let agent = Self::spawn(
            Command::new(&self.agent_bin)
                .arg("--socket")
                .arg(&sock)
                .arg("--record")
                .arg(dir.join("records.jsonl")),
            &dir.join("agent.log"),
        )
        .map_err(|e| io("start kata-agent-double", e))?;
        let forwarder = if self.no_forwarder.load(Ordering::SeqCst) {
            None
        } else {
            Some(
                Self::spawn(
                    Command::new(&self.forwarder_bin)
                        .arg("--config")
                        .arg(&config)
                        .arg("--agent-socket")
                        .arg(&sock)
                        .arg("--listen")
                        .arg(format!("{ip}:{}", self.port)),
                    &dir.join("forwarder.log"),
                )
                .map_err(|e| io("start forwarder", e))?,
            )
        };
        let tags = req.all_tags();
        if let Ok(mut m) = self.instances.lock() {
            m.insert(
                id.clone(),
                Inst {
                    name: req.name.clone(),
                    ip,
                    tags: tags.clone(),
                    dir,
                    agent: Some(agent),
                    forwarder,
                },
            );
        }
        self.created.fetch_add(1, Ordering::SeqCst);
        Ok(Instance {
            id,
            name: req.name,
            ips: vec![ip],
            tags,
            instance_type: None,
        })
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        peerpod_provider_api::check_instance_id(instance_id)?;
        let inst = self
            .instances
            .lock()
            .ok()
            .and_then(|mut m| m.remove(instance_id));
        if let Some(mut i) = inst {
            for c in [i.forwarder.as_mut(), i.agent.as_mut()]
                .into_iter()
                .flatten()
            {
                let _ = c.kill().await;
            }
            let _ = std::fs::remove_dir_all(&i.dir);
        }
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        let m = self
            .instances
            .lock()
            .map_err(|_| perr(ErrorKind::Transient, "instance table poisoned"))?;
        Ok(m.iter()
            .filter(|(_, i)| owner.matches(&i.tags))
            .map(|(id, i)| Instance {
                id: id.clone(),
                name: i.name.clone(),
                ips: vec![i.ip],
                tags: i.tags.clone(),
                instance_type: None,
            })
            .collect())
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec![format!("forwarder {}", self.forwarder_bin.display())])
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let dir = self.dir.join(instance_id);
        let log = std::fs::read_to_string(dir.join("forwarder.log")).ok()?;
        Some(log.lines().rev().take(10).collect::<Vec<_>>().join("\n"))
    }
}
