//! The pod network end to end with the local provider: a pod namespace
//! wired to a "CNI" bridge, CreateVM with its path, StartVM — a peer on
//! the bridge then pings the pod address and is answered by the sandbox's
//! pod namespace through the VXLAN tunnel; StopVM removes both tunnel ends.
//! Needs root; CI runs it as root.

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_provider_local::{LocalConfig, LocalProvider};
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::{config_in, init_logging};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces and the bridge of the test, removed even when it fails.
struct Cleanup {
    netns: Vec<String>,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_on_the_cni_bridge_reaches_the_sandbox_through_the_tunnel() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "CI must run this as root");
        eprintln!("SKIPPED: needs root (network namespaces, VXLAN)");
        return;
    }
    init_logging();
    let t = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
    let (cni, pod, peer) = (
        format!("ppe-c{t}"),
        format!("ppe-p{t}"),
        format!("ppe-q{t}"),
    );
    let bridge = format!("ppe{t}");
    let mut clean = Cleanup {
        netns: vec![cni.clone(), pod.clone(), peer.clone()],
        bridge: bridge.clone(),
    };
    sh(&format!(
        "ip netns add {cni} && ip netns add {pod} && ip netns add {peer} && \
         ip -n {cni} link add br0 type bridge && ip -n {cni} link set br0 up && \
         ip -n {cni} addr add 10.95.0.1/24 dev br0 && \
         ip link add eth0 netns {pod} type veth peer name p0 netns {cni} && \
         ip -n {cni} link set p0 master br0 up && ip -n {pod} link set eth0 up && \
         ip -n {pod} addr add 10.95.0.2/24 dev eth0 && ip -n {pod} route add default via 10.95.0.1 && \
         ip link add eth0 netns {peer} type veth peer name q0 netns {cni} && \
         ip -n {cni} link set q0 master br0 up && ip -n {peer} link set eth0 up && \
         ip -n {peer} addr add 10.95.0.3/24 dev eth0"
    ));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "podnet-node");
    let mut lc = LocalConfig::with_defaults(dir.path().join("local"));
    lc.forwarder_bin = bin_path("agent-protocol-forwarder");
    lc.agent_bin = bin_path("kata-agent-double");
    lc.user_data_bin = bin_path("process-user-data");
    lc.bridge = bridge.clone();
    lc.subnet = "10.217.3.0".parse().unwrap();
    lc.prefix_len = 24;
    cfg.worker_ip = Some(lc.gateway().into());
    cfg.start_timeout = Duration::from_secs(30);
    let provider = Arc::new(LocalProvider::new(lc).unwrap());
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
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
        &format!("/run/netns/{pod}"),
    )
    .await
    .expect("CreateVM");
    h.start_vm(&id, Duration::from_secs(30))
        .await
        .expect("StartVM");

    // The sandbox's pod namespace carries the pod's address on a VXLAN
    // device, and the worker end sits in the pod namespace.
    let vm_pod_ns = sh("ip netns list | awk '{print $1}' | grep '^pplocal-.*-pod$'");
    let vm_pod_ns = vm_pod_ns
        .lines()
        .next()
        .expect("sandbox pod netns")
        .to_string();
    clean.netns.push(vm_pod_ns.clone());
    let vm_side = sh(&format!("ip -n {vm_pod_ns} -d addr show eth0"));
    assert!(vm_side.contains("vxlan id"), "{vm_side}");
    assert!(vm_side.contains("10.95.0.2/24"), "{vm_side}");
    let worker_side = sh(&format!("ip -n {pod} -d link show ppvxlan0"));
    assert!(worker_side.contains("vxlan id"), "{worker_side}");

    // Answered by the sandbox: the worker pod namespace's own stack never
    // sees the ICMP (ingress is redirected), as its counters show.
    let before = sh(&format!(
        "ip netns exec {pod} cat /proc/net/snmp | grep '^Icmp:' | tail -1"
    ));
    sh(&format!("ip netns exec {peer} ping -c 3 -W 3 10.95.0.2"));
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
