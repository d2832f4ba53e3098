//! The libvirt provider end to end on real libvirt + QEMU (TCG) booting
//! the minimal pod VM image: two sandboxes at once through the adaptor
//! (CreateVM/StartVM, Health and GetGuestDetails relayed into each VM, a
//! peer on the pod's CNI bridge pinging the pod address answered inside
//! the VM through the VXLAN tunnel, StopVM leaving no domain, volume, ISO
//! or console log), and a create that fails half-way leaving nothing.
//! Boots are slow under TCG, so each scenario boots once.
//! Needs root and libvirt (`scripts/setup.sh --libvirt`); fails naming
//! what is missing where they are not there.
#![cfg(feature = "libvirt")]

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_protocols::agent::GuestDetailsRequest;
use peerpod_protocols::protobuf::Message;
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_libvirt::LibvirtProvider;
use peerpod_tests::harness::{config_in, init_logging, raw_call};
use peerpod_tests::host_net::{sh, PodLan};
use peerpod_tests::libvirt_env::LibvirtEnv;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Health and GetGuestDetails through a sandbox's agent socket.
async fn agent_answers(sock: &std::path::Path) {
    let r = raw_call(sock, "grpc.Health", "Check", &[]).await.unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let mut gd = GuestDetailsRequest::new();
    gd.mem_block_size = true;
    let r = raw_call(
        sock,
        "grpc.AgentService",
        "GetGuestDetails",
        &gd.write_to_bytes().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let reply =
        peerpod_protocols::agent::GuestDetailsResponse::parse_from_bytes(&r.payload).unwrap();
    assert_eq!(reply.mem_block_size_bytes, 128 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_boot_relay_ping_and_stop_clean() {
    let env = LibvirtEnv::required();
    init_logging();
    let t = env.token.clone();

    // The pod's network on the worker: a CNI bridge, the pod's netns and a
    // peer on the same bridge.
    let lan = PodLan::new("pplv", &t, "10.96.0");
    let (pod, peer) = (lan.pod.clone(), lan.peer.clone());

    let dir = tempfile::tempdir().unwrap();
    let node = format!("lv-node-{t}");
    let mut cfg = config_in(dir.path(), &node);
    // Tests of this file run side by side and their VXLAN devices share
    // the host's underlay: each daemon its own VNIs.
    cfg.vni_base = 8000;
    cfg.worker_ip = Some(env.gateway.into());
    cfg.start_timeout = Duration::from_secs(60);
    let provider = Arc::new(LibvirtProvider::new(env.config()));
    let checks = provider.verify().await.expect("verify");
    assert!(checks.iter().any(|l| l.contains(&env.pool)), "{checks:?}");
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    let (a, b) = (format!("sba{t}"), format!("sbb{t}"));
    let sock_a = h
        .create_vm(
            &a,
            shim_annotations(&format!("web{t}"), "default"),
            &lan.pod_netns_path(),
        )
        .await
        .expect("CreateVM a");
    let sock_b = h
        .create_vm(&b, shim_annotations(&format!("db{t}"), "default"), "")
        .await
        .expect("CreateVM b");
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        h.start_vm(&a, Duration::from_secs(60)),
        h.start_vm(&b, Duration::from_secs(60))
    );
    if ra.is_err() || rb.is_err() {
        for i in provider
            .list_instances(&OwnerTags {
                cluster: String::new(),
                node: node.clone(),
                sandbox_id: String::new(),
            })
            .await
            .unwrap_or_default()
        {
            eprintln!(
                "console of {}:\n{}",
                i.id,
                provider.console_tail(&i.id).await.unwrap_or_default()
            );
        }
    }
    ra.expect("StartVM a");
    rb.expect("StartVM b");
    eprintln!("two sandboxes started in {:?}", started.elapsed());

    agent_answers(std::path::Path::new(&sock_a)).await;
    agent_answers(std::path::Path::new(&sock_b)).await;

    // Both VMs are listed by owner tags, with an address on the network.
    let mine = provider
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: node.clone(),
            sandbox_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let net = format!("{}.", env.gateway.to_string().rsplit_once('.').unwrap().0);
    for i in &mine {
        assert!(i.name.contains(&t), "{i:?}");
        assert!(
            i.ips.iter().any(|ip| ip.to_string().starts_with(&net)),
            "{i:?}"
        );
        let console = provider.console_tail(&i.id).await.unwrap_or_default();
        assert!(console.contains("forwarder listening"), "{console}");
    }
    let only_a = provider
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: node.clone(),
            sandbox_id: a.clone(),
        })
        .await
        .unwrap();
    assert_eq!(only_a.len(), 1, "{only_a:?}");
    assert!(
        only_a[0].name.starts_with(&format!("podvm-web{t}-")),
        "{only_a:?}"
    );

    // The peer pings the pod address: the worker's pod netns redirects it
    // into the tunnel and the VM's pod netns answers (the worker's own
    // stack sees no ICMP).
    let icmp = |ns: &str| {
        sh(&format!(
            "ip netns exec {ns} cat /proc/net/snmp | grep '^Icmp:' | tail -1"
        ))
    };
    let before = icmp(&pod);
    sh(&format!(
        "ip netns exec {peer} ping -c 3 -W 5 {}",
        lan.pod_ip()
    ));
    assert_eq!(
        before,
        icmp(&pod),
        "the worker's pod stack answered instead of the VM"
    );

    h.stop_vm(&a).await.expect("StopVM a");
    h.stop_vm(&b).await.expect("StopVM b");
    daemon.manager.wait_teardowns().await;
    let left = env.leftovers(&t);
    assert!(left.is_empty(), "left behind: {left:?}");
    let links = sh(&format!("ip -n {pod} -d link"));
    assert!(!links.contains("vxlan"), "{links}");
    // Delete is idempotent: the instance is gone, deleting it again is fine.
    provider
        .delete_instance(&only_a[0].id)
        .await
        .expect("second delete");
    daemon.shutdown().await;
}

/// A create request for `name` with defaults and an empty user data.
fn bare_request(name: &str, node: &str) -> InstanceRequest {
    InstanceRequest::new(
        name,
        OwnerTags::new("", node, "s1"),
        b"#cloud-config\nwrite_files: []\n".to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_half_way_leaves_nothing_and_config_errors_are_clear() {
    let env = LibvirtEnv::required();
    init_logging();
    let t = env.token.clone();

    // The kernel file vanished: the volume is made, the domain defined,
    // its start fails; the create must undo all of it.
    let mut cfg = env.config();
    if let peerpod_provider_libvirt::Boot::Kernel { kernel, .. } = &mut cfg.boot {
        *kernel = env.pool_dir.join("no-such-vmlinuz");
    }
    let p = LibvirtProvider::new(cfg);
    let req = bare_request(&format!("podvm-broken{t}-0"), &format!("lv-fail-{t}"));
    let e = p.create_instance(req).await.unwrap_err();
    assert!(e.message.contains("start domain"), "{e}");
    assert!(e.message.contains("no-such-vmlinuz"), "{e}");
    let left = env.leftovers(&t);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(p
        .delete_instance(&format!("podvm-broken{t}-0"))
        .await
        .is_ok());
    assert!(p.delete_instance(" ").await.is_err(), "empty id refused");

    // verify names what is wrong.
    let mut cfg = env.config();
    cfg.pool = format!("ppt-none-{t}");
    let e = LibvirtProvider::new(cfg).verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidConfig, "{e}");
    assert!(e.message.contains(&format!("ppt-none-{t}")), "{e}");
    let mut cfg = env.config();
    cfg.network = format!("ppt-none-{t}");
    let e = LibvirtProvider::new(cfg).verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidConfig, "{e}");
}

/// libvirt refuses the address reservation, as it would when another
/// adaptor on the network took the address between pick and reserve (here:
/// a host entry of the same name is there already). Each started domain is
/// discarded and the next address tried; after the last try the create
/// fails naming the reservation, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_reservation_discards_the_domain_and_fails_clearly() {
    let env = LibvirtEnv::required();
    init_logging();
    let t = env.token.clone();
    let name = format!("podvm-taken{t}-0");
    let g = env.gateway.octets();
    peerpod_tests::libvirt_env::virsh(&[
        "net-update",
        &env.network,
        "add-last",
        "ip-dhcp-host",
        &format!(
            "<host mac='52:54:00:fe:00:01' name='{name}' ip='{}.{}.{}.5'/>",
            g[0], g[1], g[2]
        ),
        "--live",
    ])
    .expect("pre-existing reservation");
    let p = LibvirtProvider::new(env.config());
    let e = p
        .create_instance(bare_request(&name, &format!("lv-taken-{t}")))
        .await
        .unwrap_err();
    assert!(e.message.contains(&format!("for {name} on network")), "{e}");
    assert!(e.message.contains("existing dhcp host entry"), "{e}");
    let left = env.leftovers(&t);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvm_probe_settles_the_domain_type_and_leaves_nothing() {
    let env = LibvirtEnv::required();
    init_logging();
    let mut cfg = env.config();
    cfg.kvm_probe = true;
    let p = LibvirtProvider::new(cfg);
    let lines = p.verify().await.expect("verify with the probe");
    let probe = lines
        .iter()
        .find(|l| l.starts_with("KVM probe:"))
        .unwrap_or_else(|| panic!("no probe line in {lines:?}"));
    eprintln!("{probe}");
    let expected = if probe.ends_with("using kvm") {
        peerpod_provider_libvirt::DomainType::Kvm
    } else {
        assert!(probe.ends_with("using qemu (TCG)"), "{probe}");
        peerpod_provider_libvirt::DomainType::Qemu
    };
    assert_eq!(p.config().domain_type, expected);
    assert!(!p.config().kvm_probe, "probed once");
    assert!(LibvirtEnv::domains_named("peerpod-kvm-probe").is_empty());
    assert!(
        LibvirtEnv::qemu_logs("peerpod-kvm-probe").is_empty(),
        "{:?}",
        LibvirtEnv::qemu_logs("peerpod-kvm-probe")
    );
    assert!(env.console_logs().is_empty(), "{:?}", env.console_logs());
}

/// The debian variant (`podvm-image/build.sh --variant debian`; minutes to
/// build, so not part of CI): direct kernel boot of its kernel and initrd
/// with a per-VM overlay of its root disk, systemd starting the user-data
/// step, kata-agent and forwarder. Runs when PEERPOD_PODVM_DEBIAN_DIR names
/// the build's output directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a debian pod VM image (minutes to build): PEERPOD_PODVM_DEBIAN_DIR=<podvm-image/build.sh --variant debian output> cargo test -p peerpod-tests --features libvirt --test libvirt -- --ignored"]
async fn debian_image_boots_to_ready_when_built() {
    let img = std::env::var_os("PEERPOD_PODVM_DEBIAN_DIR")
        .map(std::path::PathBuf::from)
        .expect(
            "PEERPOD_PODVM_DEBIAN_DIR must name a podvm-image/build.sh --variant debian output",
        );
    let env = LibvirtEnv::required();
    init_logging();
    let t = env.token.clone();
    std::fs::copy(
        img.join("podvm.qcow2"),
        env.pool_dir.join("podvm-debian.qcow2"),
    )
    .unwrap();
    peerpod_tests::libvirt_env::virsh(&["pool-refresh", &env.pool]).unwrap();
    let cmdline = std::fs::read_to_string(img.join("cmdline")).unwrap();
    let mut lc = env.config();
    lc.boot = peerpod_provider_libvirt::Boot::Kernel {
        kernel: img.join("vmlinuz"),
        initrd: Some(img.join("initrd.img")),
        cmdline: cmdline.trim().to_string(),
    };
    lc.kernel_root_volume = Some("podvm-debian.qcow2".into());
    lc.memory_mib = 1024;
    let provider = Arc::new(LibvirtProvider::new(lc));
    provider.verify().await.expect("verify");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), &format!("lv-deb-{t}"));
    // Tests of this file run side by side and their VXLAN devices share
    // the host's underlay: each daemon its own VNIs.
    cfg.vni_base = 8100;
    cfg.worker_ip = Some(env.gateway.into());
    cfg.start_timeout = Duration::from_secs(300);
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let id = format!("sbd{t}");
    let sock = h
        .create_vm(&id, shim_annotations(&format!("deb{t}"), "default"), "")
        .await
        .unwrap();
    let started = Instant::now();
    let r = h.start_vm(&id, Duration::from_secs(300)).await;
    if r.is_err() {
        for i in provider
            .list_instances(&OwnerTags {
                cluster: String::new(),
                node: cfg.node_name.clone(),
                sandbox_id: String::new(),
            })
            .await
            .unwrap_or_default()
        {
            eprintln!(
                "console:\n{}",
                provider.console_tail(&i.id).await.unwrap_or_default()
            );
        }
    }
    r.expect("StartVM on the debian image");
    eprintln!("debian pod VM ready in {:?}", started.elapsed());
    agent_answers(std::path::Path::new(&sock)).await;
    h.stop_vm(&id).await.unwrap();
    daemon.manager.wait_teardowns().await;
    let left: Vec<_> = env
        .leftovers(&t)
        .into_iter()
        .filter(|v| v != "podvm-debian.qcow2")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    daemon.shutdown().await;
}

/// The warm pool on real libvirt + QEMU: a pool VM boots once in its
/// bootstrap state; StartVM binds it — the pod network is built inside
/// the VM at bind, the agent answers through the sandbox's certificate —
/// and StopVM and a drain leave nothing. (The pool's create rate keeps
/// the refill from booting a second VM during the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_vm_is_bound_to_a_sandbox_with_its_pod_network() {
    let env = LibvirtEnv::required();
    init_logging();
    let t = env.token.clone();
    let lan = PodLan::new("pplw", &t, "10.97.0");
    let peer = lan.peer.clone();
    let dir = tempfile::tempdir().unwrap();
    let node = format!("lvw-node-{t}");
    let mut cfg = config_in(dir.path(), &node);
    // Tests of this file run side by side and their VXLAN devices share
    // the host's underlay: each daemon its own VNIs.
    cfg.vni_base = 8200;
    let _domains = peerpod_tests::libvirt_env::PoolDomains(cfg.state_dir.join("pool"));
    cfg.worker_ip = Some(env.gateway.into());
    cfg.start_timeout = Duration::from_secs(60);
    cfg.warm_pool = cloud_api_adaptor::pool::PoolSettings {
        keys: vec![cloud_api_adaptor::pool::KeySpec {
            key: Default::default(),
            size: 1,
            initdata: None,
        }],
        creates_per_minute: 1,
        boot_timeout: Duration::from_secs(120),
    };
    let provider = Arc::new(LibvirtProvider::new(env.config()));
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    let booted = Instant::now();
    while m.pool_ready() < 1 {
        assert!(
            booted.elapsed() < Duration::from_secs(120),
            "the pool VM did not boot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("pool VM booted and answered Ping in {:?}", booted.elapsed());
    let pool_vm = provider
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: node.clone(),
            sandbox_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(pool_vm.len(), 1, "{pool_vm:?}");
    assert!(pool_vm[0].name.starts_with("podvm-pool-"), "{pool_vm:?}");

    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let id = format!("sbw{t}");
    let sock = h
        .create_vm(
            &id,
            shim_annotations(&format!("web{t}"), "default"),
            &lan.pod_netns_path(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    h.start_vm(&id, Duration::from_secs(60))
        .await
        .expect("StartVM from the pool");
    eprintln!("StartVM from the pool took {:?}", started.elapsed());
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_warm_pool_hits_total{key=\"default\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        m.list().await[0].instance_id.as_deref(),
        Some(pool_vm[0].id.as_str()),
        "the sandbox runs on the pool VM"
    );
    agent_answers(std::path::Path::new(&sock)).await;
    // The VM built the pod network at bind: the peer's ping is answered
    // inside the VM through the tunnel.
    sh(&format!(
        "ip netns exec {peer} ping -c 3 -W 5 {}",
        lan.pod_ip()
    ));
    let console = provider
        .console_tail(&pool_vm[0].id)
        .await
        .unwrap_or_default();
    assert!(console.contains("bound to a sandbox"), "{console}");

    h.stop_vm(&id).await.expect("StopVM");
    m.drain_pool();
    while m.pool_len() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.wait_teardowns().await;
    let all = provider
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: node.clone(),
            sandbox_id: String::new(),
        })
        .await
        .unwrap();
    assert!(all.is_empty(), "{all:?}");
    let left = env.leftovers(&t);
    assert!(left.is_empty(), "left behind: {left:?}");
    daemon.shutdown().await;
}
