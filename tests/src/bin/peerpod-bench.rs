//! `peerpod-bench`: the numbers of docs/benchmarks.md. Prints relay
//! latency (through adaptor relay + mTLS + forwarder vs straight to the
//! agent, same run), relay throughput with 1 MiB payloads, readiness lag
//! (forwarder listening → StartVM returns) and, as root, the RSS of the
//! adaptor idle and with 100 sandboxes and of an idle forwarder.
//!
//! Build with `--release` for meaningful numbers:
//! `cargo build --release --workspace --bins && target/release/peerpod-bench`.

use anyhow::{bail, Context};
use clap::Parser;
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use peerpod_protocols::health::CheckRequest;
use peerpod_protocols::health_ttrpc::HealthClient;
use peerpod_provider_api::{Instance, InstanceRequest, OwnerTags, Provider, ProviderError};
use peerpod_tests::agent_double::{AgentDouble, Recorder, TEST_ECHO_SERVICE};
use peerpod_tests::harness::{read_response, request_frame, TestDaemon};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
#[command(about = "Peer pods benchmarks")]
struct Args {
    /// Health calls per latency series.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// 1 MiB echo calls for throughput (per connection).
    #[arg(long, default_value_t = 200)]
    mib_calls: usize,
    /// Connections used for throughput.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Readiness samples.
    #[arg(long, default_value_t = 100)]
    ready_samples: usize,
    /// Sandboxes for the loaded RSS figure (root, local provider).
    #[arg(long, default_value_t = 100)]
    sandboxes: usize,
    /// Skip the RSS part (needs root and the local provider).
    #[arg(long)]
    no_rss: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn health_series(socket: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let client = HealthClient::new(ttrpc::r#async::Client::new(stream.into()));
    let req = CheckRequest::new();
    for _ in 0..200 {
        client.check(ttrpc::context::with_timeout(0), &req).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.check(ttrpc::context::with_timeout(0), &req).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

async fn latency(d: &TestDaemon, calls: usize) -> anyhow::Result<()> {
    let (sock, instance) = d.running_sandbox("benchlat").await;
    let direct_sock = d.provider.agent_socket(&instance);
    // Interleave the two series in halves so drift hits both alike.
    let mut relay = health_series(&sock, calls / 2).await?;
    let mut direct = health_series(&direct_sock, calls / 2).await?;
    relay.extend(health_series(&sock, calls / 2).await?);
    direct.extend(health_series(&direct_sock, calls / 2).await?);
    relay.sort();
    direct.sort();
    println!(
        "## Relay latency (grpc.Health/Check round trip, {} calls each, one connection)",
        relay.len()
    );
    println!("| path | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| direct to agent double (unix) | {:.1} | {:.1} |",
        us(pct(&direct, 0.5)),
        us(pct(&direct, 0.99))
    );
    println!(
        "| adaptor relay + mTLS + forwarder | {:.1} | {:.1} |",
        us(pct(&relay, 0.5)),
        us(pct(&relay, 0.99))
    );
    println!(
        "| **added by the relay** | **{:.1}** | **{:.1}** |",
        us(pct(&relay, 0.5)) - us(pct(&direct, 0.5)),
        us(pct(&relay, 0.99)) - us(pct(&direct, 0.99))
    );
    println!();
    Ok(())
}

async fn echo_mib(socket: &Path, calls: usize) -> anyhow::Result<usize> {
    let payload = vec![0x5au8; 1 << 20];
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    let frame = request_frame(1, TEST_ECHO_SERVICE, "Echo", &payload);
    let mut moved = 0;
    for i in 0..calls {
        let mut f = frame.clone();
        f[4..8].copy_from_slice(&(2 * i as u32 + 1).to_be_bytes());
        s.write_all(&f).await?;
        let r = read_response(&mut s).await?;
        if r.code != ttrpc::Code::OK || r.payload.len() != payload.len() {
            bail!("echo failed: {:?} {}", r.code, r.message);
        }
        moved += 2 * payload.len();
    }
    Ok(moved)
}

async fn throughput(d: &TestDaemon, calls: usize, conns: usize) -> anyhow::Result<()> {
    let (sock, instance) = d.running_sandbox("benchtput").await;
    let direct_sock = d.provider.agent_socket(&instance);
    println!("## Relay throughput (1 MiB Echo requests, reply 1 MiB; {conns} connections × {calls} calls; bytes counted both ways)");
    println!("| path | MiB/s |");
    println!("|---|---|");
    for (label, path) in [
        ("direct to agent double (unix)", direct_sock),
        ("adaptor relay + mTLS + forwarder", sock),
    ] {
        echo_mib(&path, 5).await?;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let p = path.clone();
            tasks.push(tokio::spawn(async move { echo_mib(&p, calls).await }));
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t.await??;
        }
        let mibs = bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
        println!("| {label} | {mibs:.0} |");
    }
    println!();
    Ok(())
}

/// A provider whose forwarder (in this process) starts listening a fixed
/// delay after create; it records the instant it began to listen.
struct DelayedProvider {
    dir: PathBuf,
    port: u16,
    delay: Duration,
    listening_at: Arc<Mutex<Option<Instant>>>,
    next: std::sync::atomic::AtomicU32,
    tasks: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
}

#[async_trait::async_trait]
impl Provider for DelayedProvider {
    fn name(&self) -> &str {
        "delayed"
    }
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        use peerpod_provider_api::ErrorKind;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ip: std::net::IpAddr = format!("127.77.{}.{}", n / 250, n % 250 + 2)
            .parse()
            .map_err(|_| ProviderError::new(ErrorKind::Permanent, "ip"))?;
        // The user data is a #cloud-config document carrying the config.
        let mut cfg = peerpod_vmconfig::userdata::UserData::parse(&req.user_data)
            .map_err(|e| ProviderError::new(ErrorKind::InvalidRequest, e.to_string()))?
            .forwarder;
        cfg.listen = format!("{ip}:{}", self.port);
        cfg.agent_socket = self.dir.join("agent.sock");
        let delay = self.delay;
        let at = self.listening_at.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(fwd) = agent_forwarder::Forwarder::bind(&cfg).await else {
                return;
            };
            if let Ok(mut a) = at.lock() {
                *a = Some(Instant::now());
            }
            fwd.serve().await;
        });
        let id = format!("d{n}");
        if let Ok(mut t) = self.tasks.lock() {
            t.push((id.clone(), task));
        }
        Ok(Instance {
            id,
            name: req.name.clone(),
            ips: vec![ip],
            tags: req.all_tags(),
            instance_type: None,
        })
    }
    async fn delete_instance(&self, id: &str) -> Result<(), ProviderError> {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|(i, h)| {
                if i == id {
                    h.abort();
                }
                i != id
            });
        }
        Ok(())
    }
    async fn list_instances(&self, _: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        Ok(Vec::new())
    }
    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
}

async fn readiness(samples: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = AgentDouble::start(&dir.path().join("agent.sock"), Recorder::default()).await?;
    let cfg = peerpod_tests::harness::config_in(dir.path(), "bench");
    let port = cfg.forwarder_port;
    let listening_at = Arc::new(Mutex::new(None));
    let provider = Arc::new(DelayedProvider {
        dir: dir.path().to_path_buf(),
        port,
        delay: Duration::from_millis(300),
        listening_at: listening_at.clone(),
        next: Default::default(),
        tasks: Mutex::new(Vec::new()),
    });
    let daemon = cloud_api_adaptor::Daemon::start(cfg.clone(), provider).await?;
    let h = Hypervisor::connect(&cfg.socket).await?;
    let mut lags = Vec::new();
    for i in 0..samples {
        let id = format!("ready{i}");
        h.create_vm(&id, shim_annotations("bench", "default"), "")
            .await?;
        h.start_vm(&id, Duration::from_secs(30)).await?;
        let done = Instant::now();
        let at = listening_at
            .lock()
            .ok()
            .and_then(|mut a| a.take())
            .context("forwarder never listened")?;
        lags.push(done.duration_since(at));
        h.stop_vm(&id).await?;
    }
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
    agent.stop().await;
    lags.sort();
    println!("## Readiness lag (forwarder starts listening → StartVM returns; {samples} samples, forwarder up 300 ms after create)");
    println!("| p50 ms | p99 ms | max ms |");
    println!("|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {:.1} | {:.1} | {:.1} |",
        ms(pct(&lags, 0.5)),
        ms(pct(&lags, 0.99)),
        ms(*lags.last().unwrap_or(&Duration::ZERO))
    );
    println!();
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn pids_of(exe_name: &str, under: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(exe_name) && cmd.contains(&*under.to_string_lossy()) {
            out.push(pid);
        }
    }
    out
}

async fn rss(sandboxes: usize) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("## RSS\nskipped: needs root (the local provider makes network namespaces)\n");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let bin = peerpod_tests::bins::bin_path("cloud-api-adaptor");
    let socket = dir.path().join("hv.sock");
    let mut child = tokio::process::Command::new(&bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--pods-dir")
        .arg(dir.path().join("pods"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--limit-per-node")
        .arg((sandboxes + 10).to_string())
        .arg("local")
        .arg("--bridge")
        .arg("ppbench0")
        .arg("--subnet")
        .arg("10.215.0.0")
        .env("RUST_LOG", "warn")
        .env("PEERPOD_PROBE_LISTEN", "127.0.0.1:0")
        .kill_on_drop(true)
        .spawn()
        .context("start cloud-api-adaptor")?;
    let pid = child.id().context("adaptor pid")?;
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = Hypervisor::connect(&socket).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid).unwrap_or(0);
    let n = sandboxes.min(250);
    let mut ids = Vec::new();
    let mut started = 0;
    for i in 0..n {
        let id = format!("rss{i:03}");
        h.create_vm(&id, shim_annotations(&format!("rss{i}"), "bench"), "")
            .await?;
        match h.start_vm(&id, Duration::from_secs(60)).await {
            Ok(()) => started += 1,
            Err(e) => eprintln!("sandbox {id}: {e}"),
        }
        ids.push(id);
    }
    // Each sandbox served once through its agent socket.
    for id in &ids {
        let _ = agent_health(
            &dir.path().join("pods").join(id).join("agent.ttrpc"),
            Duration::from_secs(5),
        )
        .await;
    }
    let loaded = rss_kib(pid).unwrap_or(0);
    let fwd: Vec<u64> = pids_of("agent-protocol-forwarder", dir.path())
        .into_iter()
        .filter_map(rss_kib)
        .collect();
    for id in &ids {
        let _ = h.stop_vm(id).await;
    }
    // Wait for the teardowns (instances gone from the local provider).
    for _ in 0..600 {
        if pids_of("agent-protocol-forwarder", dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = child.kill().await;
    let fwd_med = {
        let mut f = fwd.clone();
        f.sort();
        f.get(f.len() / 2).copied().unwrap_or(0)
    };
    println!("## Resident memory (VmRSS)");
    println!("| process | MiB |");
    println!("|---|---|");
    println!("| cloud-api-adaptor idle | {:.1} |", idle as f64 / 1024.0);
    println!(
        "| cloud-api-adaptor with {started} running sandboxes | {:.1} |",
        loaded as f64 / 1024.0
    );
    println!(
        "| agent-protocol-forwarder idle (median of {}) | {:.1} |",
        fwd.len(),
        fwd_med as f64 / 1024.0
    );
    println!();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "# peerpod-bench\n\nmachine: {cores} cores, kernel {}\n",
        kernel.trim()
    );
    let d = TestDaemon::start(true).await;
    latency(&d, args.calls).await?;
    throughput(&d, args.mib_calls, args.connections).await?;
    d.stop_all().await;
    readiness(args.ready_samples).await?;
    if !args.no_rss {
        rss(args.sandboxes).await?;
    }
    Ok(())
}
