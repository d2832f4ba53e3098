//! Crash test: the real `cloud-api-adaptor` binary (`local` provider) is
//! SIGKILLed at random points while shim-like clients run 200
//! create/start/stop cycles over 20 sandbox ids, and started again each
//! time. Half the sandboxes have a pod network namespace, so their VXLAN
//! tunnels are set up and torn down under the kills too. A client behaves as the shims do: every call on a new
//! connection; a call cut by the kill is retried once the adaptor is back
//! (a StartVM the restart turned into a failure is answered by StopVM);
//! StopVM is sometimes sent twice. At the end: every sandbox the clients
//! consider running answers a Health check through its agent socket and
//! owns exactly one instance; every stopped one has no instance, record,
//! socket or directory; the provider holds no instance, network namespace,
//! bridge port or process that no running sandbox owns.
//!
//! `CRASH_SEED` replays a run's choices (kill times, which sandboxes stay
//! running, double StopVMs); the seed is printed. Needs root.

use cloud_api_adaptor::client::{agent_health, shim_annotations, ClientError, Hypervisor};
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_tests::adaptor_process::AdaptorProcess;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLOTS: usize = 20;
const CYCLES: usize = 200;
const WORKERS: usize = 4;
const MIN_KILLS: u32 = 20;
const NODE: &str = "crash-node";

/// How a call ended, as a shim sees it.
enum Reply {
    Ok,
    /// The adaptor answered with a status: (code name, message).
    Status(String, String),
    /// No answer: the call was cut (the adaptor was killed during it).
    Lost,
    /// No connection: the adaptor is down (the call was never made).
    Down,
}

fn classify<T>(r: Result<T, ClientError>) -> (Reply, Option<T>) {
    match r {
        Ok(v) => (Reply::Ok, Some(v)),
        Err(ClientError::Connect { .. }) => (Reply::Down, None),
        Err(ClientError::Call { message, .. }) => {
            // Statuses are rendered "CODE: message"; transport errors are not.
            match message.split_once(": ") {
                Some((code, msg))
                    if !code.is_empty()
                        && code.chars().all(|c| c.is_ascii_uppercase() || c == '_') =>
                {
                    (Reply::Status(code.to_string(), msg.to_string()), None)
                }
                _ => (Reply::Lost, None),
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    cycles: AtomicU32,
    lost_calls: AtomicU32,
    start_retried: AtomicU32,
    start_failed_then_stopped: AtomicU32,
    double_stops: AtomicU32,
    create_already_created: AtomicU32,
}

struct Client {
    socket: PathBuf,
    stats: Arc<Stats>,
    anomalies: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn anomaly(&self, what: String) {
        eprintln!("ANOMALY: {what}");
        if let Ok(mut a) = self.anomalies.lock() {
            a.push(what);
        }
    }

    async fn hv(&self) -> Result<Hypervisor, ClientError> {
        Hypervisor::connect(&self.socket).await
    }

    /// Waits a little before retrying a call that got no answer.
    async fn lost(&self) {
        self.stats.lost_calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn create(&self, id: &str, netns: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let r = match self.hv().await {
                Ok(h) => {
                    h.create_vm(id, shim_annotations(&format!("pod-{id}"), "crash"), netns)
                        .await
                }
                Err(e) => Err(e),
            };
            match classify(r) {
                (Reply::Ok, _) => return true,
                (Reply::Status(c, m), _)
                    if c == "ALREADY_EXISTS" && m.contains("phase created") =>
                {
                    // Our CreateVM cut by a kill had gone through.
                    self.stats
                        .create_already_created
                        .fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                (Reply::Status(c, m), _)
                    if c == "ALREADY_EXISTS"
                        && (m.contains("phase stopping") || m.contains("phase busy")) =>
                {
                    // The previous cycle's teardown is still running.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (Reply::Status(c, m), _) => {
                    self.anomaly(format!("CreateVM {id}: {c}: {m}"));
                    return false;
                }
                (Reply::Lost, _) => self.lost().await,
                (Reply::Down, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.anomaly(format!("CreateVM {id}: no success within 90 s"));
        false
    }

    /// StartVM, retried when cut; returns whether the sandbox runs.
    async fn start(&self, id: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut cut = 0;
        while cut < 8 && Instant::now() < deadline {
            let r = match self.hv().await {
                Ok(h) => h.start_vm(id, Duration::from_secs(60)).await,
                Err(e) => Err(e),
            };
            match classify(r) {
                (Reply::Ok, _) => return true,
                (Reply::Status(c, m), _) if c == "FAILED_PRECONDITION" && m.contains("failed") => {
                    // The restart found this StartVM half-done and cleaned
                    // it up: the shim gives up on the sandbox.
                    self.stats
                        .start_failed_then_stopped
                        .fetch_add(1, Ordering::Relaxed);
                    self.stop(id).await;
                    return false;
                }
                (Reply::Status(c, m), _) => {
                    self.anomaly(format!("StartVM {id}: {c}: {m}"));
                    self.stop(id).await;
                    return false;
                }
                (Reply::Lost, _) => {
                    cut += 1;
                    self.stats.start_retried.fetch_add(1, Ordering::Relaxed);
                    self.lost().await
                }
                (Reply::Down, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.anomaly(format!("StartVM {id}: cut {cut} times in a row"));
        self.stop(id).await;
        false
    }

    async fn stop(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let r = match self.hv().await {
                Ok(h) => h.stop_vm(id).await,
                Err(e) => Err(e),
            };
            match classify(r) {
                (Reply::Ok, _) => return,
                (Reply::Status(c, m), _) => {
                    self.anomaly(format!("StopVM {id}: {c}: {m}"));
                    return;
                }
                (Reply::Lost, _) => self.lost().await,
                (Reply::Down, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.anomaly(format!("StopVM {id}: no answer within 90 s"));
    }
}

/// One worker: its slots, cycle after cycle. Returns the ids it leaves
/// running.
async fn worker(w: usize, seed: u64, c: Client, stop_at_end: Vec<bool>) -> BTreeSet<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64 + 1));
    let slots: Vec<usize> = (w..SLOTS).step_by(WORKERS).collect();
    let per_worker = CYCLES / WORKERS;
    let mut running = BTreeSet::new();
    for n in 0..per_worker {
        let slot = slots[n % slots.len()];
        let id = format!("crash-{slot:02}");
        let last = n + slots.len() >= per_worker;
        if c.create(&id, &pod_netns_path(slot)).await && c.start(&id).await {
            if last && !stop_at_end[slot] {
                running.insert(id);
            } else {
                c.stop(&id).await;
                if rng.random_bool(0.5) {
                    c.stats.double_stops.fetch_add(1, Ordering::Relaxed);
                    c.stop(&id).await;
                }
            }
        }
        c.stats.cycles.fetch_add(1, Ordering::Relaxed);
    }
    running
}

/// Even slots run with a pod network namespace ("what the CNI made").
fn pod_netns(slot: usize) -> Option<String> {
    slot.is_multiple_of(2).then(|| format!("crpod-{slot:02}"))
}

fn pod_netns_path(slot: usize) -> String {
    pod_netns(slot)
        .map(|n| format!("/run/netns/{n}"))
        .unwrap_or_default()
}

/// A pod namespace as a CNI leaves it: eth0 with an address and a
/// default route (in the adaptor's mount namespace, like its own).
fn make_pod_netns(a: &AdaptorProcess, slot: usize, name: &str) {
    let script = format!(
        "ip netns add {name} && ip -n {name} link add eth0 type veth peer name cni0 && ip -n {name} link set cni0 up && \
         ip -n {name} link set eth0 up && ip -n {name} addr add 10.96.{slot}.2/24 dev eth0 && \
         ip -n {name} route add default via 10.96.{slot}.1"
    );
    let out = a.in_mount_ns("sh", &["-c", &script]);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the worker end of a tunnel is in pod namespace `name`: the
/// VXLAN device, and our redirect filter on eth0.
fn tunnel_in(a: &AdaptorProcess, name: &str) -> (bool, bool) {
    let dev = a
        .in_mount_ns("ip", &["-n", name, "link", "show", "ppvxlan0"])
        .status
        .success();
    let filters = a.in_mount_ns(
        "tc",
        &["-n", name, "filter", "show", "dev", "eth0", "ingress"],
    );
    (
        dev,
        !String::from_utf8_lossy(&filters.stdout).trim().is_empty(),
    )
}

fn records(state: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(state.join("sandboxes")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let phase = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("phase").and_then(|p| p.as_str()).map(str::to_string))
                .unwrap_or_else(|| "unreadable".into());
            let id = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            out.insert(id, phase);
        }
    }
    out
}

async fn node_instances(a: &AdaptorProcess) -> Vec<peerpod_provider_api::Instance> {
    a.local()
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: NODE.into(),
            sandbox_id: String::new(),
        })
        .await
        .expect("list instances")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_leaks_nothing() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root (the local provider creates network namespaces); run as root");
    }
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: CRASH_SEED={seed}");
    let began = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut a = AdaptorProcess::new(NODE, "10.217.7.0".parse().unwrap());
    // Tunnels toward the instances over the test's bridge, on a port and
    // VXLAN ids no other test uses.
    a.args = [
        "--worker-ip",
        "10.217.7.1",
        "--vxlan-port",
        "4797",
        "--vxlan-min-id",
        "7700",
        // Up to all 20 sandboxes run at once (more than the default 10).
        "--limit-per-node",
        "64",
    ]
    .map(String::from)
    .to_vec();
    for slot in 0..SLOTS {
        if let Some(n) = pod_netns(slot) {
            make_pod_netns(&a, slot, &n);
        }
    }
    a.start().await;

    let stats = Arc::new(Stats::default());
    let anomalies = Arc::new(Mutex::new(Vec::new()));
    let stop_at_end: Vec<bool> = (0..SLOTS).map(|_| rng.random_bool(0.5)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let c = Client {
            socket: a.socket(),
            stats: stats.clone(),
            anomalies: anomalies.clone(),
        };
        workers.push(tokio::spawn(worker(w, seed, c, stop_at_end.clone())));
    }
    let all_done = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut running = BTreeSet::new();
            for w in workers {
                running.extend(w.await.expect("worker"));
            }
            done.store(true, Ordering::SeqCst);
            running
        })
    };

    // The killer: random pauses, SIGKILL, restart.
    let mut kills = 0u32;
    let mut early_kills = 0u32;
    while !(done.load(Ordering::SeqCst) && kills >= MIN_KILLS) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        if done.load(Ordering::SeqCst) && kills >= MIN_KILLS {
            break;
        }
        a.sigkill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if rng.random_bool(0.25) {
            // Sometimes again while it recovers (before it serves).
            a.spawn();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            a.sigkill();
            kills += 1;
            early_kills += 1;
        }
        a.start().await;
    }
    let running = all_done.await.expect("workers");
    let cycles = stats.cycles.load(Ordering::Relaxed);
    eprintln!(
        "crash test: {kills} kills ({early_kills} during start-up/recovery), {cycles} cycles, {} calls cut and retried ({} of them StartVMs), \
         {} StartVMs failed by the restart and stopped, {} CreateVM found done, {} double StopVMs, \
         {} sandboxes left running; cycles took {:?}",
        stats.lost_calls.load(Ordering::Relaxed),
        stats.start_retried.load(Ordering::Relaxed),
        stats.start_failed_then_stopped.load(Ordering::Relaxed),
        stats.create_already_created.load(Ordering::Relaxed),
        stats.double_stops.load(Ordering::Relaxed),
        running.len(),
        began.elapsed()
    );
    let anomalies = anomalies.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        anomalies.is_empty(),
        "calls failed in ways a shim could not handle: {anomalies:#?}"
    );
    assert_eq!(cycles as usize, CYCLES);
    assert!(kills >= MIN_KILLS);

    // Background teardowns finish: only the running sandboxes keep a record.
    let want: BTreeMap<String, String> = running
        .iter()
        .map(|id| (id.clone(), "running".to_string()))
        .collect();
    let wait = Instant::now();
    let mut got = records(&a.state());
    while got != want && wait.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = records(&a.state());
    }
    assert_eq!(got, want, "sandbox records; log:\n{}", a.log());

    // Running sandboxes answer end to end and own one instance each.
    let local = a.local();
    for id in &running {
        let status = agent_health(&a.agent_socket(id), Duration::from_secs(10)).await;
        assert!(
            matches!(status, Ok(ServingStatus::SERVING)),
            "{id}: Health through the agent socket: {status:?}"
        );
        let owner = OwnerTags {
            cluster: String::new(),
            node: NODE.into(),
            sandbox_id: id.clone(),
        };
        let mine = local.list_instances(&owner).await.unwrap();
        assert_eq!(mine.len(), 1, "{id} owns exactly one instance: {mine:?}");
    }
    // Stopped ones left nothing.
    for slot in 0..SLOTS {
        let id = format!("crash-{slot:02}");
        if running.contains(&id) {
            continue;
        }
        let owner = OwnerTags {
            cluster: String::new(),
            node: NODE.into(),
            sandbox_id: id.clone(),
        };
        let left = local.list_instances(&owner).await.unwrap();
        assert!(left.is_empty(), "stopped {id} still has {left:?}");
        assert!(!a.pods().join(&id).exists(), "{id}'s pod directory is gone");
    }
    // Node-wide: nothing the running sandboxes do not own.
    let instances = node_instances(&a).await;
    let owners: BTreeSet<String> = instances
        .iter()
        .filter_map(|i| i.tags.get(peerpod_provider_api::TAG_SANDBOX).cloned())
        .collect();
    assert_eq!(instances.len(), running.len(), "{instances:?}");
    assert_eq!(owners, running);
    let live_ids: BTreeSet<String> = instances.iter().map(|i| i.id.clone()).collect();
    let strays: Vec<String> = std::fs::read_dir(a.state().join("local/instances"))
        .map(|r| {
            r.flatten()
                .filter(|e| !live_ids.contains(e.file_name().to_str().unwrap_or_default()))
                .map(|e| {
                    let inside: Vec<String> = std::fs::read_dir(e.path())
                        .map(|r| {
                            r.flatten()
                                .map(|f| f.file_name().to_string_lossy().into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{} {inside:?}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        strays.is_empty(),
        "instance directories no live instance owns: {strays:?}"
    );
    let mut want_netns = BTreeSet::new();
    let mut want_ports = BTreeSet::new();
    let mut netns_inodes = BTreeSet::new();
    for i in &instances {
        let ns = format!("pplocal-{}", i.id);
        netns_inodes.insert(a.netns_inode(&ns).expect("instance netns mounted"));
        want_netns.insert(ns);
        want_ports.insert(format!("ppl{}", &i.id[1..]));
    }
    // Tunnels: running sandboxes have theirs, stopped ones left nothing.
    for slot in 0..SLOTS {
        let Some(n) = pod_netns(slot) else { continue };
        let id = format!("crash-{slot:02}");
        let (dev, filter) = tunnel_in(&a, &n);
        if running.contains(&id) {
            assert!(
                dev && filter,
                "{id}: tunnel in {n} (device {dev}, filter {filter})"
            );
        } else {
            assert!(
                !dev && !filter,
                "{id} stopped: tunnel left in {n} (device {dev}, filter {filter})"
            );
        }
    }
    let netns: Vec<String> = a
        .netns_list()
        .into_iter()
        .filter(|n| !n.starts_with("crpod-"))
        .collect();
    for ns in &netns {
        let owner = ns.strip_suffix("-pod").unwrap_or(ns);
        assert!(
            want_netns.contains(owner),
            "network namespace {ns} belongs to no live instance ({netns:?})"
        );
    }
    for ns in &want_netns {
        assert!(netns.contains(ns), "{ns} missing from `ip netns` {netns:?}");
    }
    let ports: BTreeSet<String> = a.bridge_ports().into_iter().collect();
    assert_eq!(ports, want_ports, "veths on the bridge");
    let adaptor = a.pid();
    for pid in a.processes() {
        if Some(pid) == adaptor {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if let Ok(ns) = ns {
            assert!(
                netns_inodes.contains(&ns),
                "process {pid} ({}) runs outside every live instance",
                cmd.replace('\0', " ")
            );
        }
    }
    assert!(
        !a.log().contains("panicked"),
        "adaptor panicked:\n{}",
        a.log()
    );

    // And the running ones stop cleanly too.
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    for id in &running {
        h.stop_vm(id).await.unwrap();
    }
    let wait = Instant::now();
    while (!node_instances(&a).await.is_empty() || !records(&a.state()).is_empty())
        && wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(node_instances(&a).await.is_empty());
    assert!(records(&a.state()).is_empty());
    let left: Vec<String> = a
        .netns_list()
        .into_iter()
        .filter(|n| !n.starts_with("crpod-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for slot in 0..SLOTS {
        if let Some(n) = pod_netns(slot) {
            assert_eq!(tunnel_in(&a, &n), (false, false), "tunnel left in {n}");
        }
    }
    eprintln!(
        "crash test: {kills} kills ({early_kills} during start-up/recovery), {cycles} cycles, total {:?} (seed {seed})",
        began.elapsed()
    );
}
