//! Test topologies built with `ip` (tests may shell out; the product may
//! not): namespaces and veths the test creates and always removes.

#![allow(dead_code)]

use std::process::Command;

/// Runs a shell command; panics with its stderr when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a shell command succeeds.
pub fn ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the test unless it runs as root (never a silent skip).
pub fn need_root() {
    assert!(
        is_root(),
        "needs root (network namespaces, veth, VXLAN): run the tests as root"
    );
}

/// Named namespaces removed on drop, plus VM pod namespaces made by the
/// code under test.
pub struct Namespaces {
    pub names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self { names: Vec::new() }
    }
    pub fn add(&mut self, name: &str) -> String {
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        self.names.push(name.to_string());
        name.to_string()
    }
    /// Registers a namespace someone else creates, for removal.
    pub fn adopt(&mut self, name: &str) {
        self.names.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

pub fn tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The worker/VM/pod/peer topology of the tunnel tests:
/// - `w` (worker) and `v` (VM) joined by a veth underlay 192.168.N.1/.2;
/// - a bridge `cni0` in `w` (10.99.0.1/24, fd00:99::1/64) playing the CNI;
/// - the pod namespace `p` with `eth0` on that bridge (10.99.0.2/24,
///   fd00:99::2/64, default routes via the bridge, MTU 1400);
/// - a peer namespace `q` on the bridge (10.99.0.3, fd00:99::3).
pub struct Topo {
    pub ns: Namespaces,
    pub w: String,
    pub v: String,
    pub p: String,
    pub q: String,
    pub vpod: String,
    pub worker_ip: std::net::IpAddr,
    pub vm_ip: std::net::IpAddr,
}

impl Topo {
    pub fn new() -> Self {
        let t = tag();
        let mut ns = Namespaces::new();
        let w = ns.add(&format!("ppt-w-{t}"));
        let v = ns.add(&format!("ppt-v-{t}"));
        let p = ns.add(&format!("ppt-p-{t}"));
        let q = ns.add(&format!("ppt-q-{t}"));
        let vpod = format!("ppt-vp-{t}");
        ns.adopt(&vpod);
        let n = rand::random::<u8>() % 200 + 20;
        sh(&format!(
            "ip link add u0 netns {w} type veth peer name u0 netns {v} && \
             ip -n {w} addr add 192.168.{n}.1/24 dev u0 && ip -n {w} link set u0 up && \
             ip -n {v} addr add 192.168.{n}.2/24 dev u0 && ip -n {v} link set u0 up && \
             ip -n {w} link add cni0 type bridge && ip -n {w} link set cni0 up && \
             ip -n {w} addr add 10.99.0.1/24 dev cni0 && \
             ip -n {w} addr add fd00:99::1/64 dev cni0 nodad && \
             ip link add eth0 netns {p} type veth peer name vp netns {w} && \
             ip -n {w} link set vp master cni0 up && \
             ip -n {p} link set eth0 mtu 1400 up && \
             ip -n {p} addr add 10.99.0.2/24 dev eth0 && \
             ip -n {p} addr add fd00:99::2/64 dev eth0 nodad && \
             ip -n {p} route add default via 10.99.0.1 && \
             ip -n {p} -6 route add default via fd00:99::1 && \
             ip link add eth0 netns {q} type veth peer name vq netns {w} && \
             ip -n {w} link set vq master cni0 up && ip -n {q} link set eth0 up && \
             ip -n {q} addr add 10.99.0.3/24 dev eth0 && \
             ip -n {q} addr add fd00:99::3/64 dev eth0 nodad"
        ));
        Topo {
            ns,
            w,
            v,
            p,
            q,
            vpod,
            worker_ip: format!("192.168.{n}.1").parse().unwrap(),
            vm_ip: format!("192.168.{n}.2").parse().unwrap(),
        }
    }
}

/// Runs `f` on a thread inside the namespace `name` (blocking).
pub fn in_netns<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A TCP server in namespace `name` answering every connection with
/// `reply`, on all addresses (IPv4 and IPv6) of `port`. Runs until the
/// namespace is gone.
pub fn serve_in(name: &str, port: u16, reply: &'static str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        // [::] with dual stack takes IPv4 too.
        let l = std::net::TcpListener::bind(("::", port)).expect("bind");
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(reply.as_bytes());
        }
    });
    rx.recv().unwrap();
}

/// Connects from namespace `name` to `addr` and returns what it read.
pub fn fetch_from(name: &str, addr: std::net::SocketAddr) -> std::io::Result<String> {
    in_netns(name, move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}
