//! The `local` provider: no cloud needed. Each instance is an
//! `agent-protocol-forwarder` plus a kata-agent (the test double by
//! default, or a real `kata-agent` binary) running on this host inside a
//! network namespace of its own, joined to a host bridge by a veth pair
//! with its own address — so the adaptor reaches it over a real network
//! hop, as it reaches a cloud VM. The forwarder gets its config the way a
//! cloud hands over user data: a file in the instance's directory.

pub mod link;
pub mod netns;
pub mod process;
pub mod state;

use async_trait::async_trait;
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use state::Meta;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;

/// The env var the kata-agent reads its listen address from.
pub const AGENT_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";
/// How long processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Instance directories live in `<state_dir>/instances/`.
    pub state_dir: PathBuf,
    pub forwarder_bin: PathBuf,
    pub agent_bin: PathBuf,
    /// Host bridge joining the instances.
    pub bridge: String,
    /// The /24 network (x.y.z.0); the bridge takes .1, instances .2–.254.
    pub subnet: Ipv4Addr,
}

impl LocalConfig {
    /// Defaults: binaries next to the running executable, bridge
    /// `pplocal0`, subnet 10.213.0.0/24.
    pub fn with_defaults(state_dir: impl Into<PathBuf>) -> Self {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Self {
            state_dir: state_dir.into(),
            forwarder_bin: dir.join("agent-protocol-forwarder"),
            agent_bin: dir.join("kata-agent-double"),
            bridge: "pplocal0".into(),
            subnet: Ipv4Addr::new(10, 213, 0, 0),
        }
    }

    fn host_ip(&self, last: u8) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], last)
    }
}

/// See the crate doc.
pub struct LocalProvider {
    cfg: LocalConfig,
    /// Creates and deletes run one at a time (address allocation, bridge).
    lock: Mutex<()>,
}

fn perr(kind: ErrorKind, msg: impl Into<String>) -> ProviderError {
    ProviderError::new(kind, msg)
}

fn io_step(step: &str) -> impl FnOnce(std::io::Error) -> ProviderError + '_ {
    move |e| perr(ErrorKind::Transient, format!("{step}: {e}"))
}

fn link_err(e: link::LinkError) -> ProviderError {
    perr(ErrorKind::Transient, e.to_string())
}

fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let hex: String = (0..10)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect();
    format!("l{hex}")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl LocalProvider {
    pub fn new(cfg: LocalConfig) -> Result<Self, ProviderError> {
        if cfg.bridge.is_empty() || cfg.bridge.len() > 15 {
            return Err(perr(
                ErrorKind::InvalidConfig,
                format!("bridge name {:?} must be 1–15 characters", cfg.bridge),
            ));
        }
        if cfg.subnet.octets()[3] != 0 {
            return Err(perr(
                ErrorKind::InvalidConfig,
                format!(
                    "subnet {} must be a /24 network address (x.y.z.0)",
                    cfg.subnet
                ),
            ));
        }
        Ok(Self {
            cfg,
            lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    fn dir(&self, id: &str) -> PathBuf {
        state::instances_dir(&self.cfg.state_dir).join(id)
    }

    fn check_binaries(&self) -> Result<(), ProviderError> {
        for (what, p) in [
            ("forwarder", &self.cfg.forwarder_bin),
            ("kata-agent", &self.cfg.agent_bin),
        ] {
            if !is_executable(p) {
                return Err(perr(
                    ErrorKind::InvalidConfig,
                    format!(
                        "{what} binary {} does not exist or is not executable",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn free_index(&self, existing: &[Meta]) -> Option<u8> {
        (2..=254u8).find(|i| !existing.iter().any(|m| m.ip == self.cfg.host_ip(*i)))
    }

    async fn build(
        &self,
        meta: &mut Meta,
        dir: &Path,
        user_data: &[u8],
    ) -> Result<(), ProviderError> {
        let ns_name = meta.netns.clone();
        tokio::task::spawn_blocking(move || netns::create(&ns_name))
            .await
            .map_err(|e| perr(ErrorKind::Transient, e.to_string()))?
            .map_err(io_step(&format!("create network namespace {}", meta.netns)))?;
        let ns = netns::open(&meta.netns).map_err(io_step("open the instance namespace"))?;
        let h = link::connect().map_err(link_err)?;
        let bridge = link::ensure_bridge(&h, &self.cfg.bridge, self.cfg.host_ip(1))
            .await
            .map_err(link_err)?;
        let peer = format!("plp{}", &meta.id[1..]);
        link::create_veth(&h, &meta.veth, &peer, bridge, &ns)
            .await
            .map_err(link_err)?;
        let ip = meta.ip;
        let ns_name = meta.netns.clone();
        tokio::task::spawn_blocking(move || {
            netns::run_in(&ns_name, move || {
                link::configure_inside(&peer, ip).map_err(|e| std::io::Error::other(e.to_string()))
            })
        })
        .await
        .map_err(|e| perr(ErrorKind::Transient, e.to_string()))?
        .map_err(io_step("configure the instance's eth0"))?;

        let config = dir.join("user-data");
        state::write_atomic(&config, user_data, 0o600).map_err(io_step("write user-data"))?;
        let sock = dir.join("agent.sock");
        let agent = process::spawn_in(
            "kata-agent",
            &ns,
            &self.cfg.agent_bin,
            &[],
            &[(AGENT_ADDR_ENV, format!("unix://{}", sock.display()))],
            &dir.join("agent.log"),
        )
        .map_err(io_step(&format!(
            "start kata-agent {}",
            self.cfg.agent_bin.display()
        )))?;
        meta.processes.push(agent);
        state::save(dir, meta).map_err(io_step("record the agent process"))?;
        let fwd = process::spawn_in(
            "forwarder",
            &ns,
            &self.cfg.forwarder_bin,
            &[
                "--config".as_ref(),
                config.as_os_str(),
                "--agent-socket".as_ref(),
                sock.as_os_str(),
            ],
            &[],
            &dir.join("forwarder.log"),
        )
        .map_err(io_step(&format!(
            "start forwarder {}",
            self.cfg.forwarder_bin.display()
        )))?;
        meta.processes.push(fwd);
        state::save(dir, meta).map_err(io_step("record the forwarder process"))?;
        Ok(())
    }

    /// Removes everything of one instance; each step tolerates "already gone".
    async fn destroy(&self, m: &Meta) -> Result<(), ProviderError> {
        for p in &m.processes {
            p.stop(STOP_GRACE).await;
        }
        let h = link::connect().map_err(link_err)?;
        link::delete(&h, &m.veth).await.map_err(link_err)?;
        let ns = m.netns.clone();
        tokio::task::spawn_blocking(move || netns::remove(&ns))
            .await
            .map_err(|e| perr(ErrorKind::Transient, e.to_string()))?
            .map_err(io_step(&format!("remove network namespace {}", m.netns)))?;
        let dir = self.dir(&m.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_step(&format!("remove {}", dir.display()))(e))
            }
            _ => {}
        }
        if state::load_all(&self.cfg.state_dir)
            .iter()
            .all(|o| o.bridge != m.bridge)
        {
            link::delete(&h, &m.bridge).await.map_err(link_err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.check_binaries()?;
        let _g = self.lock.lock().await;
        let existing = state::load_all(&self.cfg.state_dir);
        let index = self.free_index(&existing).ok_or_else(|| {
            perr(
                ErrorKind::InsufficientCapacity,
                format!("all 253 addresses of {}/24 are in use", self.cfg.subnet),
            )
        })?;
        let id = random_id();
        let dir = self.dir(&id);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_step("create the instance directory"))?;
        }
        let mut meta = Meta {
            id: id.clone(),
            name: req.name.clone(),
            tags: req.all_tags(),
            ip: self.cfg.host_ip(index),
            netns: format!("pplocal-{id}"),
            veth: format!("ppl{}", &id[1..]),
            bridge: self.cfg.bridge.clone(),
            processes: Vec::new(),
            created_at: now_secs(),
        };
        // Recorded before anything is made, so nothing can be orphaned.
        state::save(&dir, &meta).map_err(io_step("record the instance"))?;
        if let Err(e) = self.build(&mut meta, &dir, &req.user_data).await {
            tracing::warn!(instance = %id, error = %e, "create failed; removing what was made");
            if let Err(undo) = self.destroy(&meta).await {
                tracing::error!(instance = %id, error = %undo, "cleanup after a failed create failed");
            }
            return Err(e);
        }
        tracing::info!(instance = %id, name = %meta.name, ip = %meta.ip, "local instance started");
        Ok(Instance {
            id,
            name: meta.name,
            ips: vec![meta.ip.into()],
            tags: meta.tags,
        })
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        let _g = self.lock.lock().await;
        let Some(m) = state::load_all(&self.cfg.state_dir)
            .into_iter()
            .find(|m| m.id == instance_id)
        else {
            tracing::debug!(
                instance = instance_id,
                "delete: no such local instance (already gone)"
            );
            return Ok(());
        };
        self.destroy(&m).await?;
        tracing::info!(instance = instance_id, "local instance deleted");
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        Ok(state::load_all(&self.cfg.state_dir)
            .into_iter()
            .filter(|m| owner.matches(&m.tags))
            .map(|m| Instance {
                id: m.id,
                name: m.name,
                ips: vec![m.ip.into()],
                tags: m.tags,
            })
            .collect())
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.check_binaries()?;
        if !nix::unistd::geteuid().is_root() {
            return Err(perr(
                ErrorKind::PermissionDenied,
                "the local provider creates network namespaces and links: run as root",
            ));
        }
        Ok(vec![
            format!("forwarder binary {}", self.cfg.forwarder_bin.display()),
            format!("kata-agent binary {}", self.cfg.agent_bin.display()),
            format!(
                "running as root; instances on bridge {} in {}/24",
                self.cfg.bridge, self.cfg.subnet
            ),
        ])
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let dir = self.dir(instance_id);
        let mut out = String::new();
        for log in ["forwarder.log", "agent.log"] {
            if let Ok(s) = std::fs::read_to_string(dir.join(log)) {
                let lines: Vec<&str> = s.lines().collect();
                let tail = &lines[lines.len().saturating_sub(10)..];
                out.push_str(&format!("--- {log}\n{}\n", tail.join("\n")));
            }
        }
        (!out.is_empty()).then_some(out)
    }
}
