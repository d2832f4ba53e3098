//! Orphan VM collection against real instances (forwarder processes of the
//! test provider): an instance tagged for this node whose sandbox the
//! adaptor does not know is deleted after the grace period (kept in a dry
//! run); instances of live sandboxes and of other nodes are never touched.

use cloud_api_adaptor::orphans::OrphanPolicy;
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::{InstanceRequest, OwnerTags, Provider};
use peerpod_tests::harness::config_in;
use peerpod_tests::local_world::forwarder_request;
use peerpod_tests::process_provider::ProcessProvider;
use std::sync::Arc;
use std::time::Duration;

fn request(node: &str, sandbox: &str) -> InstanceRequest {
    forwarder_request(&format!("podvm-x-{sandbox}"), node, sandbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_collected_after_grace_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "gc-node");
    cfg.tls = false;
    // The daemon's own passes: one at start, the next an hour later; the
    // test drives the passes that matter.
    cfg.orphans = OrphanPolicy {
        interval: Duration::from_secs(3600),
        grace: Duration::from_secs(2),
        dry_run: false,
    };
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    // Left behind before the adaptor (re)started: no record knows them.
    let orphan = provider
        .create_instance(request("gc-node", "lost1"))
        .await
        .unwrap();
    let untagged = {
        let mut r = request("gc-node", "");
        r.name = "podvm-untagged".into();
        provider.create_instance(r).await.unwrap()
    };
    let foreign = provider
        .create_instance(request("other-node", "theirs"))
        .await
        .unwrap();

    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let h = cloud_api_adaptor::client::Hypervisor::connect(&cfg.socket)
        .await
        .unwrap();
    h.create_vm(
        "live1",
        cloud_api_adaptor::client::shim_annotations("web", "default"),
        "",
    )
    .await
    .unwrap();
    h.start_vm("live1", Duration::from_secs(30)).await.unwrap();

    // Within the grace period: seen, not deleted.
    let r = daemon.manager.collect_orphans().await.unwrap();
    let mut seen = r.orphans.clone();
    seen.sort();
    let mut want = vec![orphan.id.clone(), untagged.id.clone()];
    want.sort();
    assert_eq!(
        seen, want,
        "exactly this node's instances without a sandbox"
    );
    assert!(r.deleted.is_empty(), "not before the grace period");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = daemon.manager.collect_orphans().await.unwrap();
    let mut deleted = r.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, want);
    let live: Vec<String> = provider.live();
    assert!(
        !live.contains(&orphan.id) && !live.contains(&untagged.id),
        "{live:?}"
    );
    assert!(
        live.contains(&foreign.id),
        "another node's instance is never touched"
    );
    let node = OwnerTags {
        cluster: String::new(),
        node: "gc-node".into(),
        sandbox_id: String::new(),
    };
    let left = provider.list_instances(&node).await.unwrap();
    assert_eq!(left.len(), 1, "only the live sandbox's instance: {left:?}");
    assert_eq!(
        left[0].tags.get("peerpod-sandbox").map(String::as_str),
        Some("live1")
    );

    h.stop_vm("live1").await.unwrap();
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
    provider.delete_instance(&foreign.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "gc-dry");
    cfg.orphans = OrphanPolicy {
        interval: Duration::from_secs(3600),
        grace: Duration::ZERO,
        dry_run: true,
    };
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let orphan = provider
        .create_instance(request("gc-dry", "lost2"))
        .await
        .unwrap();
    let daemon = Daemon::start(cfg, provider.clone()).await.unwrap();
    let r = daemon.manager.collect_orphans().await.unwrap();
    assert_eq!(r.orphans, vec![orphan.id.clone()]);
    assert!(r.deleted.is_empty());
    assert!(provider.live().contains(&orphan.id));
    daemon.shutdown().await;
    provider.delete_instance(&orphan.id).await.unwrap();
}
