//! The adaptor (in-process `Daemon`) with the Azure provider against the
//! local ARM stand-in: CreateVM/StartVM create the NIC and the VM with the
//! adaptor's cloud-config as `userData` (what the VM's IMDS would serve is
//! checked through the shared fixture; no VM boots behind the stand-in, so
//! StartVM then gives up), StopVM deletes VM, NIC and disk, and Azure's
//! error code and message reach the shim with the phase named.

mod common;

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{FakeArm, Fault, TOKEN};
use peerpod_provider_azure::{ArmTiming, AzureProvider, StaticToken};
use peerpod_tests::harness::config_in;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn nothing_left(arm: &FakeArm) -> bool {
    ["virtualmachines", "networkinterfaces", "disks"]
        .iter()
        .all(|k| arm.of_type(k).is_empty())
}

/// A loopback port nothing listens on: the adaptor's connection to the
/// "VM" is refused at once.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startvm_creates_the_vm_with_our_cloud_config_and_stopvm_deletes_it_all() {
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
    let mut cfg = config_in(dir.path(), "azure-node");
    cfg.forwarder_port = closed_port();
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.start_timeout = Duration::from_secs(60);
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    // 1. StartVM: NIC and VM created with our cloud-config; nothing boots
    //    behind the stand-in, StartVM gives up, and the VM is deleted.
    h.create_vm("sbaz1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbaz1", Duration::from_secs(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("agent ready") || e.contains("deadline"), "{e}");
    daemon.manager.wait_teardowns().await;
    let puts = arm.sent("PUT", "/virtualMachines/podvm-web-sbaz1");
    assert_eq!(puts.len(), 1, "one VM PUT");
    let body = puts[0].body.as_ref().unwrap();
    assert_eq!(body["tags"]["peerpod-node"], "azure-node");
    assert_eq!(body["tags"]["peerpod-sandbox"], "sbaz1");
    assert_eq!(
        body.pointer("/properties/securityProfile/securityType"),
        Some(&Value::from("ConfidentialVM"))
    );
    // What the VM would read from IMDS (the shared fixture says where).
    let f = common::userdata_fixture::fixture("azure");
    let served = arm
        .imds_user_data("podvm-web-sbaz1")
        .expect("the VM PUT carries user data where ARM takes it for IMDS")
        .unwrap();
    let ud = common::userdata_fixture::decode(
        common::userdata_fixture::text(&f, "/read/body_encoding"),
        &served,
    )
    .unwrap();
    let doc = peerpod_vmconfig::userdata::UserData::parse(&ud).expect("our cloud-config");
    assert_eq!(doc.forwarder.sandbox_id, "sbaz1");
    assert!(doc.forwarder.tls.is_some(), "the VM got its TLS material");
    assert!(nothing_left(&arm), "deleted after StartVM gave up");

    // 2. StopVM while StartVM waits: VM, NIC and disk are deleted.
    h.create_vm("sbaz2", shim_annotations("api", "default"), "")
        .await
        .unwrap();
    let h2 = Hypervisor::connect(&cfg.socket).await.unwrap();
    let start = tokio::spawn(async move { h2.start_vm("sbaz2", Duration::from_secs(60)).await });
    for _ in 0..200 {
        if arm.exists(&FakeArm::vm_path("podvm-api-sbaz2")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        arm.exists(&FakeArm::vm_path("podvm-api-sbaz2")),
        "VM created"
    );
    assert!(arm.exists(&FakeArm::nic_path("podvm-api-sbaz2")));
    assert!(arm.exists(&FakeArm::disk_path("podvm-api-sbaz2")));
    h.stop_vm("sbaz2").await.unwrap();
    let r = start.await.unwrap();
    assert!(r.is_err(), "StartVM ends when StopVM runs");
    daemon.manager.wait_teardowns().await;
    assert!(nothing_left(&arm), "{:?}", arm.of_type("virtualmachines"));
    // StopVM's sweep deletes it, and the abandoned create, once it
    // returns, sweeps again (deleting a NIC that is gone is a no-op).
    assert!(!arm
        .sent("DELETE", "/networkInterfaces/podvm-api-sbaz2-nic")
        .is_empty());

    // 3. Azure refuses: its code and message reach the shim, with the phase.
    arm.with(|s| {
        s.vm_write_fault = Some(Fault::new(
            403,
            "AuthorizationFailed",
            "The client 'c' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write'",
        ))
    });
    h.create_vm("sbaz3", shim_annotations("denied", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbaz3", Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AuthorizationFailed"), "{e}");
    assert!(e.contains("Microsoft.Compute/virtualMachines/write"), "{e}");
    assert!(e.contains("provider create"), "names the phase: {e}");
    for id in ["sbaz1", "sbaz2", "sbaz3"] {
        let _ = h.stop_vm(id).await;
    }
    daemon.manager.wait_teardowns().await;
    assert!(nothing_left(&arm));
    daemon.shutdown().await;
}
