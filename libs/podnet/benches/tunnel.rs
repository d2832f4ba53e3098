//! Pod network tunnel numbers for docs/benchmarks.md (root; real kernel):
//! - worker-end Setup (VXLAN device + move + 2 qdiscs + 2 redirect
//!   filters) and Teardown latency, p50/p99 over many runs;
//! - TCP throughput from a peer on the "CNI" bridge to the VM's pod
//!   namespace through the tunnel vs over the bare underlay, same run
//!   (iperf3, median of 3 runs each).
//!
//! `cargo bench -p peerpod-podnet --bench tunnel [-- --runs N --seconds S]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use peerpod_podnet::spec::{PodNetwork, DEFAULT_VXLAN_PORT};
use peerpod_podnet::{inspect, vm, worker, Netns, WorkerTunnel};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Gbit/s of one iperf3 run from namespace `client` to `server_ip`, the
/// server running in namespace `server`.
fn iperf(server: &str, client: &str, server_ip: &str, seconds: u64) -> f64 {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5301"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", client, "iperf3", "-c", server_ip, "-p", "5301", "-J",
        ])
        .args(["-t", &seconds.to_string()])
        .output()
        .expect("iperf3 client");
    let _ = srv.wait();
    let j = String::from_utf8_lossy(&out.stdout);
    // end.sum_received.bits_per_second, without a JSON dependency here.
    let at = j
        .find("\"sum_received\"")
        .expect("iperf3 JSON has sum_received");
    let rest = &j[at..];
    let b = rest.find("\"bits_per_second\":").expect("bits_per_second") + 18;
    let num: String = rest[b..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse::<f64>().expect("a number") / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !is_root() {
        eprintln!("the tunnel benchmark needs root (namespaces, VXLAN)");
        std::process::exit(2);
    }
    let runs = arg("--runs", 1000) as usize;
    let seconds = arg("--seconds", 5);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# tunnel bench\n\nmachine: {cores} cores, kernel {}\n",
        kernel.trim()
    );

    let t = Topo::new();
    let (w, p) = (Netns::named(&t.w), Netns::named(&t.p));
    let iface = inspect(&p).await.expect("inspect");
    let tunnel = WorkerTunnel {
        vni: 555_000,
        port: DEFAULT_VXLAN_PORT,
        vm_ip: t.vm_ip,
        mtu: iface.mtu,
    };
    let mut inspect_t = Vec::with_capacity(runs);
    let mut setup_t = Vec::with_capacity(runs);
    let mut teardown_t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        inspect(&p).await.expect("inspect");
        inspect_t.push(s.elapsed());
        let s = Instant::now();
        worker::setup(&w, &p, "eth0", &tunnel).await.expect("setup");
        setup_t.push(s.elapsed());
        let s = Instant::now();
        worker::teardown(&p, "eth0").await.expect("teardown");
        teardown_t.push(s.elapsed());
    }
    println!("### Worker end ({runs} runs each)\n| call | p50 ms | p99 ms |\n|---|---|---|");
    for (name, mut v) in [
        ("inspect (CreateVM)", inspect_t),
        ("setup (StartVM)", setup_t),
        ("teardown (StopVM)", teardown_t),
    ] {
        v.sort();
        println!("| {name} | {:.2} | {:.2} |", pct(&v, 0.5), pct(&v, 0.99));
    }

    if Command::new("iperf3").arg("--version").output().is_err() {
        println!("\n(iperf3 not installed: `apt-get install iperf3` for the throughput part)");
        return;
    }
    worker::setup(&w, &p, "eth0", &tunnel).await.expect("setup");
    let spec = PodNetwork {
        interface: iface.clone(),
        vni: tunnel.vni,
        port: tunnel.port,
        worker_ip: t.worker_ip,
    };
    vm::setup(&spec, &Netns::named(&t.v), &t.vpod)
        .await
        .expect("vm end");
    let (mut tun, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        tun.push(iperf(&t.vpod, &t.q, "10.99.0.2", seconds));
        bare.push(iperf(&t.v, &t.w, &t.vm_ip.to_string(), seconds));
    }
    let (tun, bare) = (median(tun), median(bare));
    println!(
        "\n### TCP throughput (iperf3, {seconds} s, median of 3; pod MTU {}, underlay MTU 1500)\n\
         | path | Gbit/s |\n|---|---|\n\
         | bare underlay (worker → VM) | {bare:.2} |\n\
         | through the tunnel (peer on the CNI bridge → VM pod namespace) | {tun:.2} |\n\
         | **ratio** | **{:.2}** |",
        iface.mtu,
        tun / bare
    );
    worker::teardown(&p, "eth0").await.expect("teardown");
    vm::teardown(&t.vpod).await.expect("vm teardown");
}
