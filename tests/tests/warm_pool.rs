//! The warm pool end to end with the local provider (real namespaces,
//! veths, VXLAN, forwarder and agent processes): a pool VM boots in
//! bootstrap state, StartVM binds it — pod network, certificate, registry
//! credentials sent over the pinned bootstrap channel — and the pool
//! refills; a pod with its own initdata takes the cold path; pool VMs
//! survive a restart, the surplus goes when the pool shrinks, orphan
//! collection keeps live pool VMs and deletes pool VMs no record knows,
//! and a drain deletes them all. Needs root.

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::pool::{KeySpec, PoolKey, PoolSettings, TAG_POOL};
use cloud_api_adaptor::{AdaptorConfig, Daemon};
use peerpod_provider_api::{InstanceRequest, OwnerTags, Provider};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::{config_in, init_logging, until, LONG_WAIT};
use peerpod_tests::host_net::{sh, HostNetGuard, PodLan};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const AUTH: &str = r#"{"auths":{"registry.example":{"auth":"d2FybXBvb2w6c2VjcmV0"}}}"#;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the warm pool tests need root (network namespaces, veth, VXLAN)"
    );
}

struct World {
    dir: tempfile::TempDir,
    tag: String,
    bridge: String,
    subnet: std::net::Ipv4Addr,
}

impl World {
    /// A world on 10.218.<third>.0/24, `third` drawn from `range` among
    /// the /24s no link on this host uses (a bridge another test left or
    /// still holds would take the pool VMs' traffic).
    fn new(range: std::ops::Range<u8>) -> Self {
        let used = sh("ip -o -4 addr");
        let third = (0..1000)
            .map(|_| range.start + rand::random::<u8>() % (range.end - range.start))
            .find(|n| !used.contains(&format!(" 10.218.{n}.")))
            .expect("a free 10.218.x.0/24");
        let tag = format!("{:05x}", rand::random::<u32>() & 0xf_ffff);
        Self {
            dir: tempfile::tempdir().unwrap(),
            bridge: format!("ppw{tag}"),
            tag,
            subnet: std::net::Ipv4Addr::new(10, 218, third, 0),
        }
    }

    fn provider(&self) -> Arc<LocalProvider> {
        let mut lc = LocalConfig::with_defaults(self.dir.path().join("local"));
        lc.forwarder_bin = bin_path("agent-protocol-forwarder");
        lc.agent_bin = bin_path("kata-agent-double");
        lc.user_data_bin = bin_path("process-user-data");
        lc.bridge = self.bridge.clone();
        lc.subnet = self.subnet;
        lc.prefix_len = 24;
        Arc::new(LocalProvider::new(lc).unwrap())
    }

    fn config(&self, pool: usize) -> AdaptorConfig {
        let mut cfg = config_in(self.dir.path(), &format!("warm-{}", self.tag));
        cfg.worker_ip = Some(std::net::Ipv4Addr::from(u32::from(self.subnet) + 1).into());
        cfg.start_timeout = Duration::from_secs(30);
        cfg.registry_auth = Some(AUTH.into());
        cfg.orphans.interval = Duration::ZERO;
        cfg.orphans.grace = Duration::ZERO;
        cfg.warm_pool = PoolSettings {
            keys: vec![KeySpec {
                key: PoolKey::default(),
                size: pool,
                initdata: None,
            }],
            creates_per_minute: 6000,
            boot_timeout: Duration::from_secs(30),
        };
        cfg
    }
}

async fn pool_instances(p: &LocalProvider, node: &str) -> Vec<peerpod_provider_api::Instance> {
    p.list_instances(&OwnerTags::new("", node, ""))
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.tags.contains_key(TAG_POOL) && !i.tags.contains_key("peerpod-sandbox"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startvm_binds_a_pool_vm_with_the_pod_network_and_the_pool_refills() {
    require_root();
    init_logging();
    let w = World::new(40..140);
    let lan = PodLan::new("ppw", &w.tag, "10.96.0");
    let peer = lan.peer.clone();
    let mut clean = HostNetGuard {
        netns: Vec::new(),
        links: vec![w.bridge.clone()],
    };
    let provider = w.provider();
    let cfg = w.config(1);
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("a ready pool VM", LONG_WAIT, || m.pool_ready() == 1).await;
    let pooled = pool_instances(&provider, &cfg.node_name).await;
    assert_eq!(pooled.len(), 1);
    let pool_vm = pooled[0].clone();
    assert!(pool_vm.name.starts_with("podvm-pool-"), "{}", pool_vm.name);
    // The pool VM's user data is a bootstrap config: no per-pod secret.
    let ud = std::fs::read_to_string(
        w.dir
            .path()
            .join("local/instances")
            .join(&pool_vm.id)
            .join("run/daemon.json"),
    )
    .unwrap();
    assert!(ud.contains("\"bootstrap\""), "{ud}");
    assert!(
        !w.dir
            .path()
            .join("local/instances")
            .join(&pool_vm.id)
            .join("run/auth.json")
            .exists(),
        "no registry credentials before the bind"
    );

    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let id = format!("sbwarm{}", w.tag);
    let sock = h
        .create_vm(
            &id,
            shim_annotations("web", "default"),
            &lan.pod_netns_path(),
        )
        .await
        .unwrap();
    h.start_vm(&id, Duration::from_secs(30))
        .await
        .expect("StartVM from the pool");
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_warm_pool_hits_total{key=\"default\"} 1"),
        "{metrics}"
    );
    // The sandbox runs on the pool VM.
    let listed = m.list().await;
    let me = listed.iter().find(|s| s.id == id).unwrap();
    assert_eq!(me.instance_id.as_deref(), Some(pool_vm.id.as_str()));
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .expect("agent answers through the bound VM");
    // Bound: the sandbox's config and registry credentials are in the VM.
    let run = w
        .dir
        .path()
        .join("local/instances")
        .join(&pool_vm.id)
        .join("run");
    until("the bound config on disk", LONG_WAIT, || {
        std::fs::read_to_string(run.join("daemon.json")).is_ok_and(|c| c.contains(&id))
    })
    .await;
    let bound = std::fs::read_to_string(run.join("daemon.json")).unwrap();
    assert!(
        bound.contains(&id) && !bound.contains("\"bootstrap\""),
        "{bound}"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("auth.json")).unwrap(),
        AUTH
    );
    // Retagged: found by the sandbox's owner tags like a cold VM.
    until("retag", LONG_WAIT, || {
        futures::executor::block_on(provider.list_instances(&OwnerTags::new(
            "",
            &*cfg.node_name,
            &*id,
        )))
        .map(|v| v.len() == 1)
        .unwrap_or(false)
    })
    .await;
    // The pod network came with the bind: a peer on the CNI bridge
    // reaches the pod address in the VM through the tunnel.
    let vm_pod_ns = sh("ip netns list | awk '{print $1}' | grep '^pplocal-.*-pod$'");
    for n in vm_pod_ns.lines() {
        clean.netns.push(n.to_string());
    }
    sh(&format!(
        "ip netns exec {peer} ping -c 2 -W 3 {}",
        lan.pod_ip()
    ));

    // The pool refills with a new VM.
    until("the pool refilled", LONG_WAIT, || m.pool_ready() == 1).await;
    let refilled = pool_instances(&provider, &cfg.node_name).await;
    assert_eq!(refilled.len(), 1);
    assert_ne!(refilled[0].id, pool_vm.id);

    // A pod with its own initdata: no VM has its measured initdata, so
    // it boots its own (cold path, deterministic name).
    let mut a = shim_annotations("tenant", "default");
    a.insert(
        cloud_api_adaptor::annotations::INITDATA.into(),
        "dmVyc2lvbiA9ICIwLjEuMCIK".into(),
    );
    let cold = format!("sbcold{}", w.tag);
    h.create_vm(&cold, a, "").await.unwrap();
    h.start_vm(&cold, Duration::from_secs(30))
        .await
        .expect("cold StartVM");
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_warm_pool_misses_total{key=\"initdata="),
        "{metrics}"
    );
    let cold_vm = provider
        .list_instances(&OwnerTags::new("", &*cfg.node_name, &*cold))
        .await
        .unwrap();
    assert_eq!(cold_vm.len(), 1);
    assert!(
        cold_vm[0].name.starts_with("podvm-tenant-"),
        "{}",
        cold_vm[0].name
    );
    assert_eq!(m.pool_ready(), 1, "the cold start did not take the pool VM");

    h.stop_vm(&id).await.unwrap();
    h.stop_vm(&cold).await.unwrap();
    m.wait_teardowns().await;
    // Drain (uninstall): every pool VM goes, nothing is made again.
    m.drain_pool();
    until("drained", LONG_WAIT, || m.pool_len() == 0).await;
    m.wait_teardowns().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = provider
        .list_instances(&OwnerTags::new("", &*cfg.node_name, ""))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_vms_survive_a_restart_surplus_goes_and_orphans_are_told_apart() {
    require_root();
    init_logging();
    let w = World::new(150..250);
    let _clean = HostNetGuard {
        netns: Vec::new(),
        links: vec![w.bridge.clone()],
    };
    let provider = w.provider();
    let cfg = w.config(2);
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("two ready pool VMs", LONG_WAIT, || m.pool_ready() == 2).await;
    let before: Vec<String> = pool_instances(&provider, &cfg.node_name)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(before.len(), 2);

    // A pool-tagged VM no record knows (a crashed create of another
    // adaptor on this node, a record lost by hand) is an orphan; the
    // live pool VMs are not.
    let mut tags = BTreeMap::new();
    tags.insert(TAG_POOL.to_string(), "podvm-pool-unknown00".to_string());
    let stray_id = provider
        .create_instance(InstanceRequest {
            extra_tags: tags,
            ..InstanceRequest::new(
                "podvm-pool-unknown00",
                OwnerTags::new("", &*cfg.node_name, ""),
                peerpod_vmconfig::userdata::UserData {
                    forwarder: peerpod_vmconfig::ForwarderConfig::new("stray", None),
                    initdata: None,
                    registry_auth: None,
                }
                .to_cloud_config(),
            )
        })
        .await
        .expect("creating the stray VM")
        .id;
    let report = m.collect_orphans().await.unwrap();
    assert_eq!(report.deleted, vec![stray_id.clone()], "{report:?}");
    let now: Vec<String> = pool_instances(&provider, &cfg.node_name)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(now.len(), 2, "live pool VMs are not orphans");

    // Restart with the same size: the same VMs, offered again.
    daemon.shutdown().await;
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("pool VMs re-offered", LONG_WAIT, || m.pool_ready() == 2).await;
    let mut again: Vec<String> = pool_instances(&provider, &cfg.node_name)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    again.sort();
    let mut b = before.clone();
    b.sort();
    assert_eq!(again, b, "a restart keeps the pool VMs");

    // Restart with the pool lowered to 1: one is deleted.
    daemon.shutdown().await;
    let daemon = Daemon::start(w.config(1), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("surplus deleted", LONG_WAIT, || m.pool_len() == 1).await;
    m.wait_teardowns().await;
    assert_eq!(pool_instances(&provider, &cfg.node_name).await.len(), 1);
    daemon.shutdown().await;

    // Off (0): the rest goes.
    let daemon = Daemon::start(w.config(0), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("pool emptied", LONG_WAIT, || m.pool_len() == 0).await;
    m.wait_teardowns().await;
    assert!(pool_instances(&provider, &cfg.node_name).await.is_empty());
    daemon.shutdown().await;
}

/// A pool VM that cannot be bound (its forwarder died after it was
/// offered): StartVM deletes it and starts the sandbox cold, within the
/// same call. Runs on the loopback process provider (no root needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bind_deletes_the_pool_vm_and_the_start_goes_cold() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "fallback-node");
    let provider = Arc::new(peerpod_tests::process_provider::ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    cfg.start_timeout = Duration::from_secs(30);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.warm_pool = PoolSettings {
        keys: vec![KeySpec {
            key: PoolKey::default(),
            size: 1,
            initdata: None,
        }],
        // One create a minute: no refill during the test.
        creates_per_minute: 1,
        boot_timeout: Duration::from_secs(30),
    };
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    until("a ready pool VM", LONG_WAIT, || m.pool_ready() == 1).await;
    let pool_vm = provider.live().pop().unwrap();
    assert!(provider.kill_forwarder(&pool_vm).await);

    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("sbfallback", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    h.start_vm("sbfallback", Duration::from_secs(30))
        .await
        .expect("StartVM falls back to a cold start");
    let s = &m.list().await[0];
    assert_ne!(s.instance_id.as_deref(), Some(pool_vm.as_str()));
    assert_eq!(s.pool_vm, None);
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .unwrap();
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_warm_pool_hits_total{key=\"default\"} 1"),
        "{metrics}"
    );
    until("the unusable pool VM deleted", LONG_WAIT, || {
        !provider.live().contains(&pool_vm)
    })
    .await;
    assert!(
        m.pool_len() == 0 || m.pool_ready() == 0,
        "the broken VM is not offered again"
    );
    h.stop_vm("sbfallback").await.unwrap();
    m.wait_teardowns().await;
    daemon.shutdown().await;
}
