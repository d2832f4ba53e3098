//! The real `cloud-api-adaptor` binary (local provider) with `--kubeconfig`
//! pointing at the API server stand-in: a sandbox created, started and
//! stopped through the hypervisor API shows as Events on its pod and as a
//! PeerPod (owned by the pod, with the finalizer) that goes at StopVM; a
//! failed start posts a Warning with the phase; StartVM is not held up by
//! an unreachable or a hanging API server; the cluster id defaults to
//! kube-system's uid. Needs root.

use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_tests::adaptor_process::AdaptorProcess;
use peerpod_tests::harness::until;
use peerpod_tests::kube_apiserver::{self, ApiServer, EVENTS, PEERPODS, TOKEN};
use serde_json::Value;
use std::time::{Duration, Instant};

const NODE: &str = "kube-node";

fn event<'a>(events: &'a [Value], reason: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["reason"] == reason)
}

/// The adaptor's probe address, from its start-up log line.
fn probe_addr(a: &AdaptorProcess) -> std::net::SocketAddr {
    let log = a.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("probe endpoint listening"))
        .unwrap_or_else(|| panic!("no probe line in:\n{log}"));
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no addr in {line}"));
    addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
}

async fn metrics(a: &AdaptorProcess) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(probe_addr(a)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn sample(page: &str, prefix: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_shows_as_events_and_a_peerpod() {
    let api = ApiServer::start(1).await;
    api.add_kube_system("c1a55e55-0000-4000-8000-000000000001");
    let uid = api.add_pod("default", "nginx", NODE);
    let mut a = AdaptorProcess::new(NODE, "10.217.11.0".parse().unwrap());
    a.args = vec![
        "--kubeconfig".into(),
        api.kubeconfig(0).display().to_string(),
    ];
    a.start().await;
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    let id = "4b1d0c0ffee0123456789";
    h.create_vm(id, shim_annotations("nginx", "default"), "")
        .await
        .unwrap();
    h.start_vm(id, Duration::from_secs(60)).await.unwrap();

    // The instance carries the default cluster id: kube-system's uid.
    let owner = OwnerTags {
        cluster: String::new(),
        node: NODE.into(),
        sandbox_id: id.into(),
    };
    let instances = a.local().list_instances(&owner).await.unwrap();
    assert_eq!(instances.len(), 1);
    let inst = &instances[0];
    assert_eq!(
        inst.tags
            .get(peerpod_provider_api::TAG_CLUSTER)
            .map(String::as_str),
        Some("c1a55e55-0000-4000-8000-000000000001")
    );

    until("the PeerPod", Duration::from_secs(30), || {
        !api.list(PEERPODS).is_empty()
    })
    .await;
    let pp = &api.list(PEERPODS)[0];
    assert_eq!(pp["metadata"]["name"], "podvm-nginx-4b1d0c0f");
    assert_eq!(pp["metadata"]["namespace"], "default");
    assert_eq!(
        pp["metadata"]["finalizers"],
        serde_json::json!([peerpod_kube::FINALIZER])
    );
    assert_eq!(pp["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(pp["spec"]["instanceId"], inst.id.as_str());
    assert_eq!(pp["spec"]["provider"], "local");
    assert_eq!(pp["spec"]["nodeName"], NODE);
    assert_eq!(pp["spec"]["sandboxId"], id);
    assert_eq!(
        pp["spec"]["clusterId"],
        "c1a55e55-0000-4000-8000-000000000001"
    );

    until(
        "Creating and Running events",
        Duration::from_secs(30),
        || {
            let ev = api.list(EVENTS);
            event(&ev, "PodVMCreating").is_some() && event(&ev, "PodVMRunning").is_some()
        },
    )
    .await;
    let ev = api.list(EVENTS);
    let creating = event(&ev, "PodVMCreating").unwrap();
    assert_eq!(creating["regarding"]["uid"], uid.as_str());
    assert_eq!(creating["regarding"]["name"], "nginx");
    assert!(creating["note"]
        .as_str()
        .unwrap()
        .contains("with provider local"));
    let running = event(&ev, "PodVMRunning").unwrap();
    let note = running["note"].as_str().unwrap();
    assert!(note.contains(&format!("instance {}", inst.id)), "{note}");
    assert!(note.contains(&format!("IP {}", inst.ips[0])), "{note}");

    h.stop_vm(id).await.unwrap();
    until("the PeerPod released", Duration::from_secs(60), || {
        api.list(PEERPODS).is_empty()
    })
    .await;
    until("the Deleted event", Duration::from_secs(30), || {
        event(&api.list(EVENTS), "PodVMDeleted").is_some()
    })
    .await;
    assert!(a.local().list_instances(&owner).await.unwrap().is_empty());
    assert!(api.seen().iter().all(|s| s.authorized));
    assert!(!a.log().contains(TOKEN), "the token reached the log");
    let page = metrics(&a).await;
    assert_eq!(
        sample(&page, "peerpod_kube_events_posted_total"),
        3.0,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_posts_a_warning_with_the_phase() {
    let api = ApiServer::start(1).await;
    api.add_pod("default", "broken", NODE);
    let mut a = AdaptorProcess::new(NODE, "10.217.12.0".parse().unwrap());
    a.args = vec![
        "--kubeconfig".into(),
        api.kubeconfig(0).display().to_string(),
        "--cluster-id".into(),
        "test-cluster".into(),
    ];
    // An agent that exits at once: the VM never becomes ready.
    a.env.push(("LOCAL_AGENT_BIN".into(), "/bin/false".into()));
    a.start().await;
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    h.create_vm("badc0ffee0001", shim_annotations("broken", "default"), "")
        .await
        .unwrap();
    assert!(h
        .start_vm("badc0ffee0001", Duration::from_secs(4))
        .await
        .is_err());
    until("the Warning", Duration::from_secs(30), || {
        event(&api.list(EVENTS), "PodVMStartFailed").is_some()
    })
    .await;
    let ev = api.list(EVENTS);
    let w = event(&ev, "PodVMStartFailed").unwrap();
    assert_eq!(w["type"], "Warning");
    let note = w["note"].as_str().unwrap();
    assert!(note.contains("phase \"agent ready\""), "{note}");
    // The instance existed for a while: its PeerPod stays until the
    // sandbox is gone (the failure path's delete may still be retrying),
    // then goes with StopVM.
    until("the PeerPod", Duration::from_secs(30), || {
        api.list(PEERPODS).len() == 1
    })
    .await;
    h.stop_vm("badc0ffee0001").await.unwrap();
    until("the PeerPod released", Duration::from_secs(60), || {
        api.list(PEERPODS).is_empty()
    })
    .await;
    // Cluster id given: kube-system was never read.
    assert!(api
        .seen_matching("GET", "/namespaces/kube-system")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startvm_is_not_held_up_by_a_dead_or_hanging_api_server() {
    // Down: nothing listens where the kubeconfig points.
    let dir = tempfile::tempdir().unwrap();
    let mut down = AdaptorProcess::new(NODE, "10.217.13.0".parse().unwrap());
    down.args = vec![
        "--kubeconfig".into(),
        kube_apiserver::unreachable_kubeconfig(dir.path())
            .display()
            .to_string(),
        "--cluster-id".into(),
        "c".into(),
    ];
    down.start().await;
    let h = Hypervisor::connect(&down.socket()).await.unwrap();
    h.create_vm("d0wn0001", shim_annotations("a", "default"), "")
        .await
        .unwrap();
    h.start_vm("d0wn0001", Duration::from_secs(60))
        .await
        .unwrap();
    let mut page = String::new();
    for _ in 0..100 {
        page = metrics(&down).await;
        if sample(
            &page,
            "peerpod_kube_events_dropped_total{reason=\"api_error\"}",
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sample(
            &page,
            "peerpod_kube_events_dropped_total{reason=\"api_error\"}"
        ) >= 1.0,
        "{page}"
    );
    assert!(down.log().contains("Kubernetes API unreachable"));
    h.stop_vm("d0wn0001").await.unwrap();

    // Hanging: every answer held back for an hour. StartVM returns while
    // the API server has not answered a single request.
    let api = ApiServer::start(1).await;
    api.add_pod("default", "b", NODE);
    api.set_delay(Duration::from_secs(3600));
    let mut slow = AdaptorProcess::new(NODE, "10.217.14.0".parse().unwrap());
    slow.args = vec![
        "--kubeconfig".into(),
        api.kubeconfig(0).display().to_string(),
        "--cluster-id".into(),
        "c".into(),
    ];
    slow.start().await;
    let h = Hypervisor::connect(&slow.socket()).await.unwrap();
    h.create_vm("510w0001", shim_annotations("b", "default"), "")
        .await
        .unwrap();
    h.start_vm("510w0001", Duration::from_secs(60))
        .await
        .unwrap();
    until(
        "the reporter's request (left hanging)",
        Duration::from_secs(30),
        || !api.seen_matching("GET", "/pods/b").is_empty(),
    )
    .await;
    assert_eq!(api.answered(), 0);
    h.stop_vm("510w0001").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_id_and_no_kube_system_is_a_clear_start_up_error() {
    let api = ApiServer::start(1).await;
    let mut a = AdaptorProcess::new(NODE, "10.217.15.0".parse().unwrap());
    a.args = vec![
        "--kubeconfig".into(),
        api.kubeconfig(0).display().to_string(),
    ];
    a.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = a.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = a.log();
    assert!(log.contains("kube-system"), "{log}");
    assert!(log.contains("--cluster-id"), "{log}");
}
