//! `peerpod-ctrl`'s logic (the library the binary runs) against the API
//! server stand-in, with real `local` provider instances: it deletes the
//! instance of a PeerPod being deleted and removes the finalizer, deletes
//! PeerPods (and instances) whose node is gone, never deletes an instance
//! whose node and pod are alive (nor one of another provider), and of two
//! controllers only the Lease holder acts — until it dies and the other
//! takes over; and the binary as the chart runs it. Needs root (the
//! local provider makes namespaces and links).

use peerpod_ctrl::lease::LeaseConfig;
use peerpod_ctrl::{run, ControllerOptions, CtrlError};
use peerpod_kube::client::{client, KubeAccess};
use peerpod_kube::FINALIZER;
use peerpod_tests::harness::until;
use peerpod_tests::kube_apiserver::{ApiServer, LEASES, PEERPODS};
use peerpod_tests::local_world::LocalWorld;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "default";
const LEASE_NS: &str = "peerpods-system";

async fn kube(api: &ApiServer, listener: usize) -> kube::Client {
    client(&KubeAccess::Kubeconfig(api.kubeconfig(listener)))
        .await
        .unwrap_or_else(|e| panic!("client: {e}"))
}

fn options(identity: &str) -> ControllerOptions {
    let mut lease = LeaseConfig::new(LEASE_NS, "peerpod-ctrl", identity);
    lease.lease_duration = Duration::from_secs(2);
    lease.renew_deadline = Duration::from_millis(1500);
    lease.retry_period = Duration::from_millis(300);
    ControllerOptions {
        lease,
        node_check_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
    }
}

/// A controller running in the background until dropped (or stopped).
struct Running {
    leading: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), CtrlError>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    async fn start(api: &ApiServer, listener: usize, world: &LocalWorld, identity: &str) -> Self {
        let c = kube(api, listener).await;
        let leading = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            c,
            world.dyn_provider(),
            options(identity),
            leading.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            leading,
            stop: Some(tx),
            task,
        }
    }

    fn leads(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Clean shutdown: returns what `run` returned.
    async fn stop(mut self) -> Result<(), CtrlError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("controller task")
    }
}

/// Stores a PeerPod as the adaptor makes it.
fn peerpod(
    api: &ApiServer,
    name: &str,
    provider: &str,
    instance_id: &str,
    node: &str,
    pod: &str,
    pod_uid: &str,
) {
    api.put(
        PEERPODS,
        NS,
        json!({
            "metadata": {
                "name": name,
                "finalizers": [FINALIZER],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}],
            },
            "spec": {
                "provider": provider, "instanceId": instance_id, "instanceName": name,
                "nodeName": node, "sandboxId": format!("sb-{name}"), "podName": pod,
            },
        }),
    );
}

fn peerpod_obj(api: &ApiServer, name: &str) -> Option<Value> {
    api.get(PEERPODS, NS, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_deletes_instances_of_dead_pods_and_gone_nodes_only() {
    let api = ApiServer::start(1).await;
    let world = LocalWorld::new();
    api.add_node("alive");
    let live_uid = api.add_pod(NS, "db", "alive");

    // A: the pod was deleted (the GC deletes its PeerPod); node alive.
    let a = world.instance("alive", "sba").await;
    peerpod(
        &api,
        "pp-a",
        "local",
        &a.id,
        "alive",
        "web",
        "uid-of-deleted-pod",
    );
    api.delete(PEERPODS, NS, "pp-a");
    // B: the node is gone (no Node object), PeerPod not deleted by anyone.
    let b = world.instance("gone", "sbb").await;
    peerpod(&api, "pp-b", "local", &b.id, "gone", "db2", "uid-b");
    // C: node and pod alive: the node's adaptor owns the instance.
    let c = world.instance("alive", "sbc").await;
    peerpod(&api, "pp-c", "local", &c.id, "alive", "db", &live_uid);
    // D: node and pod alive, PeerPod deleted by hand: finalizer goes, instance stays.
    let d = world.instance("alive", "sbd").await;
    peerpod(&api, "pp-d", "local", &d.id, "alive", "db", &live_uid);
    api.delete(PEERPODS, NS, "pp-d");
    // E: made by another provider: never deleted here, the finalizer stays.
    let e = world.instance("gone", "sbe").await;
    peerpod(&api, "pp-e", "aws", &e.id, "gone", "x", "uid-e");
    api.delete(PEERPODS, NS, "pp-e");

    let ctrl = Running::start(&api, 0, &world, "ctrl-0").await;
    until("A and B cleaned up", Duration::from_secs(60), || {
        peerpod_obj(&api, "pp-a").is_none() && peerpod_obj(&api, "pp-b").is_none()
    })
    .await;
    assert!(!world.exists(&a.id), "A's instance deleted");
    assert!(!world.exists(&b.id), "B's instance deleted");
    // B went through NodeGone and a delete of the PeerPod.
    assert!(!api.seen_matching("DELETE", "/peerpods/pp-b").is_empty());
    assert!(!api
        .seen_matching("PATCH", "/peerpods/pp-b/status")
        .is_empty());

    until("D's finalizer removed", Duration::from_secs(30), || {
        peerpod_obj(&api, "pp-d").is_none()
    })
    .await;
    assert!(world.exists(&d.id), "D's instance belongs to a live pod");
    until("E marked failed", Duration::from_secs(30), || {
        peerpod_obj(&api, "pp-e").is_some_and(|p| p["status"]["phase"] == "DeleteFailed")
    })
    .await;
    let pe = peerpod_obj(&api, "pp-e").unwrap();
    assert!(
        pe["status"]["message"]
            .as_str()
            .unwrap()
            .contains("made by provider aws; this controller runs local"),
        "{pe}"
    );
    assert_eq!(pe["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(world.exists(&e.id));
    // C was looked at (its node checked again and again) and left alone.
    until("C's node rechecked", Duration::from_secs(30), || {
        api.seen_matching("GET", "/api/v1/nodes/alive").len() >= 3
    })
    .await;
    assert!(peerpod_obj(&api, "pp-c").is_some());
    assert!(world.exists(&c.id));
    // Only the instances above were deleted, and only by the PeerPod path.
    assert!(api.seen().iter().all(|s| s.authorized));

    assert!(ctrl.stop().await.is_ok());
    let lease = api.get(LEASES, LEASE_NS, "peerpod-ctrl").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released at shutdown: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    // Two listeners on one store: requests tell the controllers apart.
    let api = ApiServer::start(2).await;
    let world = LocalWorld::new();
    let first = Running::start(&api, 0, &world, "ctrl-0").await;
    let second = Running::start(&api, 1, &world, "ctrl-1").await;
    until("a leader", Duration::from_secs(30), || {
        first.leads() || second.leads()
    })
    .await;
    // Give the standby time to try (and fail) a few times.
    until(
        "the standby's lease attempts",
        Duration::from_secs(30),
        || {
            let standby = if first.leads() { 1 } else { 0 };
            api.seen()
                .iter()
                .filter(|s| s.listener == standby && s.path.contains("/leases"))
                .count()
                >= 5
        },
    )
    .await;
    assert!(!(first.leads() && second.leads()), "two leaders");
    let (leader, standby, leader_idx, standby_idx) = if first.leads() {
        (first, second, 0, 1)
    } else {
        (second, first, 1, 0)
    };

    let x = world.instance("gone", "sbx").await;
    peerpod(&api, "pp-x", "local", &x.id, "gone", "p", "u");
    api.delete(PEERPODS, NS, "pp-x");
    until("pp-x cleaned", Duration::from_secs(60), || {
        peerpod_obj(&api, "pp-x").is_none()
    })
    .await;
    assert!(!world.exists(&x.id));
    let touched = |idx: usize| {
        api.seen()
            .iter()
            .filter(|s| {
                s.listener == idx
                    && (s.path.contains("/confidentialcontainers.org/")
                        || s.path.contains("/nodes/"))
            })
            .count()
    };
    assert!(touched(leader_idx) > 0);
    assert_eq!(touched(standby_idx), 0, "the standby acted");

    // The leader dies without releasing the Lease: the standby takes
    // over once it has seen the Lease unrenewed for a whole duration.
    drop(leader);
    until("the standby leads", Duration::from_secs(30), || {
        standby.leads()
    })
    .await;
    let y = world.instance("gone", "sby").await;
    peerpod(&api, "pp-y", "local", &y.id, "gone", "p", "u");
    api.delete(PEERPODS, NS, "pp-y");
    until("pp-y cleaned", Duration::from_secs(60), || {
        peerpod_obj(&api, "pp-y").is_none()
    })
    .await;
    assert!(!world.exists(&y.id));
    assert!(touched(standby_idx) > 0);
    let lease = api.get(LEASES, LEASE_NS, "peerpod-ctrl").unwrap();
    let ids = ["ctrl-0", "ctrl-1"];
    assert_eq!(lease["spec"]["holderIdentity"], ids[standby_idx]);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(standby.stop().await.is_ok());
}

/// A leader cut off from the API server stops acting after the renew deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops() {
    let api = ApiServer::start(1).await;
    let world = LocalWorld::new();
    let ctrl = Running::start(&api, 0, &world, "ctrl-0").await;
    until("leading", Duration::from_secs(30), || ctrl.leads()).await;
    // Every answer now takes longer than a renew attempt may.
    api.set_delay(Duration::from_secs(30));
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        let mut ctrl = ctrl;
        let r = (&mut ctrl.task).await;
        (r, ctrl.leads())
    })
    .await
    .expect("the controller kept running without its lease");
    let (r, leads) = r;
    assert!(!leads);
    match r.expect("task") {
        Err(CtrlError::LostLease(l)) => assert_eq!(l, format!("{LEASE_NS}/peerpod-ctrl")),
        other => panic!("expected LostLease, got {other:?}"),
    }
}

/// The `peerpod-ctrl` process, killed when dropped.
struct CtrlProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for CtrlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CtrlProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The real binary, configured as the chart runs it (POD_NAMESPACE,
/// POD_NAME from the downward API; the provider from its subcommand and
/// env), against the stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_cleans_up_leads_and_releases_on_sigterm() {
    let api = ApiServer::start(1).await;
    let world = LocalWorld::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ctrl.log");
    let child = std::process::Command::new(peerpod_tests::bins::bin_path("peerpod-ctrl"))
        .args([
            "--lease-duration",
            "3",
            "--renew-deadline",
            "2",
            "--retry-period",
            "1",
        ])
        .args([
            "--probe-listen",
            "127.0.0.1:0",
            "--node-check-interval",
            "1",
        ])
        .arg("local")
        .env("PEERPOD_KUBECONFIG", api.kubeconfig(0))
        .env("POD_NAMESPACE", LEASE_NS)
        .env("POD_NAME", "peerpod-ctrl-7d9f-abcde")
        .env("LOCAL_STATE_DIR", world.dir.path().join("state"))
        .env("LOCAL_BRIDGE", &world.bridge)
        .env("LOCAL_SUBNET", world.subnet.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("peerpod-ctrl");
    let mut ctrl = CtrlProcess { child, log };

    let z = world.instance("gone-node", "sbz").await;
    peerpod(&api, "pp-z", "local", &z.id, "gone-node", "p", "u");
    until("pp-z cleaned", Duration::from_secs(60), || {
        peerpod_obj(&api, "pp-z").is_none()
    })
    .await;
    assert!(!world.exists(&z.id), "{}", ctrl.log());
    let lease = api.get(LEASES, LEASE_NS, "peerpod-ctrl").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "peerpod-ctrl-7d9f-abcde");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 3);

    // /leader says so.
    let line = ctrl
        .log()
        .lines()
        .find(|l| l.contains("probe endpoint listening"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no probe line:\n{}", ctrl.log()));
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /leader HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ctrl.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = ctrl.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no exit on SIGTERM:\n{}",
            ctrl.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}:\n{}", ctrl.log());
    let lease = api.get(LEASES, LEASE_NS, "peerpod-ctrl").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}
