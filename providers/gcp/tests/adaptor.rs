//! The adaptor with the GCP provider against the local GCE server:
//! CreateVM/StartVM insert the instance with the adaptor's cloud-config as
//! its `user-data` metadata (no VM runs behind it, so StartVM gives up),
//! the instance is deleted when StartVM fails, and GCE's own error reaches
//! the shim with the phase.

mod common;

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{provider, raw, GceServer};
use peerpod_tests::harness::config_in;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startvm_inserts_our_user_data_and_failure_deletes_the_instance() {
    let gce = GceServer::start().await;
    let p = Arc::new(provider(raw(&gce.url)).await);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "gcp-node");
    cfg.connect_timeout = Duration::from_millis(300);
    let daemon = Daemon::start(cfg.clone(), p).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    h.create_vm("sbgcp1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbgcp1", Duration::from_secs(3))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("agent ready") || e.contains("deadline"), "{e}");
    daemon.manager.wait_teardowns().await;
    let inserts = gce.seen("POST", "/instances");
    assert_eq!(inserts.len(), 1);
    let body = &inserts[0].body;
    assert_eq!(body["name"], "podvm-web-sbgcp1");
    let ud = common::vm_reads(body).expect("user data where the instance reads it");
    let doc = peerpod_vmconfig::userdata::UserData::parse(&ud).expect("our cloud-config");
    assert_eq!(doc.forwarder.sandbox_id, "sbgcp1");
    assert!(doc.forwarder.tls.is_some(), "the VM got its TLS material");
    assert!(
        gce.instance_names().is_empty(),
        "deleted after StartVM gave up: {:?}",
        gce.instance_names()
    );

    // GCE's quota error reaches the shim with its reason, message and phase.
    gce.state.lock().unwrap().quota_exceeded = true;
    h.create_vm("sbgcp2", shim_annotations("api", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbgcp2", Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("quotaExceeded"), "{e}");
    assert!(e.contains("Quota 'N2D_CPUS' exceeded"), "{e}");
    assert!(e.contains("provider create"), "{e}");
    for id in ["sbgcp1", "sbgcp2"] {
        h.stop_vm(id).await.unwrap();
    }
    daemon.manager.wait_teardowns().await;
    assert!(gce.instance_names().is_empty());
    daemon.shutdown().await;
}
