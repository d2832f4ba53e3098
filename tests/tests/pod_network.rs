//! The pod network end to end with the local provider: a pod namespace
//! wired to a "CNI" bridge, CreateVM with its path, StartVM — a peer on
//! the bridge then pings the pod address and is answered by the sandbox's
//! pod namespace through the VXLAN tunnel; StopVM removes both tunnel ends.
//! Needs root; CI runs it as root.

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_provider_local::{LocalConfig, LocalProvider};
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::{config_in, init_logging, raw_call};
use peerpod_tests::host_net::{sh, HostNetGuard, PodLan};
use std::sync::Arc;
use std::time::Duration;

/// A pod's LAN on a "CNI" bridge (pod and peer namespaces), and a
/// local-provider daemon whose instances sit on `bridge`.
struct World {
    lan: PodLan,
    /// The instances' bridge and namespaces found during the test.
    clean: HostNetGuard,
    bridge: String,
    subnet: u8,
    dir: tempfile::TempDir,
}

impl World {
    fn new(t: &str, subnet: u8) -> Self {
        let bridge = format!("ppe{t}");
        Self {
            lan: PodLan::new("ppe", t, "10.95.0"),
            clean: HostNetGuard {
                netns: Vec::new(),
                links: vec![bridge.clone()],
            },
            bridge,
            subnet,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn daemon(&self, bridge: &str) -> (cloud_api_adaptor::AdaptorConfig, Daemon) {
        let mut cfg = config_in(self.dir.path(), "podnet-node");
        let mut lc = LocalConfig::with_defaults(self.dir.path().join("local"));
        lc.forwarder_bin = bin_path("agent-protocol-forwarder");
        lc.agent_bin = bin_path("kata-agent-double");
        lc.user_data_bin = bin_path("process-user-data");
        lc.bridge = bridge.to_string();
        lc.subnet = format!("10.217.{}.0", self.subnet).parse().unwrap();
        lc.prefix_len = 24;
        cfg.worker_ip = Some(lc.gateway().into());
        cfg.start_timeout = Duration::from_secs(30);
        // Tests of this file run side by side: each daemon its own VNIs.
        cfg.vni_base = 7000 + 100 * u32::from(self.subnet);
        let provider = Arc::new(LocalProvider::new(lc).unwrap());
        let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
        (cfg, daemon)
    }
}

/// The pod network namespace the sandbox's local instance built.
async fn vm_pod_netns(daemon: &Daemon, id: &str) -> String {
    let instance = daemon
        .manager
        .list()
        .await
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.instance_id)
        .expect("the sandbox has an instance");
    peerpod_provider_local::pod_netns_name(&format!("pplocal-{instance}"))
}

fn needs_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, VXLAN): run it as root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_on_the_cni_bridge_reaches_the_sandbox_through_the_tunnel() {
    needs_root();
    init_logging();
    let t = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
    let mut w = World::new(&t, 3);
    let (pod, peer, bridge) = (w.lan.pod.clone(), w.lan.peer.clone(), w.bridge.clone());
    let (cfg, daemon) = w.daemon(&bridge).await;
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    // A namespace path that does not exist is a clear CreateVM error.
    let e = h
        .create_vm(
            "sb-bad",
            shim_annotations("web", "default"),
            "/run/netns/ppe-none",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/run/netns/ppe-none"), "{e}");

    let id = format!("sbnet{t}");
    h.create_vm(
        &id,
        shim_annotations("web", "default"),
        &w.lan.pod_netns_path(),
    )
    .await
    .expect("CreateVM");
    h.start_vm(&id, Duration::from_secs(30))
        .await
        .expect("StartVM");

    // The sandbox's pod namespace carries the pod's address on a VXLAN
    // device, and the worker end sits in the pod namespace.
    let vm_pod_ns = vm_pod_netns(&daemon, &id).await;
    w.clean.netns.push(vm_pod_ns.clone());
    let vm_side = sh(&format!("ip -n {vm_pod_ns} -d addr show eth0"));
    assert!(vm_side.contains("vxlan id"), "{vm_side}");
    assert!(
        vm_side.contains(&format!("{}/24", w.lan.pod_ip())),
        "{vm_side}"
    );
    let worker_side = sh(&format!("ip -n {pod} -d link show ppvxlan0"));
    assert!(worker_side.contains("vxlan id"), "{worker_side}");

    // Answered by the sandbox: the worker pod namespace's own stack never
    // sees the ICMP (ingress is redirected), as its counters show.
    let before = sh(&format!(
        "ip netns exec {pod} cat /proc/net/snmp | grep '^Icmp:' | tail -1"
    ));
    sh(&format!(
        "ip netns exec {peer} ping -c 3 -W 3 {}",
        w.lan.pod_ip()
    ));
    let after = sh(&format!(
        "ip netns exec {pod} cat /proc/net/snmp | grep '^Icmp:' | tail -1"
    ));
    assert_eq!(
        before, after,
        "the worker's pod stack answered instead of the VM"
    );
    let vm_icmp = sh(&format!(
        "ip netns exec {vm_pod_ns} cat /proc/net/snmp | grep '^Icmp:' | tail -1"
    ));
    let in_msgs: u64 = vm_icmp.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        in_msgs >= 3,
        "the sandbox's pod namespace got the pings: {vm_icmp}"
    );

    h.stop_vm(&id).await.expect("StopVM");
    daemon.manager.wait_teardowns().await;
    let links = sh(&format!("ip -n {pod} -d link"));
    assert!(!links.contains("vxlan"), "{links}");
    assert!(sh(&format!("tc -n {pod} filter show dev eth0 ingress"))
        .trim()
        .is_empty());
    let left = sh("ip netns list | awk '{print $1}' | grep '^pplocal-' || true");
    assert!(!left.contains(&vm_pod_ns), "{left}");
    daemon.shutdown().await;
}

/// (device, inode) of a network namespace file.
fn ns_identity(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Pids whose network namespace is `ns`.
fn pids_in(ns: (u64, u64)) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| (m.dev(), m.ino()) == ns)
                .unwrap_or(false)
        })
        .collect()
}

/// Open file descriptors (of any process) on the namespace with inode `ino`.
fn fds_on(ino: u64) -> Vec<String> {
    let want = format!("net:[{ino}]");
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .map(|l| l.to_string_lossy() == want)
                .unwrap_or(false)
            {
                out.push(fd.path().display().to_string());
            }
        }
    }
    out
}

/// Whether `pid` ignores SIGTERM (bit 15 of SigIgn).
fn ignores_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Kills what a failed test leaked into a namespace.
struct KillIn(Option<(u64, u64)>);

impl Drop for KillIn {
    fn drop(&mut self) {
        if let Some(ns) = self.0 {
            for pid in pids_in(ns) {
                // SAFETY: plain syscall on a process inside the test's namespace.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// StopVM without DestroySandbox (a shim crash, a forced teardown): the
/// processes the agent started for containers in the sandbox's pod
/// network namespace — which ignore SIGTERM — are killed too, and the
/// namespace (with its VXLAN device) is really gone: no process in it, no
/// descriptor or mount holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_vm_kills_container_processes_in_the_pod_netns() {
    use peerpod_protocols::agent::CreateContainerRequest;
    use peerpod_protocols::oci::{Linux, Spec};
    use peerpod_protocols::protobuf::Message;
    needs_root();
    init_logging();
    let t = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
    let mut w = World::new(&t, 4);
    let bridge = w.bridge.clone();
    let (cfg, daemon) = w.daemon(&bridge).await;
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let id = format!("sbleak{t}");
    let sock = h
        .create_vm(
            &id,
            shim_annotations("web", "default"),
            &w.lan.pod_netns_path(),
        )
        .await
        .expect("CreateVM");
    h.start_vm(&id, Duration::from_secs(30))
        .await
        .expect("StartVM");
    let vm_pod_ns = vm_pod_netns(&daemon, &id).await;
    w.clean.netns.push(vm_pod_ns.clone());
    let ns_path = format!("/run/netns/{vm_pod_ns}");
    let ns = ns_identity(&ns_path).expect("the pod netns exists");
    let _kill = KillIn(Some(ns));

    // A container, as the shim creates it: the forwarder puts it into the
    // pod network namespace; the agent starts its process there.
    let mut c = CreateContainerRequest::new();
    c.container_id = "c-leak".into();
    let mut spec = Spec::new();
    spec.Version = "1.1.0".into();
    spec.Linux = Some(Linux::new()).into();
    c.OCI = Some(spec).into();
    let r = raw_call(
        std::path::Path::new(&sock),
        "grpc.AgentService",
        "CreateContainer",
        &c.write_to_bytes().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let inside = pids_in(ns);
    assert!(!inside.is_empty(), "the container runs in {vm_pod_ns}");
    assert!(
        inside.iter().any(|p| ignores_sigterm(*p)),
        "the container process ignores SIGTERM: {inside:?}"
    );

    h.stop_vm(&id).await.expect("StopVM");
    daemon.manager.wait_teardowns().await;
    assert_eq!(
        pids_in(ns),
        Vec::<u32>::new(),
        "processes left in {vm_pod_ns}"
    );
    assert!(!std::path::Path::new(&ns_path).exists(), "{ns_path}");
    assert_eq!(
        fds_on(ns.1),
        Vec::<String>::new(),
        "descriptors on {vm_pod_ns}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&vm_pod_ns), "{vm_pod_ns} still mounted");
    daemon.shutdown().await;
}
