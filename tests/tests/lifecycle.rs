//! The sandbox registry's guarantees seen from the shim's side: the node's
//! limit holds under concurrent CreateVMs, and observers get every
//! life-cycle step (the hook Kubernetes Events and PeerPod objects use).

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::daemon::Extensions;
use cloud_api_adaptor::lifecycle::{EventKind, SandboxEvent, SandboxObserver};
use cloud_api_adaptor::Daemon;
use peerpod_tests::harness::{config_in, init_logging};
use peerpod_tests::process_provider::ProcessProvider;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Recorder(Mutex<Vec<SandboxEvent>>);

impl SandboxObserver for Recorder {
    fn on_event(&self, e: &SandboxEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Recorder {
    fn kinds_of(&self, id: &str) -> Vec<EventKind> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.sandbox_id == id)
            .map(|e| e.kind.clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_create_vms_never_overshoot_a_limit_of_ten() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "limit-race");
    cfg.limit_per_node = Some(10);
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..50 {
        let socket = cfg.socket.clone();
        calls.push(tokio::spawn(async move {
            let id = format!("race{i:02}");
            let h = Hypervisor::connect(&socket).await.unwrap();
            h.create_vm(&id, shim_annotations(&format!("p{i}"), "default"), "")
                .await
                .map_err(|e| e.to_string())
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.contains("PEERPODS_LIMIT_PER_NODE"), "{e}");
                full += 1;
            }
        }
    }
    assert_eq!((ok, full), (10, 40), "exactly the limit is admitted");
    assert_eq!(daemon.manager.list().await.len(), 10);
    let records = std::fs::read_dir(cfg.state_dir.join("sandboxes"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(records, 10, "refused sandboxes leave no record");
    for s in daemon.manager.list().await {
        daemon.manager.stop_vm(&s.id).await.unwrap();
    }
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_each_step_of_a_sandbox() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "events-node");
    cfg.start_timeout = Duration::from_secs(30);
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let rec = Arc::new(Recorder::default());
    let daemon = Daemon::start_with(
        cfg.clone(),
        provider.clone(),
        Extensions {
            observers: vec![rec.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    // A sandbox that starts and stops.
    h.create_vm("ev-ok", shim_annotations("web", "shop"), "")
        .await
        .unwrap();
    h.start_vm("ev-ok", Duration::from_secs(30)).await.unwrap();
    h.stop_vm("ev-ok").await.unwrap();
    daemon.manager.wait_teardowns().await;
    let kinds = rec.kinds_of("ev-ok");
    let names: Vec<&str> = kinds.iter().map(EventKind::name).collect();
    assert_eq!(
        names,
        ["Creating", "InstanceCreated", "Running", "Deleted"],
        "{kinds:?}"
    );
    let (EventKind::Running { instance_id, .. }, EventKind::Deleted { instance_id: gone }) =
        (&kinds[2], &kinds[3])
    else {
        panic!("{kinds:?}")
    };
    assert_eq!(
        gone.as_ref(),
        Some(instance_id),
        "the deleted instance is the one that ran"
    );
    let first = rec.0.lock().unwrap()[0].clone();
    assert_eq!(
        (first.pod.as_str(), first.namespace.as_str()),
        ("web", "shop")
    );
    assert!(first.instance_name.starts_with("podvm-web-"), "{first:?}");

    // A sandbox whose create fails: the phase and the cloud's words.
    *provider.fail_create.lock().unwrap() = Some("quota of 350 VMs reached".into());
    h.create_vm("ev-bad", shim_annotations("db", "shop"), "")
        .await
        .unwrap();
    h.start_vm("ev-bad", Duration::from_secs(10))
        .await
        .unwrap_err();
    let kinds = rec.kinds_of("ev-bad");
    match kinds.as_slice() {
        [EventKind::Creating { .. }, EventKind::StartFailed { phase, message }] => {
            assert_eq!(*phase, "provider create");
            assert!(message.contains("quota of 350 VMs reached"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    h.stop_vm("ev-bad").await.unwrap();
    daemon.manager.wait_teardowns().await;
    assert!(matches!(
        rec.kinds_of("ev-bad").last(),
        Some(EventKind::Deleted { .. })
    ));
    daemon.shutdown().await;
}
