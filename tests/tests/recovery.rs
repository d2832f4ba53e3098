//! Recovery against the provider's view: a sandbox recorded as running
//! whose pod VM was deleted while the adaptor was down is marked failed at
//! the next start (its agent socket closes connections instead of relaying
//! to a dead address), while a sandbox whose VM is still there comes back
//! running; StopVM then removes both.

use cloud_api_adaptor::client::agent_health;
use cloud_api_adaptor::state::Phase;
use cloud_api_adaptor::Daemon;
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_provider_api::Provider;
use peerpod_tests::harness::TestDaemon;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sandbox_whose_vm_vanished_is_failed_at_restart() {
    let mut d = TestDaemon::start(true).await;
    let (kept_sock, _kept) = d.running_sandbox("rec-kept").await;
    let (gone_sock, gone) = d.running_sandbox("rec-gone").await;

    d.daemon.take().expect("daemon").shutdown().await;
    // Deleted behind the adaptor's back (cloud console, spot reclaim).
    d.provider.delete_instance(&gone).await.unwrap();

    d.daemon = Some(
        Daemon::start(d.cfg.clone(), d.provider.clone())
            .await
            .expect("restart"),
    );
    let list = d.manager().list().await;
    let phase = |id: &str| list.iter().find(|s| s.id == id).map(|s| s.phase);
    assert_eq!(phase("rec-kept"), Some(Phase::Running), "{list:?}");
    assert_eq!(phase("rec-gone"), Some(Phase::Failed), "{list:?}");
    let record = std::fs::read_to_string(d.cfg.state_dir.join("sandboxes/rec-gone.json")).unwrap();
    assert!(
        record.contains("disappeared while the adaptor was down") && record.contains(&gone),
        "the record says why: {record}"
    );

    assert!(matches!(
        agent_health(&kept_sock, Duration::from_secs(10)).await,
        Ok(ServingStatus::SERVING)
    ));
    let e = agent_health(&gone_sock, Duration::from_secs(10)).await;
    assert!(e.is_err(), "the failed sandbox does not relay: {e:?}");

    d.stop_all().await;
    assert!(d.manager().list().await.is_empty());
    assert!(d.provider.live().is_empty(), "{:?}", d.provider.live());
}
