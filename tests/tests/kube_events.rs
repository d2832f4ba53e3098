//! The Kubernetes reporter (peerpod-kube) against the API server stand-in,
//! through the real kube-rs client over TLS: Events land on the right pod
//! with the right reason and note, secrets never reach them, PeerPods are
//! created with an ownerReference and finalizer and released, rate limits
//! hold, and a slow or unreachable API server costs the caller nothing.

use peerpod_kube::client::{client, KubeAccess};
use peerpod_kube::metrics::{drop_reason, KubeMetrics};
use peerpod_kube::ratelimit::Rate;
use peerpod_kube::{Activity, Notice, Reporter, ReporterConfig, FINALIZER};
use peerpod_tests::harness::until;
use peerpod_tests::kube_apiserver::{self, ApiServer, EVENTS, PEERPODS, PODS};
use serde_json::Value;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

async fn kube(path: std::path::PathBuf) -> kube::Client {
    client(&KubeAccess::Kubeconfig(path))
        .await
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn notice(pod: &str, sandbox: &str, activity: Activity) -> Notice {
    Notice {
        sandbox_id: sandbox.into(),
        pod: pod.into(),
        namespace: "default".into(),
        instance_name: format!("podvm-{pod}-{}", &sandbox[..8]),
        activity,
    }
}

fn accounted(m: &KubeMetrics) -> u64 {
    m.events_posted.get()
        + [
            drop_reason::QUEUE_FULL,
            drop_reason::RATE_PER_POD,
            drop_reason::RATE_GLOBAL,
            drop_reason::API_ERROR,
            drop_reason::API_DOWN,
            drop_reason::POD_GONE,
        ]
        .iter()
        .map(|r| m.dropped_count(r))
        .sum::<u64>()
}

fn by_reason<'a>(events: &'a [Value], reason: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} event in {events:#?}"))
}

#[tokio::test]
async fn events_and_peerpod_follow_the_sandbox() {
    let api = ApiServer::start(1).await;
    let uid = api.add_pod("default", "nginx", "node-a");
    let mut cfg = ReporterConfig::new("node-a", "local");
    cfg.cluster_id = "cluster-1".into();
    let metrics = KubeMetrics::default();
    let r = Reporter::start(kube(api.kubeconfig(0)).await, cfg, metrics.clone());
    let sb = "0123456789abcdef0123";
    r.notify(notice(
        "nginx",
        sb,
        Activity::Creating {
            provider: "local".into(),
            vcpus: Some(2),
            memory_mib: Some(2048),
        },
    ));
    r.notify(notice(
        "nginx",
        sb,
        Activity::InstanceCreated {
            instance_id: "inst-1".into(),
        },
    ));
    r.notify(notice(
        "nginx",
        sb,
        Activity::Running {
            took: Duration::from_millis(4200),
            instance_id: "inst-1".into(),
            instance_type: Some("local-2x2048".into()),
            ip: Some("10.213.0.2".parse().unwrap()),
        },
    ));
    until("the PeerPod", Duration::from_secs(30), || {
        !api.list(PEERPODS).is_empty()
    })
    .await;
    let pp = &api.list(PEERPODS)[0];
    assert_eq!(pp["metadata"]["name"], "podvm-nginx-01234567");
    assert_eq!(pp["metadata"]["namespace"], "default");
    assert_eq!(pp["metadata"]["finalizers"], serde_json::json!([FINALIZER]));
    let owner = &pp["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            &owner["kind"],
            &owner["name"],
            &owner["uid"],
            &owner["apiVersion"]
        ),
        (
            &"Pod".into(),
            &"nginx".into(),
            &Value::from(uid.clone()),
            &"v1".into()
        )
    );
    let spec = &pp["spec"];
    assert_eq!(spec["provider"], "local");
    assert_eq!(spec["instanceId"], "inst-1");
    assert_eq!(spec["nodeName"], "node-a");
    assert_eq!(spec["sandboxId"], sb);
    assert_eq!(spec["podName"], "nginx");
    assert_eq!(spec["clusterId"], "cluster-1");

    r.notify(notice(
        "nginx",
        sb,
        Activity::StartFailed {
            phase: "agent ready".into(),
            message: "VM never answered; user data had -----BEGIN PRIVATE KEY-----\nMIIEsecret\n-----END PRIVATE KEY----- in it".into(),
        },
    ));
    r.notify(notice(
        "nginx",
        sb,
        Activity::Deleted {
            instance_id: Some("inst-1".into()),
        },
    ));
    until("four events", Duration::from_secs(30), || {
        api.list(EVENTS).len() == 4
    })
    .await;
    until("the PeerPod released", Duration::from_secs(30), || {
        api.list(PEERPODS).is_empty()
    })
    .await;

    let events = api.list(EVENTS);
    for e in &events {
        let reg = &e["regarding"];
        assert_eq!(reg["kind"], "Pod");
        assert_eq!(reg["name"], "nginx");
        assert_eq!(reg["namespace"], "default");
        assert_eq!(reg["uid"], uid.as_str(), "describe selects on the uid");
        assert_eq!(e["metadata"]["namespace"], "default");
        assert_eq!(
            e["reportingController"],
            "confidentialcontainers.org/cloud-api-adaptor"
        );
        assert_eq!(e["reportingInstance"], "cloud-api-adaptor-node-a");
        assert!(!e["eventTime"].is_null());
    }
    let c = by_reason(&events, "PodVMCreating");
    assert_eq!(c["type"], "Normal");
    assert_eq!(
        c["note"],
        "creating pod VM podvm-nginx-01234567 with provider local (2 vCPUs, 2048 MiB requested)"
    );
    let run = by_reason(&events, "PodVMRunning");
    assert_eq!(
        run["note"],
        "pod VM podvm-nginx-01234567 running after 4.2 s: instance inst-1, type local-2x2048, IP 10.213.0.2"
    );
    let f = by_reason(&events, "PodVMStartFailed");
    assert_eq!(f["type"], "Warning");
    let note = f["note"].as_str().unwrap();
    assert!(
        note.contains("phase \"agent ready\": VM never answered"),
        "{note}"
    );
    assert!(
        !note.contains("MIIEsecret"),
        "a key reached an Event: {note}"
    );
    let d = by_reason(&events, "PodVMDeleted");
    assert_eq!(d["action"], "StopVM");
    assert!(d["note"].as_str().unwrap().contains("inst-1"));

    // One pod lookup per sandbox and worker (events, PeerPod), all authorized.
    assert_eq!(api.seen_matching("GET", "/pods/nginx").len(), 2);
    assert!(api.seen().iter().all(|s| s.authorized));
    // Release: finalizer off by a guarded JSON patch, then the delete.
    let patch = api.seen_matching("PATCH", "/peerpods/podvm-nginx-01234567");
    assert_eq!(patch.len(), 1);
    assert!(patch[0]
        .content_type
        .starts_with("application/json-patch+json"));
    assert_eq!(patch[0].body[0]["op"], "test");
    assert_eq!(
        api.seen_matching("DELETE", "/peerpods/podvm-nginx-01234567")
            .len(),
        1
    );
    assert_eq!(metrics.events_posted.get(), 4);
}

#[tokio::test]
async fn rate_limits_hold_per_pod_and_per_node() {
    let api = ApiServer::start(1).await;
    for p in ["a", "b", "c"] {
        api.add_pod("default", p, "n");
    }
    let mut cfg = ReporterConfig::new("n", "local");
    cfg.peerpods = false;
    cfg.per_pod = Rate::new(3, HOUR);
    cfg.global = Rate::new(5, HOUR);
    let metrics = KubeMetrics::default();
    let r = Reporter::start(kube(api.kubeconfig(0)).await, cfg, metrics.clone());
    let deleted = || Activity::Deleted { instance_id: None };
    for i in 0..10 {
        r.notify(notice("a", &format!("aaaaaaaa{i:04}"), deleted()));
    }
    for i in 0..5 {
        r.notify(notice("b", &format!("bbbbbbbb{i:04}"), deleted()));
    }
    r.notify(notice("c", "cccccccc0000", deleted()));
    until(
        "every notice accounted for",
        Duration::from_secs(30),
        || accounted(&metrics) == 16,
    )
    .await;
    assert_eq!(metrics.events_posted.get(), 5, "the node's burst");
    assert_eq!(
        metrics.dropped_count(drop_reason::RATE_PER_POD),
        7,
        "a: 10 - 3"
    );
    assert_eq!(
        metrics.dropped_count(drop_reason::RATE_GLOBAL),
        4,
        "b: 3, c: 1"
    );
    // Repeats of one Event on one pod are one object with a series count
    // (kube-runtime's Recorder; `kubectl describe` shows "x3").
    let events = api.list(EVENTS);
    let on = |p: &str| -> u64 {
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["regarding"]["name"] == p)
            .collect();
        assert!(mine.len() <= 1, "{mine:#?}");
        mine.first()
            .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
            .unwrap_or(0)
    };
    assert_eq!((on("a"), on("b"), on("c")), (3, 2, 0));
}

#[tokio::test]
async fn unreachable_api_drops_events_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ReporterConfig::new("n", "local");
    cfg.peerpods = false;
    cfg.down_for = HOUR;
    let metrics = KubeMetrics::default();
    let r = Reporter::start(
        kube(kube_apiserver::unreachable_kubeconfig(dir.path())).await,
        cfg,
        metrics.clone(),
    );
    for i in 0..3 {
        r.notify(notice(
            "a",
            &format!("aaaaaaaa{i:04}"),
            Activity::Deleted { instance_id: None },
        ));
    }
    until(
        "every notice accounted for",
        Duration::from_secs(30),
        || accounted(&metrics) == 3,
    )
    .await;
    assert_eq!(metrics.dropped_count(drop_reason::API_ERROR), 1);
    assert_eq!(
        metrics.dropped_count(drop_reason::API_DOWN),
        2,
        "after a failure, Events are dropped without queueing behind a dead server"
    );
    assert_eq!(metrics.events_posted.get(), 0);
}

#[tokio::test]
async fn a_hanging_api_never_holds_up_notify() {
    let api = ApiServer::start(1).await;
    api.add_pod("default", "a", "n");
    api.set_delay(HOUR);
    let mut cfg = ReporterConfig::new("n", "local");
    cfg.queue = 4;
    cfg.request_timeout = HOUR;
    let metrics = KubeMetrics::default();
    let r = Reporter::start(kube(api.kubeconfig(0)).await, cfg, metrics.clone());
    for i in 0..50 {
        r.notify(notice(
            "a",
            &format!("aaaaaaaa{i:04}"),
            Activity::Running {
                took: Duration::from_secs(1),
                instance_id: format!("i-{i}"),
                instance_type: None,
                ip: None,
            },
        ));
        r.notify(notice(
            "a",
            &format!("aaaaaaaa{i:04}"),
            Activity::InstanceCreated {
                instance_id: format!("i-{i}"),
            },
        ));
    }
    // All 50 calls returned while the server has answered nothing: the
    // queue took 4, the worker holds at most 1, the rest were dropped.
    let full = metrics.dropped_count(drop_reason::QUEUE_FULL);
    assert!((45..=46).contains(&full), "queue_full drops: {full}");
    let pp_full = metrics
        .peerpod_ops
        .get_or_create(&peerpod_kube::metrics::OpLabels {
            op: "create".into(),
            outcome: "queue_full".into(),
        })
        .get();
    assert!(
        (45..=46).contains(&pp_full),
        "PeerPod queue_full: {pp_full}"
    );
    until(
        "the worker's first request",
        Duration::from_secs(30),
        || !api.seen_matching("GET", "/pods/a").is_empty(),
    )
    .await;
    assert_eq!(api.answered(), 0);
    assert!(api.list(PODS).len() == 1);
}
