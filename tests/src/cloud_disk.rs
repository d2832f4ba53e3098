//! Fixtures for the cloud pod VM disk (`podvm-image/build.sh --variant
//! debian`): the build itself (once per test run, reused from the build
//! cache while its inputs are unchanged), an AWS IMDSv2 stand-in that
//! serves the VM its user data, and a QEMU (TCG) VM booting the disk through
//! UEFI firmware (OVMF) the way a cloud does: NVMe root disk, DMI strings
//! of an EC2 instance, a DHCP network on which 169.254.169.254:80 reaches
//! the stand-in and nothing else is reachable. Everything started here is
//! stopped when dropped, also after a failed assertion.
//!
//! A missing tool or root is a test failure naming what to install (these
//! tests never skip).

use crate::podvm_build::build_podvm_image;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The OVMF firmware (package `ovmf`) the VM boots with: code read-only,
/// a copy of the variable store per VM.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The formats the tests check; `build.sh` converts them from `disk.raw`.
pub const FORMATS: &str = "raw,vhd,gce-tar";

/// Fails the test when root or a tool the build, the checks or the boot
/// need is missing.
pub fn require_facilities() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the debian pod VM image build needs root (mmdebstrap --mode=root)"
    );
    let missing: Vec<&str> = [
        "mmdebstrap",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "mdir",
        "sfdisk",
        "debugfs",
        "qemu-img",
        "qemu-system-x86_64",
        "socat",
        "tar",
        "gzip",
    ]
    .into_iter()
    .filter(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    assert!(
        missing.is_empty(),
        "not installed: {missing:?} (scripts/setup.sh --podvm-debian installs them)"
    );
    for f in [OVMF_CODE, OVMF_VARS] {
        assert!(
            Path::new(f).exists(),
            "{f} missing (scripts/setup.sh --podvm-debian installs ovmf)"
        );
    }
}

/// The debian image's output directory, built (or found in the build
/// cache) once per test binary with the workspace's debug binaries and the
/// kata-agent double. `PEERPOD_PODVM_DEBIAN_DIR` names a prebuilt one.
pub fn debian_image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Some(d) = std::env::var_os("PEERPOD_PODVM_DEBIAN_DIR") {
                return Ok(PathBuf::from(d));
            }
            build_podvm_image(
                &["--variant", "debian", "--format", FORMATS],
                "debian pod VM disk",
            )
        })
        .clone()
}

/// One HTTP request as a stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Answer = dyn Fn(&Seen, usize) -> (u16, Vec<u8>) + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 answering each request (one per
/// connection) with `answer(request, how many came before)`, recording
/// what it saw. The metadata services are plain HTTP on a link-local
/// address; this is their shape, not their code.
pub struct HttpStandIn {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl HttpStandIn {
    pub fn start(
        answer: impl Fn(&Seen, usize) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (seen.clone(), stop.clone());
        let answer: Box<Answer> = Box::new(answer);
        std::thread::spawn(move || {
            for s in l.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let n = log.lock().unwrap_or_else(|p| p.into_inner()).len();
                if let Some(req) = Self::serve(s, &*answer, n) {
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(req);
                }
            }
        });
        Ok(Self { addr, seen, stop })
    }

    fn serve(s: TcpStream, answer: &Answer, n: usize) -> Option<Seen> {
        let mut r = BufReader::new(s.try_clone().ok()?);
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let method = parts.next()?.to_string();
        let path = parts.next()?.to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.trim().split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut req = Seen {
            method,
            path,
            headers,
            body: Vec::new(),
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        req.body = vec![0; len.min(1 << 20)];
        r.read_exact(&mut req.body).ok()?;
        let (status, body) = answer(&req, n);
        let mut s = s;
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(&body);
        Some(req)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HttpStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// The token the IMDS stand-in hands out.
pub const IMDS_TOKEN: &str = "AQAEAPeerpodTestToken==";

/// The EC2 instance metadata service, IMDSv2 only (as new instances are
/// launched by default): `PUT /latest/api/token` with a TTL header gives a
/// session token; `GET /latest/user-data` with that token in
/// `X-aws-ec2-metadata-token` gives the user data; without a valid token
/// 401, other paths 404.
pub fn aws_imds(user_data: Vec<u8>) -> std::io::Result<HttpStandIn> {
    HttpStandIn::start(move |req, _| {
        let token_ok = req.header("X-aws-ec2-metadata-token") == Some(IMDS_TOKEN);
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token")
                if req.header("X-aws-ec2-metadata-token-ttl-seconds").is_some() =>
            {
                (200, IMDS_TOKEN.as_bytes().to_vec())
            }
            ("PUT", "/latest/api/token") => (400, Vec::new()),
            (_, _) if !token_ok => (401, Vec::new()),
            ("GET", "/latest/user-data") => (200, user_data.clone()),
            _ => (404, Vec::new()),
        }
    })
}

/// A free TCP port on 127.0.0.1 (bound, read and released: QEMU binds it
/// right after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A QEMU VM booting `disk.raw` through OVMF, under TCG, as an EC2
/// instance would see its machine: the disk on NVMe (Nitro), a
/// virtio NIC on a user-mode network 169.254.169.0/24 with DHCP, isolated
/// (`restrict=on`: nothing leaves the VM but the forwards below), where TCP
/// to 169.254.169.254:80 is relayed (socat per connection) to `imds` and
/// the forwarder's port 15150 is published on 127.0.0.1:`forwarder_port`.
/// The disk is opened with `snapshot=on`: the cached image stays as built.
pub struct UefiVm {
    child: Child,
    pub console: PathBuf,
    pub forwarder_port: u16,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl UefiVm {
    pub fn boot_as_ec2(disk: &Path, imds: SocketAddr) -> std::io::Result<Self> {
        // The published port is picked free and released before QEMU binds
        // it: when another process took it meanwhile, QEMU exits at once
        // saying so, and a new port is tried.
        let mut tries = 0;
        loop {
            let mut vm = Self::start(disk, imds)?;
            std::thread::sleep(Duration::from_millis(500));
            match vm.exited() {
                Some(why) if why.contains("forwarding") && tries < 5 => tries += 1,
                _ => return Ok(vm),
            }
        }
    }

    fn start(disk: &Path, imds: SocketAddr) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)?;
        let console = dir.path().join("console.log");
        let forwarder_port = free_port()?;
        let netdev = format!(
            "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,\
             dhcpstart=169.254.169.15,hostfwd=tcp:127.0.0.1:{forwarder_port}-:15150,\
             guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO TCP:{imds}"
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1"])
            .args(["-display", "none", "-no-reboot", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0,snapshot=on",
                disk.display()
            ))
            .args(["-device", "nvme,drive=d0,serial=vol0peerpod"])
            .args([
                "-smbios",
                "type=1,manufacturer=Amazon EC2,product=m6a.large",
            ])
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.stderr"))?)
            .spawn()?;
        Ok(Self {
            child,
            console,
            forwarder_port,
            started: Instant::now(),
            _dir: dir,
        })
    }

    /// Whether QEMU still runs (with its stderr when it has exited).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(st)) => Some(format!(
                "QEMU exited ({st}): {}",
                std::fs::read_to_string(self._dir.path().join("qemu.stderr")).unwrap_or_default()
            )),
            Err(e) => Some(format!("QEMU: {e}")),
        }
    }

    /// The serial console so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

impl Drop for UefiVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
