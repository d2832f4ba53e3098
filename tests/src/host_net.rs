//! What the end-to-end tests make on this host and must remove again: a
//! shell step that fails loudly, a guard that removes namespaces and links
//! even when a test fails, the pod's LAN on a worker as a CNI plugin
//! leaves it (the network the pod network tunnel must carry into the VM),
//! and the sweep of what a killed local provider leaves behind (its
//! processes, veths and bridge). Needs root.

use std::process::Command;

/// Runs `cmd` with `sh -c`; its stdout. Panics with stderr when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh for `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces and host links a test made, removed on drop.
#[derive(Default)]
pub struct HostNetGuard {
    pub netns: Vec<String>,
    pub links: Vec<String>,
}

impl Drop for HostNetGuard {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

/// A pod's LAN on the worker: a bridge `br0` at `<net>.1/24` in namespace
/// `cni`, the pod's namespace `pod` on it at `<net>.2` (default route via
/// `.1`) and a peer namespace `peer` at `<net>.3`. Removed on drop.
pub struct PodLan {
    pub cni: String,
    pub pod: String,
    pub peer: String,
    /// The first three octets, e.g. `10.96.0`.
    pub net: String,
    _guard: HostNetGuard,
}

impl PodLan {
    /// Namespaces `<name>-c<token>`, `<name>-p<token>`, `<name>-q<token>`
    /// on `<net>.0/24`.
    pub fn new(name: &str, token: &str, net: &str) -> Self {
        let (cni, pod, peer) = (
            format!("{name}-c{token}"),
            format!("{name}-p{token}"),
            format!("{name}-q{token}"),
        );
        let guard = HostNetGuard {
            netns: vec![cni.clone(), pod.clone(), peer.clone()],
            links: Vec::new(),
        };
        sh(&format!(
            "ip netns add {cni} && ip netns add {pod} && ip netns add {peer} && \
             ip -n {cni} link add br0 type bridge && ip -n {cni} link set br0 up && \
             ip -n {cni} addr add {net}.1/24 dev br0 && \
             ip link add eth0 netns {pod} type veth peer name p0 netns {cni} && \
             ip -n {cni} link set p0 master br0 up && ip -n {pod} link set eth0 up && \
             ip -n {pod} addr add {net}.2/24 dev eth0 && ip -n {pod} route add default via {net}.1 && \
             ip link add eth0 netns {peer} type veth peer name q0 netns {cni} && \
             ip -n {cni} link set q0 master br0 up && ip -n {peer} link set eth0 up && \
             ip -n {peer} addr add {net}.3/24 dev eth0"
        ));
        Self {
            cni,
            pod,
            peer,
            net: net.to_string(),
            _guard: guard,
        }
    }

    /// The pod's address.
    pub fn pod_ip(&self) -> String {
        format!("{}.2", self.net)
    }

    /// The pod's network namespace path, as the shim names it.
    pub fn pod_netns_path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }
}

/// SIGKILLs the processes `members` lists, again until none is left (at
/// most three rounds: a process may have started a child meanwhile).
pub fn kill_until_gone(mut members: impl FnMut() -> Vec<u32>) {
    for _ in 0..3 {
        let pids = members();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The instance ids a local provider keeps records of under its state
/// directory.
pub fn local_instance_ids(local_state: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(local_state.join("instances"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes what a killed local provider leaves in the host namespace: the
/// veth pairs named after its instances (`ppl…`/`plp…`: both ends stay
/// here until one is moved into the instance) and its bridge.
pub fn remove_local_links(ids: &[String], bridge: &str) {
    let veths = ids
        .iter()
        .filter(|i| i.len() > 1)
        .flat_map(|id| [format!("ppl{}", &id[1..]), format!("plp{}", &id[1..])]);
    for name in veths.chain([bridge.to_string()]) {
        let _ = Command::new("ip")
            .args(["link", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
