//! Fault injection: the adaptor runs over a provider whose creates fail
//! 30% of the time (half before anything was made, half after the
//! instance was made) and whose deletes "time out" 20% of the time (hang
//! beyond the adaptor's provider timeout, or answer a timeout error with
//! or without having deleted). Over many sandboxes, with shim-like clients
//! (StopVM after every StartVM, failed or not): every injected create
//! failure reaches the StartVM caller as an error carrying the provider's
//! own message, every other StartVM succeeds end to end, and once the
//! background teardowns are done no instance is left (the teardown
//! retries until the deletes go through). `FAULT_SEED` replays the draws.

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_tests::faulty_provider::{FaultKind, FaultPlan, FaultyProvider};
use peerpod_tests::harness::{config_in, init_logging};
use peerpod_tests::process_provider::ProcessProvider;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SANDBOXES: usize = 100;
const PARALLEL: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_faults_reach_the_caller_and_nothing_leaks() {
    init_logging();
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault test seed: FAULT_SEED={seed}");
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "fault-node");
    cfg.start_timeout = Duration::from_secs(30);
    cfg.provider_timeout = Duration::from_secs(2);
    // Dropping the provider kills its instances' processes (a failed test
    // leaves none behind).
    let inner = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let plan = FaultPlan {
        create_fail: 0.3,
        delete_timeout: 0.2,
        hang: Duration::from_secs(4),
    };
    let faulty = Arc::new(FaultyProvider::new(inner.clone(), plan, seed));
    let daemon = Daemon::start(cfg.clone(), faulty.clone()).await.unwrap();

    // (sandbox, StartVM error) for every StartVM that failed.
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut started = 0;
    for batch in (0..SANDBOXES).collect::<Vec<_>>().chunks(PARALLEL) {
        let mut tasks = Vec::new();
        for &n in batch {
            let socket = cfg.socket.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("fault-{n:02}");
                let h = Hypervisor::connect(&socket).await.unwrap();
                let agent = h
                    .create_vm(&id, shim_annotations(&format!("pod-{n}"), "faults"), "")
                    .await
                    .unwrap();
                let outcome = match h.start_vm(&id, Duration::from_secs(30)).await {
                    Ok(()) => {
                        let s = agent_health(std::path::Path::new(&agent), Duration::from_secs(10))
                            .await;
                        assert!(matches!(s, Ok(ServingStatus::SERVING)), "{id}: {s:?}");
                        None
                    }
                    Err(e) => Some(e.to_string()),
                };
                // As runtime-rs does on container exit: StopVM, twice.
                h.stop_vm(&id).await.unwrap();
                if n % 2 == 0 {
                    h.stop_vm(&id).await.unwrap();
                }
                (id, outcome)
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                (id, Some(err)) => failures.push((id, err)),
                (_, None) => started += 1,
            }
        }
    }

    // The teardowns retry until every delete went through.
    tokio::time::timeout(Duration::from_secs(120), daemon.manager.wait_teardowns())
        .await
        .expect("teardowns finish within 120 s");
    let injected = faulty.injected();
    let count = |k: FaultKind| injected.iter().filter(|i| i.kind == k).count();
    let create_faults: Vec<_> = injected
        .iter()
        .filter(|i| {
            matches!(
                i.kind,
                FaultKind::CreateFailedBefore | FaultKind::CreateFailedAfter
            )
        })
        .collect();
    eprintln!(
        "fault test: {SANDBOXES} sandboxes, {started} started, {} StartVM failures; creates {} \
         (failed before {}, after {}), deletes {} (hung {}, timeout error before {}, after {}); took {:?}",
        failures.len(),
        faulty.creates.load(std::sync::atomic::Ordering::SeqCst),
        count(FaultKind::CreateFailedBefore),
        count(FaultKind::CreateFailedAfter),
        faulty.deletes.load(std::sync::atomic::Ordering::SeqCst),
        count(FaultKind::DeleteHung),
        count(FaultKind::DeleteTimeoutBefore),
        count(FaultKind::DeleteTimeoutAfter),
        began.elapsed()
    );

    assert!(
        inner.live().is_empty(),
        "leaked instances: {:?}",
        inner.live()
    );
    assert!(daemon.manager.list().await.is_empty());
    let records = std::fs::read_dir(cfg.state_dir.join("sandboxes"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(records, 0, "every record forgotten");

    // Each create fault reached its own caller, with the provider's words.
    for f in &create_faults {
        let hits: Vec<_> = failures
            .iter()
            .filter(|(_, e)| e.contains(&f.message))
            .collect();
        assert_eq!(hits.len(), 1, "{f:?} reached one caller: {failures:#?}");
        assert_eq!(hits[0].0, f.target, "{f:?} reached its own caller");
        assert!(
            hits[0].1.contains("provider create"),
            "the error names the phase: {}",
            hits[0].1
        );
    }
    // And nothing else failed.
    assert_eq!(
        failures.len(),
        create_faults.len(),
        "StartVM failures not caused by an injected create fault: {failures:#?}"
    );
    assert_eq!(started + failures.len(), SANDBOXES);
    // The run exercised what it claims to (expected: ~30 create faults,
    // ~20% of 100+ deletes).
    assert!(create_faults.len() >= 5, "too few create faults drawn");
    let delete_faults = count(FaultKind::DeleteHung)
        + count(FaultKind::DeleteTimeoutBefore)
        + count(FaultKind::DeleteTimeoutAfter);
    assert!(delete_faults >= 3, "too few delete faults drawn");
    daemon.shutdown().await;
}
