//! The warm pool through the GCP provider against the local GCE server.
//! Its instances get loopback addresses, so the test "boots" a pool VM:
//! the user data the adaptor inserted (the `user-data` metadata item) is
//! started as a real forwarder on the instance's address. The pool fills
//! (an insert with the bootstrap config and the `peerpod-pool` label),
//! StartVM binds the VM (GCE cannot rename or relabel it cheaply, so it
//! keeps its pool name and labels; the adaptor's records own it), StopVM
//! deletes it, and a drain deletes the refilled pool VM.

mod common;

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{provider, raw, GceServer};
use peerpod_tests::fake_vm::FakeVm;
use peerpod_tests::harness::{pool_config_in, until, wait_for, LONG_WAIT};
use std::sync::Arc;
use std::time::Duration;

const AUTH: &str = r#"{"auths":{"r.example":{"auth":"Z2NwOnNlY3JldA=="}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_fills_binds_and_drains_through_gce() {
    let gce = GceServer::start().await;
    let p = Arc::new(provider(raw(&gce.url)).await);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pool_config_in(dir.path(), "gcp-pool-node");
    cfg.registry_auth = Some(AUTH.into());
    let daemon = Daemon::start(cfg.clone(), p).await.unwrap();
    let m = daemon.manager.clone();

    // 1. The pool fills: one insert, labelled, with a bootstrap config.
    wait_for("a pool instance", LONG_WAIT, || async {
        gce.instance_names().len() == 1
    })
    .await;
    let name = gce.instance_names().remove(0);
    assert!(name.starts_with("podvm-pool-"), "{name}");
    let inst = gce.state.lock().unwrap().instances[&name].clone();
    assert_eq!(inst["labels"]["peerpod-pool"], name.as_str());
    assert_eq!(inst["labels"]["peerpod-node"], "gcp-pool-node");
    assert!(inst["labels"].get("peerpod-sandbox").is_none(), "{inst}");
    let ud = inst["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "user-data")
        .and_then(|i| i["value"].as_str())
        .expect("user-data metadata")
        .to_string();
    let doc = peerpod_vmconfig::userdata::UserData::parse(ud.as_bytes()).unwrap();
    assert!(doc.forwarder.bootstrap.is_some() && doc.forwarder.tls.is_some());
    assert!(
        doc.registry_auth.is_none(),
        "no per-pod secret in a pool VM"
    );
    let ip = inst["networkInterfaces"][0]["networkIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // 2. "Boot" it and let the pool offer it.
    let vm = FakeVm::boot(ud.as_bytes(), ip, cfg.forwarder_port)
        .await
        .unwrap();
    until("the pool VM ready", LONG_WAIT, || m.pool_ready() == 1).await;

    // 3. StartVM binds it.
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("sbgcpw1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    h.start_vm("sbgcpw1", Duration::from_secs(20))
        .await
        .expect("StartVM from the pool");
    let s = &m.list().await[0];
    assert_eq!(s.pool_vm.as_deref(), Some(name.as_str()));
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .expect("agent through the bound VM");
    assert!(vm.bound_config("sbgcpw1").await.contains("sbgcpw1"));
    assert_eq!(vm.auth_json().as_deref(), Some(AUTH));
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_warm_pool_hits_total{key=\"default\"} 1"),
        "{metrics}"
    );
    // The orphan collector keeps the bound VM (pool labels, no sandbox
    // label): its sandbox record names it.
    let report = m.collect_orphans().await.unwrap();
    assert!(
        !report.orphans.iter().any(|o| o.contains("pool")),
        "{report:?}"
    );
    assert!(gce.instance_names().contains(&name));

    // 4. StopVM deletes it; the refill made another; drain deletes it.
    h.stop_vm("sbgcpw1").await.unwrap();
    m.wait_teardowns().await;
    wait_for("the refill", LONG_WAIT, || async {
        gce.instance_names().iter().any(|n| n != &name)
    })
    .await;
    assert!(
        !gce.instance_names().contains(&name),
        "the bound VM is deleted"
    );
    m.drain_pool();
    until("drained", LONG_WAIT, || m.pool_len() == 0).await;
    m.wait_teardowns().await;
    assert!(
        gce.instance_names().is_empty(),
        "{:?}",
        gce.instance_names()
    );
    vm.stop().await;
    daemon.shutdown().await;
}
