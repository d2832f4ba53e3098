//! The `local` provider: no cloud needed. Each instance is an
//! `agent-protocol-forwarder` plus a kata-agent (the test double by
//! default, or a real `kata-agent` binary) running on this host inside a
//! network namespace of its own (`pplocal-<id>`, listed by `ip netns`),
//! joined to a host bridge by a veth pair with its own address — so the
//! adaptor reaches it over a real network hop, as it reaches a cloud VM.
//! The forwarder gets its config the way a cloud hands over user data: a
//! file in the instance's directory.
//!
//! Everything an instance owns is named after its id and recorded in
//! `<state dir>/instances/<id>/meta.json` before it is made, so a
//! restarted adaptor lists and deletes instances a crashed one left,
//! whatever step the crash interrupted.

pub mod cli;
pub mod error;
pub mod link;
pub mod neigh;
pub use peerpod_podnet::netns;
pub mod process;
pub mod state;

pub use error::Error;

use async_trait::async_trait;
use error::{joined, Step};
use peerpod_provider_api::{
    check_instance_id, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use state::Meta;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The env var the kata-agent (and its test double) reads its listen
/// address from.
pub const AGENT_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";
/// How long processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Longest path a unix socket address can hold (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Lines of each log `console_tail` returns.
const TAIL_LINES: usize = 20;

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Instance directories live in `<state_dir>/instances/`.
    pub state_dir: PathBuf,
    /// `agent-protocol-forwarder`.
    pub forwarder_bin: PathBuf,
    /// The kata-agent: `kata-agent-double` by default; any binary that
    /// listens where `KATA_AGENT_SERVER_ADDR` says.
    pub agent_bin: PathBuf,
    /// The VM's user-data step (`process-user-data`), run before the
    /// forwarder as a pod VM runs it at boot.
    pub user_data_bin: PathBuf,
    /// Host bridge joining the instances (created on demand, removed with
    /// the last instance).
    pub bridge: String,
    /// The instances' network address; the bridge takes the first host
    /// address, instances the rest.
    pub subnet: Ipv4Addr,
    /// Its prefix length (16–30). The default /20 holds 4093 instances (a
    /// /24 held 253: too few for a node running hundreds of sandboxes).
    pub prefix_len: u8,
}

/// Parses `a.b.c.d/len` (or a bare address, meaning /24 as before).
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = match s.trim().split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .map_err(|_| format!("subnet {s:?}: prefix length {l:?} is not a number"))?,
        ),
        None => (s.trim(), 24),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("subnet {s:?}: {addr:?} is not an IPv4 address"))?;
    Ok((addr, len))
}

impl LocalConfig {
    /// Defaults: binaries next to the running executable
    /// (`agent-protocol-forwarder`, `kata-agent-double`), bridge
    /// `pplocal0`, subnet 10.213.0.0/20.
    pub fn with_defaults(state_dir: impl Into<PathBuf>) -> Self {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Self {
            state_dir: state_dir.into(),
            forwarder_bin: dir.join("agent-protocol-forwarder"),
            agent_bin: dir.join("kata-agent-double"),
            user_data_bin: dir.join("process-user-data"),
            bridge: "pplocal0".into(),
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            prefix_len: 20,
        }
    }

    /// Host address number `index` of the subnet.
    fn ip(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + index)
    }

    /// Addresses in the subnet, network and broadcast included.
    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix_len.min(32)))
    }

    /// How many instances fit (all host addresses but the bridge's).
    pub fn capacity(&self) -> u32 {
        self.size().saturating_sub(3)
    }

    /// Whether `ip` lies in the subnet.
    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.subnet)) < self.size()
    }

    /// The bridge's address: the instances' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ip(1)
    }
}

/// See the crate doc.
pub struct LocalProvider {
    cfg: LocalConfig,
    /// Held for the short bookkeeping steps only — choosing an address
    /// and recording the instance at create, removing its record and
    /// deciding whether the bridge goes at delete — so many creates and
    /// deletes build and tear down their namespaces at once.
    lock: Mutex<()>,
    /// Leftovers of creates a crash interrupted are removed once, at the
    /// first create (later ones cannot leave any while we run).
    swept: std::sync::atomic::AtomicBool,
    /// Where the next address search starts (see `free_index`).
    cursor: std::sync::atomic::AtomicU32,
}

/// What one create has made so far; a failed create undoes exactly that.
#[derive(Debug, Default, Clone, Copy)]
struct Made {
    netns: bool,
    veth: bool,
}

impl Made {
    const ALL: Made = Made {
        netns: true,
        veth: true,
    };
}

/// The pod network namespace the instance's forwarder builds.
pub fn pod_netns_name(instance_netns: &str) -> String {
    format!("{instance_netns}-pod")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_executable(what: &str, p: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: &str| {
        Err(Error::Config(format!(
            "{what} binary {}: {why}",
            p.display()
        )))
    };
    match std::fs::metadata(p) {
        Ok(m) if !m.is_file() => bad("not a regular file"),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => bad("not executable"),
        Ok(_) => Ok(()),
        Err(e) => bad(&e.to_string()),
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Whether this process holds the capabilities the provider uses
/// (CAP_NET_ADMIN for links, CAP_SYS_ADMIN for namespaces and mounts).
fn privileges() -> Result<String, Error> {
    if nix::unistd::geteuid().is_root() {
        return Ok("running as root".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [("CAP_NET_ADMIN", 12), ("CAP_SYS_ADMIN", 21)]
        .into_iter()
        .filter(|(_, bit)| eff & (1u64 << bit) == 0)
        .map(|(name, _)| name)
        .collect();
    if missing.is_empty() {
        Ok("not root, but holding CAP_NET_ADMIN and CAP_SYS_ADMIN".into())
    } else {
        Err(Error::Privilege(format!(
            "the local provider creates network namespaces and links: run as root or grant {}",
            missing.join(" and ")
        )))
    }
}

fn instance(m: Meta) -> Instance {
    Instance {
        id: m.id,
        name: m.name,
        ips: vec![m.ip.into()],
        tags: m.tags,
        instance_type: None,
    }
}

/// The last `n` lines of a file, reading at most its last 64 KiB.
fn tail(path: &Path, n: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    // A cut first line is partial: drop it unless it is all there is.
    let from = usize::from(start > 0 && lines.len() > 1);
    let lines = &lines[from..];
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

impl LocalProvider {
    /// Checks the configuration (names, subnet, path lengths) without
    /// touching the system; binaries are checked at each create and by
    /// [`Provider::verify`].
    pub fn new(mut cfg: LocalConfig) -> Result<Self, ProviderError> {
        if !valid_ifname(&cfg.bridge) {
            return Err(Error::Config(format!(
                "bridge name {:?} must be 1–15 characters without '/', ':' or spaces",
                cfg.bridge
            ))
            .into());
        }
        if !(16..=30).contains(&cfg.prefix_len) {
            return Err(Error::Config(format!(
                "subnet prefix length /{} must be between /16 and /30",
                cfg.prefix_len
            ))
            .into());
        }
        if u32::from(cfg.subnet) & (cfg.size() - 1) != 0 {
            return Err(Error::Config(format!(
                "subnet {}/{} is not a network address (its host bits are not zero)",
                cfg.subnet, cfg.prefix_len
            ))
            .into());
        }
        // Children run in their instance directory: hand them absolute paths.
        for p in [
            &mut cfg.state_dir,
            &mut cfg.forwarder_bin,
            &mut cfg.agent_bin,
            &mut cfg.user_data_bin,
        ] {
            *p = std::path::absolute(&*p)
                .map_err(|e| Error::Config(format!("path {}: {e}", p.display())))?;
        }
        let sock = state::instances_dir(&cfg.state_dir)
            .join("l0123456789")
            .join("agent.sock");
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::Config(format!(
                "state directory {} is too long: the agent socket path {} would exceed {MAX_SOCKET_PATH} bytes",
                cfg.state_dir.display(),
                sock.display()
            ))
            .into());
        }
        Ok(Self {
            cfg,
            lock: Mutex::new(()),
            swept: std::sync::atomic::AtomicBool::new(false),
            cursor: std::sync::atomic::AtomicU32::new(2),
        })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    fn dir(&self, id: &str) -> PathBuf {
        state::instances_dir(&self.cfg.state_dir).join(id)
    }

    fn check_binaries(&self) -> Result<(), Error> {
        check_executable("forwarder", &self.cfg.forwarder_bin)?;
        check_executable("user-data step", &self.cfg.user_data_bin)?;
        check_executable("kata-agent", &self.cfg.agent_bin)
    }

    /// The first free address at or after the cursor, wrapping around.
    /// Addresses are handed out round-robin rather than lowest-first: a
    /// freshly freed address would otherwise go to the next instance at
    /// once, while the host's neighbour cache still maps it to the old
    /// instance's MAC — connections to the new one then stall for
    /// seconds until the stale entry is probed away.
    fn free_index(&self, existing: &[Meta]) -> Option<u32> {
        let used: std::collections::HashSet<Ipv4Addr> = existing.iter().map(|m| m.ip).collect();
        let last = self.cfg.size() - 1;
        let from = self
            .cursor
            .load(std::sync::atomic::Ordering::SeqCst)
            .clamp(2, last.max(2));
        (from..last)
            .chain(2..from)
            .find(|i| !used.contains(&self.cfg.ip(*i)))
    }

    /// The steps of a create after its record exists; `made` tells a
    /// failure what to undo.
    async fn build(
        &self,
        meta: &mut Meta,
        dir: &Path,
        user_data: Vec<u8>,
        made: &mut Made,
    ) -> Result<(), Error> {
        let ns_name = meta.netns.clone();
        let step = format!("create network namespace {ns_name}");
        joined(
            tokio::task::spawn_blocking({
                let step = step.clone();
                move || netns::create(&ns_name).step(step)
            })
            .await,
            &step,
        )?;
        made.netns = true;
        let ns = Arc::new(
            netns::open(&meta.netns).step(format!("open network namespace {}", meta.netns))?,
        );

        let h = link::connect()?;
        let bridge = link::ensure_bridge(
            &h,
            &self.cfg.bridge,
            self.cfg.gateway(),
            self.cfg.prefix_len,
        )
        .await?;
        // The peer gets a unique name in the host namespace; inside it
        // becomes eth0.
        let peer = format!("plp{}", &meta.id[1..]);
        link::create_veth(&h, &meta.veth, &peer).await?;
        made.veth = true;
        link::attach_veth(&h, &meta.veth, &peer, bridge, &ns).await?;
        let (ip, gw, ns_name) = (meta.ip, self.cfg.gateway(), meta.netns.clone());
        let prefix = self.cfg.prefix_len;
        let step = format!("configure eth0 in {ns_name}");
        joined(
            tokio::task::spawn_blocking({
                let step = step.clone();
                move || {
                    netns::run_in(&ns_name, move || {
                        link::configure_inside(&peer, ip, prefix, gw).map_err(std::io::Error::other)
                    })
                    .step(step)
                }
            })
            .await,
            &step,
        )?;

        // As a VM boots: the user-data step turns the document into the
        // forwarder config (and initdata, registry auth) under run/.
        let user_data_file = dir.join("user-data");
        state::write_atomic(&user_data_file, &user_data, 0o600).step("write user-data")?;
        let run_dir = dir.join("run");
        let step = "run the user-data step (process-user-data)".to_string();
        let out = {
            let mut cmd = std::process::Command::new(&self.cfg.user_data_bin);
            cmd.args(["--source", "file", "--file"])
                .arg(&user_data_file)
                .arg("--out-dir")
                .arg(&run_dir);
            joined(
                tokio::task::spawn_blocking({
                    let step = step.clone();
                    move || cmd.output().step(step)
                })
                .await,
                &step,
            )?
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("no output").to_string();
            return Err(Error::Io {
                step,
                source: std::io::Error::other(last),
            });
        }
        let config = run_dir.join("daemon.json");
        let sock = dir.join("agent.sock");
        let specs = [
            process::Spawn {
                what: "kata-agent".into(),
                program: self.cfg.agent_bin.clone(),
                args: vec![],
                env: vec![(
                    AGENT_ADDR_ENV.to_string(),
                    format!("unix://{}", sock.display()),
                )],
                log: dir.join("agent.log"),
                cwd: dir.to_path_buf(),
            },
            process::Spawn {
                what: "forwarder".into(),
                program: self.cfg.forwarder_bin.clone(),
                args: vec![
                    "--config".into(),
                    config.into_os_string(),
                    "--agent-socket".into(),
                    sock.into_os_string(),
                    // The pod namespace the forwarder builds must not clash
                    // with other instances on this host (a VM has one).
                    "--pod-netns".into(),
                    pod_netns_name(&meta.netns).into(),
                ],
                env: vec![],
                log: dir.join("forwarder.log"),
                cwd: dir.to_path_buf(),
            },
        ];
        for spec in specs {
            let what = spec.what.clone();
            let step = format!("start {what} {}", spec.program.display());
            let ns = Arc::clone(&ns);
            let p = joined(
                tokio::task::spawn_blocking({
                    let step = step.clone();
                    move || {
                        process::spawn_in(&spec, &ns)
                            .map_err(|source| Error::Spawn { step, source })
                    }
                })
                .await,
                &step,
            )?;
            tracing::debug!(instance = %meta.id, what = %p.what, pid = p.pid, "started");
            meta.processes.push(p);
            state::save(dir, meta).step(format!("record the {what} process"))?;
        }
        Ok(())
    }

    /// Removes what an instance owns (all of it, or for a failed create
    /// what `made` says); each step tolerates "already gone", and every
    /// step runs even when one fails. The record is removed only when
    /// everything else went, so a failed delete can be retried.
    async fn teardown(&self, m: &Meta, made: Made) -> Result<(), Error> {
        let mut first: Option<Error> = None;
        let mut note = |r: Result<(), Error>| {
            if let Err(e) = r {
                tracing::warn!(instance = %m.id, error = %e, "teardown step failed");
                first.get_or_insert(e);
            }
        };

        // Processes: the recorded ones (pid + start time checked) and
        // anything else inside the instance's namespace (started but not
        // recorded before a crash, or children of ours) or inside the pod
        // namespace its forwarder built — where the agent runs the
        // containers' processes. Those outlive the agent (a VM would take
        // them down with it), may ignore SIGTERM (a container's PID 1
        // without a handler), and would keep the pod namespace and its
        // VXLAN device alive after the namespace is unmounted.
        let mut targets: Vec<process::Target> = m
            .processes
            .iter()
            .filter_map(process::Target::recorded)
            .collect();
        let namespaces = if made.netns {
            vec![m.netns.clone(), pod_netns_name(&m.netns)]
        } else {
            Vec::new()
        };
        let mut left = Vec::new();
        // A second round catches what the agent started while the first
        // round was stopping it.
        for _round in 0..2 {
            for ns in &namespaces {
                if let Some(id) = netns::identity(ns) {
                    for t in process::in_netns(id) {
                        if !targets.iter().any(|o| o.pid == t.pid) {
                            targets.push(t);
                        }
                    }
                }
            }
            if targets.is_empty() {
                break;
            }
            left = process::stop_all(std::mem::take(&mut targets), STOP_GRACE).await;
        }
        note(if left.is_empty() {
            Ok(())
        } else {
            Err(Error::Io {
                step: format!("stop the processes of {}", m.id),
                source: std::io::Error::other(format!("still running after SIGKILL: {left:?}")),
            })
        });

        let h = link::connect();
        if made.veth {
            note(match &h {
                Ok(h) => link::delete(h, &m.veth).await.map_err(Error::from),
                Err(e) => Err(Error::Io {
                    step: format!("delete veth {}", m.veth),
                    source: std::io::Error::other(e.to_string()),
                }),
            });
        }
        if made.netns {
            for ns in [pod_netns_name(&m.netns), m.netns.clone()] {
                let step = format!("remove network namespace {ns}");
                note(joined(
                    tokio::task::spawn_blocking({
                        let step = step.clone();
                        move || netns::remove(&ns).step(step)
                    })
                    .await,
                    &step,
                ));
            }
        }
        if let Some(e) = first {
            return Err(e);
        }

        let dir = self.dir(&m.id);
        let _g = self.lock.lock().await;
        state::remove_dir(&dir).step(format!("remove {}", dir.display()))?;

        // The bridge goes with the last instance on it.
        let others = state::load_all(&self.cfg.state_dir)
            .iter()
            .any(|o| o.bridge == m.bridge);
        if !others {
            let h = h?;
            link::delete_bridge_if_unused(&h, &m.bridge).await?;
        }
        Ok(())
    }

    /// Addresses of the subnet held by links other than our bridge: they
    /// would clash with the instances' routes.
    async fn subnet_clashes(&self) -> Result<Vec<String>, Error> {
        use futures::TryStreamExt;
        use netlink_packet_route::address::AddressAttribute;
        let h = link::connect()?;
        let bridge = link::index_of(&h, &self.cfg.bridge).await?;
        let mut addrs = h.address().get().execute();
        let mut out = Vec::new();

        while let Some(a) = addrs.try_next().await.map_err(|e| link::LinkError {
            step: "list addresses".into(),
            detail: e.to_string(),
            errno: None,
        })? {
            if Some(a.header.index) == bridge {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr {
                    if self.cfg.contains(*ip) {
                        out.push(format!("{ip} on link #{}", a.header.index));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        req.refuse_gpus("local")?;
        self.check_binaries()?;
        let g = self.lock.lock().await;
        if !self.swept.swap(true, std::sync::atomic::Ordering::SeqCst) {
            state::remove_unfinished(&self.cfg.state_dir);
            neigh::ensure_capacity(self.cfg.capacity());
        }
        let existing = state::load_all(&self.cfg.state_dir);
        let index = self.free_index(&existing).ok_or_else(|| {
            Error::Full(format!(
                "all {} instance addresses of {}/{} are in use",
                self.cfg.capacity(),
                self.cfg.subnet,
                self.cfg.prefix_len
            ))
        })?;
        self.cursor
            .store(index + 1, std::sync::atomic::Ordering::SeqCst);
        let id = loop {
            let id = state::random_id();
            if !self.dir(&id).exists() && !netns::path(&format!("pplocal-{id}")).exists() {
                break id;
            }
        };
        let dir = self.dir(&id);
        let mut meta = Meta {
            id: id.clone(),
            name: req.name.clone(),
            tags: req.all_tags(),
            ip: self.cfg.ip(index),
            netns: format!("pplocal-{id}"),
            veth: format!("ppl{}", &id[1..]),
            bridge: self.cfg.bridge.clone(),
            processes: Vec::new(),
            created_at: now_secs(),
        };
        // Recorded before anything is made, so nothing can be orphaned
        // (the directory appears with its record in it, in one rename).
        state::create_with_meta(&dir, &meta)
            .step(format!("record the instance in {}", dir.display()))?;
        drop(g);
        let mut made = Made::default();
        if let Err(e) = self.build(&mut meta, &dir, req.user_data, &mut made).await {
            tracing::warn!(instance = %id, error = %e, "create failed; removing what was made");
            if let Err(undo) = self.teardown(&meta, made).await {
                tracing::error!(instance = %id, error = %undo,
                    "cleanup after a failed create failed; the instance stays listed for a later delete");
            }
            return Err(e.into_provider_error(Some(&format!("instance {id}"))));
        }
        tracing::info!(instance = %id, name = %meta.name, ip = %meta.ip, netns = %meta.netns,
            "local instance started");
        Ok(instance(meta))
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        if !state::valid_id(instance_id) {
            tracing::debug!(
                instance = instance_id,
                "delete: not a local instance id (nothing to do)"
            );
            return Ok(());
        }
        let Some(m) = state::load(&self.cfg.state_dir, instance_id) else {
            tracing::debug!(
                instance = instance_id,
                "delete: no such local instance (already gone)"
            );
            return Ok(());
        };
        self.teardown(&m, Made::ALL)
            .await
            .map_err(|e| e.into_provider_error(Some(&format!("delete instance {instance_id}"))))?;
        tracing::info!(instance = instance_id, "local instance deleted");
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        Ok(state::load_all(&self.cfg.state_dir)
            .into_iter()
            .filter(|m| owner.matches(&m.tags))
            .map(instance)
            .collect())
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = Vec::new();
        self.check_binaries()?;
        lines.push(format!(
            "forwarder binary {} is executable",
            self.cfg.forwarder_bin.display()
        ));
        lines.push(format!(
            "kata-agent binary {} is executable",
            self.cfg.agent_bin.display()
        ));
        lines.push(privileges()?);
        let inst = state::instances_dir(&self.cfg.state_dir);
        std::fs::create_dir_all(&inst)
            .step(format!("create state directory {}", inst.display()))?;
        let n = state::load_all(&self.cfg.state_dir).len();
        lines.push(format!(
            "state directory {} is writable ({n} instances recorded)",
            self.cfg.state_dir.display()
        ));
        let clashes = self.subnet_clashes().await?;
        if !clashes.is_empty() {
            return Err(Error::Config(format!(
                "subnet {}/{} is already used on this host ({}): choose another",
                self.cfg.subnet,
                self.cfg.prefix_len,
                clashes.join(", ")
            ))
            .into());
        }
        lines.push(format!(
            "instances on bridge {} in {}/{} (room for {}; no other link uses that subnet)",
            self.cfg.bridge,
            self.cfg.subnet,
            self.cfg.prefix_len,
            self.cfg.capacity()
        ));
        Ok(lines)
    }

    /// The record's tags and name (what `list` reports) change; the
    /// instance's namespace and links keep their id-based names.
    async fn retag(
        &self,
        instance_id: &str,
        name: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        check_instance_id(instance_id)?;
        let _g = self.lock.lock().await;
        let Some(mut m) = state::load(&self.cfg.state_dir, instance_id) else {
            return Err(ProviderError::new(
                peerpod_provider_api::ErrorKind::NotFound,
                format!("retag: no local instance {instance_id}"),
            ));
        };
        m.tags
            .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        m.name = name.to_string();
        state::save(&self.dir(instance_id), &m).step(format!("retag instance {instance_id}"))?;
        Ok(true)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        if !state::valid_id(instance_id) {
            return None;
        }
        let dir = self.dir(instance_id);
        let mut out = String::new();
        for log in ["forwarder.log", "agent.log"] {
            if let Some(t) = tail(&dir.join(log), TAIL_LINES) {
                out.push_str(&format!("--- {log}\n{t}\n"));
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> LocalConfig {
        let mut c = LocalConfig::with_defaults(dir.join("state"));
        c.bridge = "ppltest".into();
        c
    }

    #[test]
    fn config_is_checked() {
        let d = tempfile::tempdir().unwrap();
        assert!(LocalProvider::new(cfg(d.path())).is_ok());
        for bad in ["", "a-bridge-name-too-long", "a/b", "a b", "a:b"] {
            let mut c = cfg(d.path());
            c.bridge = bad.into();
            let e = LocalProvider::new(c).err().unwrap();
            assert_eq!(
                e.kind,
                peerpod_provider_api::ErrorKind::InvalidConfig,
                "{bad}"
            );
        }
        let mut c = cfg(d.path());
        c.subnet = Ipv4Addr::new(10, 0, 0, 5);
        assert!(LocalProvider::new(c).is_err());
        let mut c = cfg(d.path());
        c.subnet = Ipv4Addr::new(10, 0, 8, 0);
        assert!(
            LocalProvider::new(c.clone()).is_err(),
            "10.0.8.0 is not a /20 network"
        );
        c.prefix_len = 24;
        assert!(LocalProvider::new(c).is_ok());
        let mut c = cfg(d.path());
        c.prefix_len = 31;
        assert!(LocalProvider::new(c).is_err());
        let mut c = cfg(d.path());
        c.state_dir = d.path().join("x".repeat(100));
        let e = LocalProvider::new(c).err().unwrap();
        assert!(e.message.contains("too long"), "{e}");
        // Relative paths become absolute (children run elsewhere).
        let mut c = cfg(d.path());
        c.state_dir = "rel/state".into();
        let p = LocalProvider::new(c).unwrap();
        assert!(p.config().state_dir.is_absolute());
        assert_eq!(p.name(), "local");
    }

    #[test]
    fn defaults() {
        let c = LocalConfig::with_defaults("/var/lib/peerpod/local");
        assert_eq!(c.bridge, "pplocal0");
        assert_eq!(c.subnet, Ipv4Addr::new(10, 213, 0, 0));
        assert_eq!(c.prefix_len, 20);
        assert_eq!(c.capacity(), 4093);
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert!(c.agent_bin.ends_with("kata-agent-double"));
        assert!(c.forwarder_bin.ends_with("agent-protocol-forwarder"));
    }

    #[test]
    fn smallest_free_address() {
        let d = tempfile::tempdir().unwrap();
        let p = LocalProvider::new(cfg(d.path())).unwrap();
        let m = |index: u32| Meta {
            id: "l0000000000".into(),
            name: String::new(),
            tags: Default::default(),
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + index),
            netns: String::new(),
            veth: String::new(),
            bridge: String::new(),
            processes: vec![],
            created_at: 0,
        };
        assert_eq!(p.free_index(&[]), Some(2));
        assert_eq!(p.free_index(&[m(2), m(4)]), Some(3));
        // Round-robin: after .9 was handed out, a freed .3 waits its turn.
        p.cursor.store(10, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(p.free_index(&[m(2), m(4)]), Some(10));
        let tail: Vec<Meta> = (10..4095).map(m).collect();
        assert_eq!(p.free_index(&tail), Some(2), "wraps around");
        p.cursor.store(2, std::sync::atomic::Ordering::SeqCst);
        // Past the old /24: .0.255 and .1.0 are ordinary host addresses of a /20.
        let many: Vec<Meta> = (2..300).map(m).collect();
        assert_eq!(p.free_index(&many), Some(300));
        assert_eq!(p.config().ip(300), Ipv4Addr::new(10, 213, 1, 44));
        let full: Vec<Meta> = (2..4095).map(m).collect();
        assert_eq!(p.free_index(&full), None);
        assert_eq!(full.len() as u32, p.config().capacity());
        assert_eq!(
            parse_subnet("10.9.0.0/22").unwrap(),
            (Ipv4Addr::new(10, 9, 0, 0), 22)
        );
        assert_eq!(parse_subnet("10.9.1.0").unwrap().1, 24);
        assert!(parse_subnet("10.9.0.0/x")
            .unwrap_err()
            .contains("prefix length"));
        assert!(parse_subnet("nope/20").unwrap_err().contains("not an IPv4"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, text).unwrap();
        let t = tail(&f, 3).unwrap();
        assert_eq!(t, "line 97\nline 98\nline 99");
        let big: String = (0..20000).map(|i| format!("entry {i}\n")).collect();
        std::fs::write(&f, big).unwrap();
        assert!(tail(&f, 2).unwrap().ends_with("entry 19999"));
        assert!(tail(&d.path().join("none"), 2).is_none());
    }

    #[tokio::test]
    async fn console_tail_reads_both_logs_and_rejects_odd_ids() {
        let d = tempfile::tempdir().unwrap();
        let p = LocalProvider::new(cfg(d.path())).unwrap();
        let dir = p.dir("l00000000ab");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("forwarder.log"), "listening on :15150\n").unwrap();
        std::fs::write(dir.join("agent.log"), "agent up\n").unwrap();
        let t = p.console_tail("l00000000ab").await.unwrap();
        assert!(t.contains("--- forwarder.log\nlistening on :15150"), "{t}");
        assert!(t.contains("--- agent.log\nagent up"), "{t}");
        assert!(p.console_tail("../../etc").await.is_none());
        assert!(p.console_tail("l00000000ff").await.is_none());
    }

    #[tokio::test]
    async fn missing_binaries_and_foreign_ids() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.forwarder_bin = d.path().join("no-forwarder");
        let p = LocalProvider::new(c).unwrap();
        let e = p.verify().await.unwrap_err();
        assert_eq!(e.kind, peerpod_provider_api::ErrorKind::InvalidConfig);
        assert!(e.message.contains("no-forwarder"), "{e}");
        // Not ids of ours: nothing to delete.
        p.delete_instance("i-0abc").await.unwrap();
        assert!(p.delete_instance(" ").await.is_err());
    }
}
