//! The remote hypervisor API end to end: a real daemon on a unix socket,
//! called through ttrpc as the Kata shim calls it, with real forwarder and
//! agent-double processes behind a provider.

use cloud_api_adaptor::annotations::*;
use cloud_api_adaptor::client::{agent_health, shim_annotations};
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_tests::agent_double::read_records;
use peerpod_tests::harness::TestDaemon;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_answers() {
    let d = TestDaemon::start(true).await;
    let v = d.hypervisor().await.version().await.unwrap();
    assert_eq!(v, cloud_api_adaptor::service::API_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_vm_validation_errors_name_field_and_value() {
    let d = TestDaemon::start(true).await;
    let h = d.hypervisor().await;
    let base = shim_annotations("nginx", "default");

    // (sandbox id, annotation override, text the error must contain)
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("", None, vec!["invalid sandbox id", "empty"]),
        ("../x", None, vec!["invalid sandbox id", "../x"]),
        ("s1", Some((SANDBOX_NAME, "")), vec![SANDBOX_NAME]),
        ("s2", Some((SANDBOX_NAMESPACE, "")), vec![SANDBOX_NAMESPACE]),
        (
            "s3",
            Some((DEFAULT_VCPUS, "0")),
            vec![DEFAULT_VCPUS, "\"0\"", "greater than zero"],
        ),
        (
            "s4",
            Some((DEFAULT_VCPUS, "abc")),
            vec![DEFAULT_VCPUS, "abc"],
        ),
        (
            "s5",
            Some((DEFAULT_MEMORY, "0")),
            vec![DEFAULT_MEMORY, "\"0\""],
        ),
        (
            "s6",
            Some((DEFAULT_MEMORY, "1.5G")),
            vec![DEFAULT_MEMORY, "1.5G"],
        ),
    ];
    for (id, over, want) in cases {
        let mut a = base.clone();
        if let Some((k, v)) = over {
            a.insert(k.into(), v.into());
        }
        let e = h.create_vm(id, a, "").await.unwrap_err().to_string();
        assert!(
            e.contains("InvalidArgument") || e.contains("INVALID_ARGUMENT"),
            "{e}"
        );
        for w in want {
            assert!(e.contains(w), "error for {id:?} lacks {w:?}: {e}");
        }
    }
    // A missing key (not just empty) is refused too.
    let mut a = base.clone();
    a.remove(SANDBOX_NAME);
    let e = h.create_vm("s7", a, "").await.unwrap_err().to_string();
    assert!(e.contains(SANDBOX_NAME), "{e}");

    // Empty values mean "unset"; "0.5" vCPUs is accepted.
    let mut a = base.clone();
    a.insert(DEFAULT_VCPUS.into(), "0.5".into());
    h.create_vm("ok1", a.clone(), "").await.unwrap();
    // A duplicate id names the id.
    let e = h.create_vm("ok1", a, "").await.unwrap_err().to_string();
    assert!(e.contains("ok1") && e.contains("already in use"), "{e}");
    // Nothing invalid reached the provider or the state directory.
    assert_eq!(
        d.provider.created.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let records = std::fs::read_dir(d.cfg.state_dir.join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(records, 1, "only the valid sandbox is persisted");
    d.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_stop_end_to_end() {
    let d = TestDaemon::start(true).await;
    let id = "e2e0123456789";
    let (sock, instance) = d.running_sandbox(id).await;
    assert_eq!(sock, d.cfg.pods_dir.join(id).join("agent.ttrpc"));
    // StartVM returned only after a Health check reached the agent.
    let seen = read_records(&d.provider.record_file(&instance));
    assert!(
        seen.iter()
            .any(|r| r.service == "grpc.Health" && r.method == "Check"),
        "{seen:?}"
    );
    // The shim's view: the agent socket answers.
    assert_eq!(
        agent_health(&sock, Duration::from_secs(5)).await.unwrap(),
        ServingStatus::SERVING
    );
    let listed = d.manager().list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].phase.as_str(), "running");

    let h = d.hypervisor().await;
    let t = std::time::Instant::now();
    h.stop_vm(id).await.unwrap();
    // StopVM answers at once (the Rust runtime waits only 1 s).
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "StopVM took {:?}",
        t.elapsed()
    );
    // A second StopVM and one for an unknown id succeed.
    h.stop_vm(id).await.unwrap();
    h.stop_vm("never-created").await.unwrap();
    d.manager().wait_teardowns().await;
    assert!(d.provider.live().is_empty(), "instance deleted");
    assert!(!d.cfg.pods_dir.join(id).exists(), "pod directory removed");
    assert!(!d
        .cfg
        .state_dir
        .join("sandboxes")
        .join(format!("{id}.json"))
        .exists());
    assert!(agent_health(&sock, Duration::from_secs(2)).await.is_err());
    h.stop_vm(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_names_the_phase_and_keeps_the_cloud_message() {
    let d = TestDaemon::start(true).await;
    *d.provider.fail_create.lock().unwrap() = Some("quota of 350 VMs reached".into());
    let h = d.hypervisor().await;
    h.create_vm("q1", shim_annotations("p", "ns"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("q1", Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("provider create")
            && e.contains("quota of 350 VMs reached")
            && e.contains("TestQuota"),
        "{e}"
    );
    assert!(
        e.contains("ResourceExhausted") || e.contains("RESOURCE_EXHAUSTED"),
        "{e}"
    );
    let listed = d.manager().list().await;
    assert_eq!(listed[0].phase.as_str(), "failed");
    // The shim then calls StopVM: everything goes.
    h.stop_vm("q1").await.unwrap();
    d.manager().wait_teardowns().await;
    assert!(d.manager().list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_never_ready_times_out_and_its_instance_is_deleted() {
    let d = TestDaemon::start(true).await;
    d.provider
        .no_forwarder
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let h = d.hypervisor().await;
    h.create_vm("slow1", shim_annotations("p", "ns"), "")
        .await
        .unwrap();
    // The caller's deadline bounds the wait.
    let t = std::time::Instant::now();
    let e = h
        .start_vm("slow1", Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        e.contains("agent ready") && e.contains("not reachable"),
        "{e}"
    );
    assert_eq!(
        d.provider.created.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        d.provider.live().is_empty(),
        "the instance StartVM made was deleted"
    );
    h.stop_vm("slow1").await.unwrap();
    d.manager().wait_teardowns().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_start_cancels_and_leaves_nothing() {
    let d = TestDaemon::start(true).await;
    d.provider
        .no_forwarder
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let h = d.hypervisor().await;
    h.create_vm("c1", shim_annotations("p", "ns"), "")
        .await
        .unwrap();
    let sock = d.cfg.socket.clone();
    let start = tokio::spawn(async move {
        let h = cloud_api_adaptor::client::Hypervisor::connect(&sock)
            .await
            .unwrap();
        h.start_vm("c1", Duration::from_secs(20)).await
    });
    // Wait until the instance exists, then stop.
    for _ in 0..200 {
        if !d.provider.live().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.stop_vm("c1").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), start)
        .await
        .unwrap()
        .unwrap();
    assert!(r.unwrap_err().to_string().contains("stopped by StopVM"));
    d.manager().wait_teardowns().await;
    assert!(d.provider.live().is_empty());
    assert!(d.manager().list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_refuses_a_live_socket_and_state_dir() {
    let d = TestDaemon::start(true).await;
    let provider = d.provider.clone();
    let e = cloud_api_adaptor::Daemon::start(d.cfg.clone(), provider)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already uses the state directory"), "{e}");
    let mut other = d.cfg.clone();
    other.state_dir = d.dir.path().join("state2");
    let e = cloud_api_adaptor::Daemon::start(other, d.provider.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another live process"), "{e}");
    // The first daemon still serves.
    d.hypervisor().await.version().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_limit_refuses_one_more_and_frees_on_stop() {
    use cloud_api_adaptor::Daemon;
    use peerpod_tests::harness::config_in;
    use peerpod_tests::process_provider::ProcessProvider;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "limit-node");
    cfg.limit_per_node = Some(2);
    let provider = std::sync::Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let h = cloud_api_adaptor::client::Hypervisor::connect(&cfg.socket)
        .await
        .unwrap();
    for id in ["lim1", "lim2"] {
        h.create_vm(id, shim_annotations(id, "default"), "")
            .await
            .unwrap();
    }
    let e = h
        .create_vm("lim3", shim_annotations("lim3", "default"), "")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("PEERPODS_LIMIT_PER_NODE"), "{e}");
    assert!(
        e.contains("RESOURCE_EXHAUSTED") || e.contains("ResourceExhausted"),
        "{e}"
    );
    // A stopped sandbox frees its place.
    h.stop_vm("lim1").await.unwrap();
    daemon.manager.wait_teardowns().await;
    h.create_vm("lim3", shim_annotations("lim3", "default"), "")
        .await
        .expect("room again after StopVM");
    for id in ["lim2", "lim3"] {
        h.stop_vm(id).await.unwrap();
    }
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
}
