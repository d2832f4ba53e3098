//! The warm pool through the Azure provider against the local ARM
//! stand-in. Its NICs get loopback addresses, so the test "boots" a pool
//! VM: the VM's `userData` (the adaptor's cloud-config) is started as a
//! real forwarder on the NIC's address. The pool fills (a VM PUT with the
//! bootstrap config and the `peerpod-pool` tag), StartVM binds the VM
//! (Azure keeps its pool name; the adaptor's records own it), StopVM
//! deletes VM, NIC and disk, and a drain deletes the refilled pool VM.

mod common;

use base64::Engine as _;
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{FakeArm, TOKEN};
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_provider_azure::{ArmTiming, AzureProvider, StaticToken};
use peerpod_tests::fake_vm::FakeVm;
use peerpod_tests::harness::{pool_config_in, until, wait_for, LONG_WAIT};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const AUTH: &str = r#"{"auths":{"r.example":{"auth":"YXp1cmU6c2VjcmV0"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_fills_binds_and_drains_through_arm() {
    let arm = FakeArm::start().await;
    let raw = arm.raw_config();
    let timing = ArmTiming {
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    };
    let provider = Arc::new(
        AzureProvider::new(raw.check().unwrap(), StaticToken::new(TOKEN), timing).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pool_config_in(dir.path(), "azure-pool-node");
    cfg.registry_auth = Some(AUTH.into());
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    let node = OwnerTags::new("", "azure-pool-node", "");

    // 1. The pool fills: one VM, tagged, with a bootstrap config.
    wait_for("a pool VM", LONG_WAIT, || async {
        arm.of_type("virtualmachines").len() == 1
    })
    .await;
    let listed = provider.list_instances(&node).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let pool_vm = listed[0].clone();
    assert!(pool_vm.name.starts_with("podvm-pool-"), "{pool_vm:?}");
    assert_eq!(
        pool_vm.tags.get("peerpod-pool").map(String::as_str),
        Some(pool_vm.name.as_str())
    );
    let puts = arm.sent("PUT", &format!("/virtualMachines/{}", pool_vm.name));
    let body = puts[0].body.as_ref().unwrap();
    let cd = body
        .pointer("/properties/userData")
        .and_then(Value::as_str)
        .unwrap();
    let ud = base64::engine::general_purpose::STANDARD
        .decode(cd)
        .unwrap();
    let doc = peerpod_vmconfig::userdata::UserData::parse(&ud).unwrap();
    assert!(doc.forwarder.bootstrap.is_some() && doc.forwarder.tls.is_some());
    assert!(
        doc.registry_auth.is_none(),
        "no per-pod secret in a pool VM"
    );

    // 2. "Boot" it and let the pool offer it.
    let vm = FakeVm::boot(&ud, pool_vm.ips[0], cfg.forwarder_port)
        .await
        .unwrap();
    until("the pool VM ready", LONG_WAIT, || m.pool_ready() == 1).await;

    // 3. StartVM binds it.
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("sbazw1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    h.start_vm("sbazw1", Duration::from_secs(20))
        .await
        .expect("StartVM from the pool");
    assert_eq!(
        m.list().await[0].instance_id.as_deref(),
        Some(pool_vm.id.as_str())
    );
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .expect("agent through the bound VM");
    assert!(vm.bound_config("sbazw1").await.contains("sbazw1"));
    assert_eq!(vm.auth_json().as_deref(), Some(AUTH));

    // 4. StopVM deletes it; the refill made another; drain deletes it.
    h.stop_vm("sbazw1").await.unwrap();
    m.wait_teardowns().await;
    assert!(
        !arm.exists(&FakeArm::vm_path(&pool_vm.name)),
        "the bound VM is deleted"
    );
    wait_for("the refill", LONG_WAIT, || async {
        arm.of_type("virtualmachines").len() == 1
    })
    .await;
    m.drain_pool();
    until("drained", LONG_WAIT, || m.pool_len() == 0).await;
    m.wait_teardowns().await;
    for kind in ["virtualmachines", "networkinterfaces", "disks"] {
        assert!(
            arm.of_type(kind).is_empty(),
            "{kind}: {:?}",
            arm.of_type(kind)
        );
    }
    vm.stop().await;
    daemon.shutdown().await;
}
