//! The tunnel on a real kernel: worker, VM, pod and peer namespaces joined
//! by veths and a bridge; after setup a peer on the "CNI" reaches the pod
//! address and is answered from the VM's pod namespace; after teardown
//! nothing of ours is left.

mod common;

use common::*;
use peerpod_podnet::spec::{PodNetwork, DEFAULT_VXLAN_PORT};
use peerpod_podnet::{inspect, vm, worker, Netns, PodnetError, VniPool, WorkerTunnel};
use std::net::SocketAddr;

fn ns(name: &str) -> Netns {
    Netns::named(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reaches_the_vm_pod_namespace_over_ipv4_and_ipv6() {
    need_root();
    let t = Topo::new();
    let iface = inspect(&ns(&t.p)).await.expect("inspect pod netns");
    assert_eq!(iface.name, "eth0");
    assert_eq!(iface.mtu, 1400);
    let addrs: Vec<String> = iface.addresses.iter().map(|a| a.to_string()).collect();
    assert!(addrs.contains(&"10.99.0.2/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"fd00:99::2/64".to_string()), "{addrs:?}");
    let gws: Vec<String> = iface
        .routes
        .iter()
        .filter_map(|r| r.gateway.map(|g| g.to_string()))
        .collect();
    assert!(gws.contains(&"10.99.0.1".to_string()), "{:?}", iface.routes);
    assert!(
        gws.contains(&"fd00:99::1".to_string()),
        "{:?}",
        iface.routes
    );
    let mac_in_pod = sh(&format!("ip -n {} -br link show eth0", t.p));

    let vni = 555_123;
    let report = worker::setup(
        &ns(&t.w),
        &ns(&t.p),
        "eth0",
        &WorkerTunnel {
            vni,
            port: DEFAULT_VXLAN_PORT,
            vm_ip: t.vm_ip,
            mtu: iface.mtu,
        },
    )
    .await
    .expect("worker end");
    assert_eq!(report.underlay_mtu, Some(1500));
    assert!(report.fits, "1400 + 50 fits a 1500 underlay");
    let spec = PodNetwork {
        interface: iface.clone(),
        vni,
        port: DEFAULT_VXLAN_PORT,
        worker_ip: t.worker_ip,
    };
    vm::setup(&spec, &ns(&t.v), &t.vpod).await.expect("VM end");

    // The VM's pod namespace carries the pod's MAC, MTU and addresses.
    let vm_link = sh(&format!("ip -n {} -d link show eth0", t.vpod));
    let mac = iface
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(vm_link.contains(&mac), "{vm_link}\npod: {mac_in_pod}");
    assert!(vm_link.contains("mtu 1400"), "{vm_link}");
    assert!(vm_link.contains(&format!("vxlan id {vni}")), "{vm_link}");
    let vm_routes = sh(&format!(
        "ip -n {} route; ip -n {} -6 route",
        t.vpod, t.vpod
    ));
    assert!(vm_routes.contains("default via 10.99.0.1"), "{vm_routes}");
    assert!(vm_routes.contains("default via fd00:99::1"), "{vm_routes}");

    serve_in(&t.vpod, 8080, "from-vm-podns\n");
    sh(&format!("ip netns exec {} ping -c 2 -W 3 10.99.0.2", t.q));
    sh(&format!(
        "ip netns exec {} ping -6 -c 2 -W 3 fd00:99::2",
        t.q
    ));
    for addr in ["10.99.0.2:8080", "[fd00:99::2]:8080"] {
        let got = fetch_from(&t.q, addr.parse::<SocketAddr>().unwrap()).expect(addr);
        assert_eq!(got, "from-vm-podns\n", "{addr}");
    }
    // And from inside the VM's pod namespace out to the peer, through the
    // pod's own default route's network.
    sh(&format!(
        "ip netns exec {} ping -c 1 -W 3 10.99.0.3",
        t.vpod
    ));

    worker::teardown(&ns(&t.p), "eth0").await.expect("teardown");
    worker::teardown(&ns(&t.p), "eth0")
        .await
        .expect("teardown is idempotent");
    vm::teardown(&t.vpod).await.expect("VM teardown");
    vm::teardown(&t.vpod)
        .await
        .expect("VM teardown is idempotent");
    let links = sh(&format!("ip -n {} -d link", t.p));
    assert!(!links.contains("vxlan"), "{links}");
    let filters = sh(&format!("tc -n {} filter show dev eth0 ingress", t.p));
    assert!(filters.trim().is_empty(), "{filters}");
    let qdiscs = sh(&format!("tc -n {} qdisc show dev eth0", t.p));
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert!(!std::path::Path::new(&format!("/run/netns/{}", t.vpod)).exists());
    // The pod's own stack answers again: nothing listens there.
    assert!(fetch_from(&t.q, "10.99.0.2:8080".parse().unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_of_a_vanished_pod_namespace_is_not_an_error() {
    need_root();
    let gone = Netns::Path("/run/netns/ppt-never-there".into());
    worker::teardown(&gone, "eth0").await.expect("gone is fine");
    let err = inspect(&gone).await.unwrap_err();
    assert!(matches!(err, PodnetError::Netns { .. }), "{err}");
    assert!(err.to_string().contains("ppt-never-there"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_address_or_default_route_is_a_clear_error() {
    need_root();
    let mut names = Namespaces::new();
    let t = tag();
    let a = names.add(&format!("ppt-a-{t}"));
    sh(&format!(
        "ip link add eth0 netns {a} type veth peer name x0 netns {a} && \
         ip -n {a} link set eth0 up && ip -n {a} addr add 10.97.0.2/24 dev eth0"
    ));
    let e = inspect(&ns(&a)).await.unwrap_err().to_string();
    assert!(e.contains("no default route"), "{e}");
    let b = names.add(&format!("ppt-b-{t}"));
    sh(&format!(
        "ip link add eth0 netns {b} type veth peer name x0 netns {b} && \
         ip -n {b} link set eth0 up && ip -n {b} link set x0 up && \
         ip -n {b} route add default dev eth0"
    ));
    let e = inspect(&ns(&b)).await.unwrap_err().to_string();
    assert!(e.contains("no IPv4 or IPv6 address"), "{e}");
    assert!(e.contains(&b), "names the namespace: {e}");
}

fn vni_of(netns: &str) -> Option<u32> {
    let out = sh(&format!(
        "ip -n {netns} -d link show {} 2>/dev/null || true",
        worker::WORKER_DEVICE
    ));
    let i = out.find("vxlan id ")?;
    out[i + 9..].split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tunnels_at_once_get_unique_ids_and_leave_nothing() {
    need_root();
    const N: usize = 50;
    let mut names = Namespaces::new();
    let t = tag();
    let w = names.add(&format!("ppt-w-{t}"));
    let mut pods = Vec::new();
    for i in 0..N {
        let p = names.add(&format!("ppt-{i}-{t}"));
        sh(&format!(
            "ip link add eth0 netns {p} type veth peer name v{i} netns {w} && \
             ip -n {w} addr add 10.96.{i}.1/24 dev v{i} && ip -n {w} link set v{i} up && \
             ip -n {p} link set eth0 up && ip -n {p} addr add 10.96.{i}.2/24 dev eth0 && \
             ip -n {p} route add default via 10.96.{i}.1"
        ));
        pods.push(p);
    }
    let pool = std::sync::Arc::new(VniPool::new(600_000, 4096).unwrap());
    let mut tasks = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let (w, p, pool) = (w.clone(), p.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            let iface = inspect(&ns(&p)).await?;
            let vni = pool.acquire()?;
            worker::setup(
                &ns(&w),
                &ns(&p),
                &iface.name,
                &WorkerTunnel {
                    vni,
                    port: DEFAULT_VXLAN_PORT,
                    vm_ip: format!("192.0.2.{}", i + 1).parse().unwrap(),
                    mtu: iface.mtu,
                },
            )
            .await?;
            Ok::<u32, PodnetError>(vni)
        }));
    }
    let mut vnis = Vec::new();
    for task in tasks {
        vnis.push(task.await.unwrap().expect("setup"));
    }
    let mut seen: Vec<u32> = pods.iter().map(|p| vni_of(p).expect("device")).collect();
    seen.sort();
    vnis.sort();
    assert_eq!(seen, vnis, "each pod namespace holds the id it was given");
    seen.dedup();
    assert_eq!(seen.len(), N, "ids are unique");

    // A second tunnel with an id in use fails cleanly and leaves nothing.
    let extra = names.add(&format!("ppt-x-{t}"));
    sh(&format!(
        "ip link add eth0 netns {extra} type veth peer name vx netns {w} && \
         ip -n {extra} link set eth0 up"
    ));
    let dup = worker::setup(
        &ns(&w),
        &ns(&extra),
        "eth0",
        &WorkerTunnel {
            vni: vnis[0],
            port: DEFAULT_VXLAN_PORT,
            vm_ip: "192.0.2.200".parse().unwrap(),
            mtu: 1500,
        },
    )
    .await
    .unwrap_err();
    assert!(dup.to_string().contains("create VXLAN device"), "{dup}");
    assert_eq!(vni_of(&extra), None);
    assert!(sh(&format!("tc -n {extra} filter show dev eth0 ingress"))
        .trim()
        .is_empty());

    let mut tasks = Vec::new();
    for p in &pods {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            worker::teardown(&ns(&p), "eth0").await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("teardown");
    }
    for v in vnis {
        pool.release(v);
    }
    assert_eq!(pool.in_use(), 0);
    for p in &pods {
        assert_eq!(vni_of(p), None, "{p}");
        assert!(sh(&format!("tc -n {p} filter show dev eth0 ingress"))
            .trim()
            .is_empty());
    }
    let w_links = sh(&format!("ip -n {w} -d link"));
    assert!(!w_links.contains("vxlan"), "{w_links}");
}
