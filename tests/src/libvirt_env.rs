//! A real libvirt to test against: makes sure `virtlogd` and `libvirtd`
//! run (starting them when they do not, and stopping what it started when
//! the last user is gone), builds or reuses the minimal pod VM image, and
//! gives each test its own isolated libvirt network and directory pool,
//! removed — with every domain, volume and console log the test made —
//! when the [`LibvirtEnv`] is dropped, even after a failed assertion.
//!
//! Without root or libvirt a test fails with the reason (never a silent
//! skip): `scripts/setup.sh --libvirt` installs what is needed.

use crate::podvm_build::build_podvm_image;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The URI every test uses.
pub const URI: &str = "qemu:///system";

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `virsh -c qemu:///system <args>`.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let mut a = vec!["-c", URI];
    a.extend_from_slice(args);
    run("virsh", &a)
}

/// The libvirt daemons this process started (stopped when dropped).
struct Daemons {
    started: Vec<(&'static str, i32)>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (name, pid) in self.started.iter().rev() {
            eprintln!("stopping {name} (pid {pid}) started by the tests");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn daemons() -> Result<Arc<Daemons>, String> {
    static SHARED: Mutex<Weak<Daemons>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = slot.upgrade() {
        return Ok(d);
    }
    let mut d = Daemons {
        started: Vec::new(),
    };
    // A daemon another test binary just stopped may still be exiting
    // (its pid alive, its socket gone): keep checking, and start whichever
    // is not running, until libvirtd answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = virsh(&["version"]) {
        if Instant::now() > deadline {
            return Err(format!("libvirtd does not answer: {e}"));
        }
        for (name, pidfile) in [
            ("virtlogd", "/run/virtlogd.pid"),
            ("libvirtd", "/run/libvirtd.pid"),
        ] {
            let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
            let running = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .is_some_and(alive);
            if running {
                continue;
            }
            let _ = std::fs::remove_file(pidfile);
            run(name, &["-d"])?;
            let started = Instant::now();
            let pid = loop {
                if let Some(pid) = std::fs::read_to_string(pidfile)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    break pid;
                }
                if started.elapsed() > Duration::from_secs(5) {
                    return Err(format!("{name} -d wrote no {pidfile}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            eprintln!("started {name} (pid {pid}) for the tests");
            d.started.push((name, pid));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = Arc::new(d);
    *slot = Arc::downgrade(&d);
    Ok(d)
}

/// Why libvirt tests cannot run here, if they cannot.
fn missing_facility() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (libvirt system daemon, network namespaces)".into());
    }
    for tool in ["virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!(
                "{tool} not installed (scripts/setup.sh --libvirt installs libvirt and QEMU)"
            ));
        }
    }
    None
}

/// The minimal pod VM image: `vmlinux` and `initrd.img` in a directory.
/// `PEERPOD_PODVM_DIR` names a prebuilt one; otherwise
/// `podvm-image/build.sh` builds it (or reuses its cached build) from the
/// binaries next to the test.
pub fn minimal_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(d) = std::env::var_os("PEERPOD_PODVM_DIR") {
                return Ok(PathBuf::from(d));
            }
            build_podvm_image(&[], "pod VM image")
        })
        .clone()
}

/// One test's network, pool and console directory.
pub struct LibvirtEnv {
    /// Short random token in every name the test makes.
    pub token: String,
    pub network: String,
    pub bridge: String,
    pub pool: String,
    pub pool_dir: PathBuf,
    pub console_dir: PathBuf,
    /// The host's address on the test network (the VMs' gateway).
    pub gateway: Ipv4Addr,
    pub image: PathBuf,
    _daemons: Arc<Daemons>,
}

impl LibvirtEnv {
    /// A fresh environment for a test: fails the test, naming what is
    /// missing, where libvirt tests cannot run.
    pub fn required() -> Self {
        Self::new().unwrap_or_else(|why| {
            panic!("the libvirt test cannot run here: {why} (scripts/setup.sh --libvirt)")
        })
    }

    /// A fresh environment, or why libvirt cannot be used here.
    pub fn new() -> Result<Self, String> {
        let fail = |why: String| -> Result<Self, String> { Err(why) };
        if let Some(why) = missing_facility() {
            return fail(why);
        }
        let daemons = match daemons() {
            Ok(d) => d,
            Err(e) => return fail(format!("libvirt daemons: {e}")),
        };
        let image = match minimal_image() {
            Ok(i) => i,
            Err(e) => return fail(format!("pod VM image: {e}")),
        };
        let n: u32 = rand::random();
        let token = format!("{:06x}", n & 0xff_ffff);
        let octet = 64 + (n >> 24) % 128;
        let gateway = Ipv4Addr::new(10, 232, octet as u8, 1);
        let mut env = Self {
            network: format!("ppt-{token}"),
            bridge: format!("pptbr{token}"),
            pool: format!("ppt-{token}"),
            pool_dir: PathBuf::from(format!("/var/lib/libvirt/images/ppt-{token}")),
            console_dir: PathBuf::from(format!("/var/log/libvirt/qemu/ppt-{token}")),
            gateway,
            image,
            token,
            _daemons: daemons,
        };
        if let Err(e) = env.make() {
            env.remove();
            panic!("setting up the libvirt test environment: {e}");
        }
        Ok(env)
    }

    /// One attempt at the network on `self.gateway`'s /24.
    fn try_network(&self) -> Result<(), String> {
        let g = self.gateway.octets();
        let net_xml = format!(
            "<network><name>{}</name><bridge name='{}' stp='off'/>\
             <ip address='{}' netmask='255.255.255.0'><dhcp>\
             <range start='{}.{}.{}.10' end='{}.{}.{}.250'/></dhcp></ip></network>",
            self.network, self.bridge, self.gateway, g[0], g[1], g[2], g[0], g[1], g[2]
        );
        let f = self.pool_dir.with_extension("net.xml");
        std::fs::write(&f, net_xml).map_err(|e| e.to_string())?;
        let r = virsh(&["net-create", &f.to_string_lossy()]);
        let _ = std::fs::remove_file(&f);
        r?;
        Ok(())
    }

    /// Creates the test network, moving to another /24 while libvirt says
    /// the subnet is taken: tests in other processes pick theirs at random
    /// from the same 128, so two can meet.
    fn make_network(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..16 {
            match self.try_network() {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("already in use") => {
                    last = e;
                    let octet = 64 + rand::random::<u32>() % 128;
                    self.gateway = Ipv4Addr::new(10, 232, octet as u8, 1);
                }
                Err(e) => return Err(e),
            }
        }
        Err(format!("no free test subnet after 16 tries: {last}"))
    }

    fn make(&mut self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for d in [&self.pool_dir, &self.console_dir] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        self.make_network()?;
        virsh(&[
            "pool-create-as",
            &self.pool,
            "dir",
            "--target",
            &self.pool_dir.to_string_lossy(),
        ])?;
        Ok(())
    }

    /// A provider configuration on this environment booting the minimal
    /// image directly (1 vCPU, 512 MiB).
    pub fn config(&self) -> peerpod_provider_libvirt::LibvirtConfig {
        let raw = peerpod_provider_libvirt::RawLibvirtConfig {
            uri: Some(URI.into()),
            pool: Some(self.pool.clone()),
            network: Some(self.network.clone()),
            kernel: Some(self.image.join("vmlinux")),
            initrd: Some(self.image.join("initrd.img")),
            cpu: Some("1".into()),
            memory: Some("512".into()),
            console_dir: Some(self.console_dir.clone()),
            ..Default::default()
        };
        raw.check().expect("test configuration is valid")
    }

    /// Domains whose name carries `needle`.
    pub fn domains_named(needle: &str) -> Vec<String> {
        virsh(&["list", "--all", "--name"])
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.contains(needle))
            .map(String::from)
            .collect()
    }

    /// Volumes in the test pool.
    pub fn volumes(&self) -> Vec<String> {
        let _ = virsh(&["pool-refresh", &self.pool]);
        virsh(&["vol-list", &self.pool])
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }

    /// Files in the console directory.
    pub fn console_logs(&self) -> Vec<String> {
        std::fs::read_dir(&self.console_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The DHCP host reservations on the test network.
    pub fn reservations(&self) -> Vec<String> {
        virsh(&["net-dumpxml", &self.network])
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<host "))
            .map(String::from)
            .collect()
    }

    /// libvirt's own QEMU logs of domains whose name carries `needle`.
    pub fn qemu_logs(needle: &str) -> Vec<String> {
        std::fs::read_dir("/var/log/libvirt/qemu")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(needle) && n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything the test still has: domains of `needle` and their QEMU
    /// logs, volumes, console logs, address reservations.
    pub fn leftovers(&self, needle: &str) -> Vec<String> {
        let mut v = Self::domains_named(needle);
        v.extend(Self::qemu_logs(needle));
        v.extend(self.volumes());
        v.extend(self.console_logs());
        v.extend(self.reservations());
        v
    }

    fn remove(&self) {
        for d in Self::domains_named(&self.token) {
            let _ = virsh(&["destroy", &d]);
            let _ = virsh(&["undefine", &d]);
        }
        for l in Self::qemu_logs(&self.token) {
            let _ = std::fs::remove_file(Path::new("/var/log/libvirt/qemu").join(l));
        }
        for v in self.volumes() {
            let _ = virsh(&["vol-delete", &v, "--pool", &self.pool]);
        }
        let _ = virsh(&["pool-destroy", &self.pool]);
        let _ = virsh(&["net-destroy", &self.network]);
        let _ = std::fs::remove_dir_all(&self.pool_dir);
        let _ = std::fs::remove_dir_all(&self.console_dir);
    }
}

impl Drop for LibvirtEnv {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the domains a test's warm pool records name (pool VMs are
/// called `podvm-pool-…`, not after the test's token, so
/// [`LibvirtEnv`]'s own cleanup does not see them) when dropped, even
/// after a failed assertion. `dir` is the adaptor's `<state dir>/pool`.
pub struct PoolDomains(pub PathBuf);

impl Drop for PoolDomains {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with("podvm-pool-") {
                let _ = virsh(&["destroy", name]);
                let _ = virsh(&["undefine", name]);
            }
        }
    }
}
