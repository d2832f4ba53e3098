//! `peerpod-scale-bench`: the local provider at node scale, with the real
//! `cloud-api-adaptor` binary (its own process, so its RSS, fds and
//! threads are its own). Prints, in one run:
//!
//! 1. StartVM → ready, one start at a time, cold (a pod shape no pool key
//!    holds) and warm (from the pool), interleaved: p50 / p99 of each.
//! 2. Scale: `--sandboxes` started with `--concurrency` StartVMs in
//!    flight: StartVM p50 / p99 / max, pool hits and misses, then with all
//!    of them running the adaptor's RSS, open fds and threads, and a
//!    Health check through every agent socket.
//! 3. Churn (`--churn-minutes`): the same workers stop a sandbox and start
//!    a new one in a loop, the node staying full; the adaptor's fds,
//!    threads and RSS sampled every minute, first and last printed.
//!
//! Each sandbox is a forwarder + kata-agent double in a network namespace
//! (two processes). Needs root. Build with `--release` for real numbers:
//! `cargo build --release -p cloud-api-adaptor -p agent-protocol-forwarder --bins
//!  && cargo build --release -p peerpod-tests --bin peerpod-scale-bench --bin kata-agent-double`.

use anyhow::{bail, Context};
use clap::Parser;
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use peerpod_tests::adaptor_process::{rss_kib, AdaptorProcess};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "The local provider at node scale: warm vs cold StartVM, 500 sandboxes, churn")]
struct Args {
    /// Sandboxes running at once.
    #[arg(long, default_value_t = 500)]
    sandboxes: usize,
    /// StartVMs in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Warm pool size of the default key (0: cold starts only).
    #[arg(long, default_value_t = 50)]
    warm_pool: usize,
    /// Pool VM creates per minute.
    #[arg(long, default_value_t = 6000)]
    pool_rate: u32,
    /// Cold and warm samples of the one-at-a-time comparison.
    #[arg(long, default_value_t = 30)]
    compare_samples: usize,
    /// Minutes of create/stop churn after the scale phase (0: none).
    #[arg(long, default_value_t = 0)]
    churn_minutes: u64,
    /// Skip the scale and churn phases.
    #[arg(long)]
    compare_only: bool,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[(((s.len() - 1) as f64) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Open fds and threads of a process.
fn fds_threads(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    (fds, threads)
}

fn usage(pid: u32) -> String {
    let (fds, threads) = fds_threads(pid);
    format!(
        "RSS {:.1} MiB, {fds} fds, {threads} threads",
        rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    )
}

/// The adaptor's /metrics (its probe endpoint's address is in its log).
async fn metrics(a: &AdaptorProcess) -> anyhow::Result<String> {
    let log = a.log();
    let addr = log
        .lines()
        .rev()
        .filter(|l| l.contains("probe endpoint listening"))
        .find_map(|l| l.split("addr=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .context("probe address not in the adaptor log")?
        .to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The sum of a metric's samples whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // fold from +0: a float `sum` of nothing is -0 ("misses -0").
        .fold(0.0, |a, b| a + b)
}

async fn wait_pool_ready(a: &AdaptorProcess, want: usize, limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let m = metrics(a).await.unwrap_or_default();
        if metric_state(&m, "ready") >= want as f64 {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the warm pool did not reach {want} ready VMs in {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric_state(text: &str, state: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("peerpod_warm_pool_vms{") && l.contains(&format!("state=\"{state}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// The instances' subnet of the bench's adaptor (room for 4093).
const SUBNET: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 220, 0, 0);
const PREFIX_LEN: u8 = 20;

/// Whether `addr` (`a.b.c.d/len`, as `ip addr` prints it) lies in [`SUBNET`].
fn in_subnet(addr: &str) -> bool {
    let mask = u32::MAX << (32 - u32::from(PREFIX_LEN));
    addr.split('/')
        .next()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .is_some_and(|ip| u32::from(ip) & mask == u32::from(SUBNET))
}

/// Deletes the bridges an earlier run, killed before it could clean up,
/// left holding this bench's subnet (they would take the new bridge's
/// traffic).
fn remove_stale_bridges() {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, name, _, addr, ..] = fields[..] {
            if name.starts_with("pprl") && in_subnet(addr) {
                println!("removing {name} ({addr}), left by an earlier run");
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", name])
                    .status();
            }
        }
    }
}

/// With BENCH_ADAPTOR_LOG set, the adaptor's log lines about sandbox
/// `id` and its instance (to see where a slow start spent its time).
fn print_start_log(a: &AdaptorProcess, id: &str) {
    if std::env::var("BENCH_ADAPTOR_LOG").is_err() {
        return;
    }
    println!("--- slow start {id}:");
    let log = a.log();
    let mut names = vec![
        format!("sandbox {id} "),
        format!("\"{id}\""),
        format!("={id} "),
    ];
    let instance = log
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
        .find_map(|l| l.split("instance_id=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string);
    if let Some(i) = instance {
        names.push(i);
    }
    // Readiness attempts name the instance's address, not the sandbox.
    let ip = log
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
        .find_map(|l| l.split("ip=Some(").nth(1))
        .and_then(|s| s.split(')').next())
        .map(|ip| format!("{ip}:"));
    if let Some(ip) = ip {
        names.push(ip);
    }
    for l in log
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
    {
        println!("{l}");
    }
}

/// CreateVM + StartVM; returns the StartVM time.
async fn start_one(
    a: &AdaptorProcess,
    id: &str,
    annotations: HashMap<String, String>,
) -> anyhow::Result<Duration> {
    let h = Hypervisor::connect(&a.socket()).await?;
    h.create_vm(id, annotations, "").await?;
    let t = Instant::now();
    h.start_vm(id, Duration::from_secs(120))
        .await
        .with_context(|| format!("StartVM {id}"))?;
    Ok(t.elapsed())
}

async fn stop_one(a: &AdaptorProcess, id: &str) -> anyhow::Result<()> {
    let h = Hypervisor::connect(&a.socket()).await?;
    h.stop_vm(id).await?;
    Ok(())
}

fn plain(pod: &str) -> HashMap<String, String> {
    shim_annotations(pod, "bench")
}

/// A shape no pool key holds: always the cold path.
fn cold_shape(pod: &str) -> HashMap<String, String> {
    let mut a = shim_annotations(pod, "bench");
    a.insert(
        cloud_api_adaptor::annotations::DEFAULT_VCPUS.into(),
        "3".into(),
    );
    a
}

async fn wait_gone(a: &AdaptorProcess, limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let left = std::fs::read_dir(a.state().join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn adaptor(args: &Args, pool: usize) -> AdaptorProcess {
    let mut a = AdaptorProcess::new("scale-node", SUBNET);
    a.prefix_len = PREFIX_LEN;
    a.args = vec![
        "--limit-per-node".into(),
        (args.sandboxes + 10).to_string(),
        "--orphan-interval".into(),
        "0".into(),
    ];
    a.env = vec![
        ("PEERPODS_WARM_POOL".into(), pool.to_string()),
        (
            "PEERPODS_WARM_POOL_CREATES_PER_MINUTE".into(),
            args.pool_rate.to_string(),
        ),
        (
            "RUST_LOG".into(),
            std::env::var("BENCH_ADAPTOR_LOG").unwrap_or_else(|_| {
                "warn,cloud_api_adaptor::daemon=info,cloud_api_adaptor::probes=info".into()
            }),
        ),
    ];
    a
}

async fn compare(args: &Args) -> anyhow::Result<()> {
    let mut a = adaptor(args, 1);
    a.start().await;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut slow = Vec::new();
    for i in 0..args.compare_samples {
        wait_pool_ready(&a, 1, Duration::from_secs(60)).await?;
        let id = format!("warm{i}");
        let t = start_one(&a, &id, plain(&id)).await?;
        if t > Duration::from_secs(1) {
            slow.push(id.clone());
        }
        warm.push(t);
        stop_one(&a, &id).await?;
        let id = format!("cold{i}");
        let t = start_one(&a, &id, cold_shape(&id)).await?;
        if t > Duration::from_secs(1) {
            slow.push(id.clone());
        }
        cold.push(t);
        stop_one(&a, &id).await?;
    }
    for id in &slow {
        print_start_log(&a, id);
    }
    let m = metrics(&a).await?;
    println!(
        "local StartVM->ready, one at a time, {} samples each: warm p50 {} p99 {} | cold p50 {} p99 {} | p50 ratio cold/warm {:.1}x | pool hits {} misses {}",
        args.compare_samples,
        ms(pct(&warm, 0.5)),
        ms(pct(&warm, 0.99)),
        ms(pct(&cold, 0.5)),
        ms(pct(&cold, 0.99)),
        pct(&cold, 0.5).as_secs_f64() / pct(&warm, 0.5).as_secs_f64().max(1e-9),
        metric(&m, "peerpod_warm_pool_hits_total"),
        metric(&m, "peerpod_warm_pool_misses_total"),
    );
    wait_gone(&a, Duration::from_secs(60)).await;
    a.sigterm();
    Ok(())
}

async fn scale(args: &Args) -> anyhow::Result<()> {
    let mut a = adaptor(args, args.warm_pool);
    a.start().await;
    let pid = a.pid().context("adaptor pid")?;
    println!("adaptor idle: {}", usage(pid));
    if args.warm_pool > 0 {
        wait_pool_ready(&a, args.warm_pool, Duration::from_secs(300)).await?;
        println!(
            "warm pool of {} ready: adaptor {}",
            args.warm_pool,
            usage(pid)
        );
    }
    let a = Arc::new(a);
    // Waves of `concurrency` StartVMs at once, the pool refilled between
    // waves (a burst of pod starts, as a deployment scaled up): what the
    // pool is for. The last waves find the node nearly full.
    let mut waves: Vec<Duration> = Vec::new();
    let mut slowest_wave = Duration::ZERO;
    let t0 = Instant::now();
    let mut started = 0;
    while started < args.sandboxes {
        if args.warm_pool > 0 {
            wait_pool_ready(
                &a,
                args.warm_pool.min(args.sandboxes - started),
                Duration::from_secs(300),
            )
            .await?;
        }
        let n = args.concurrency.min(args.sandboxes - started);
        let tw = Instant::now();
        let mut batch = Vec::new();
        for i in started..started + n {
            let a = a.clone();
            batch.push(tokio::spawn(async move {
                let id = format!("s{i:05}");
                start_one(&a, &id, plain(&id)).await
            }));
        }
        for b in batch {
            waves.push(b.await??);
        }
        slowest_wave = slowest_wave.max(tw.elapsed());
        started += n;
    }
    let m = metrics(&a).await?;
    println!(
        "scale: {} sandboxes started in waves of {} concurrent StartVMs ({:.1} s in all, pool of {} refilled between waves): StartVM p50 {} p99 {} max {} | slowest wave {} | pool hits {} misses {}",
        waves.len(),
        args.concurrency,
        t0.elapsed().as_secs_f64(),
        args.warm_pool,
        ms(pct(&waves, 0.5)),
        ms(pct(&waves, 0.99)),
        ms(pct(&waves, 1.0)),
        ms(slowest_wave),
        metric(&m, "peerpod_warm_pool_hits_total"),
        metric(&m, "peerpod_warm_pool_misses_total"),
    );
    // The adaptor hands freed memory back every 30 s: measure after one.
    tokio::time::sleep(Duration::from_secs(35)).await;
    println!(
        "{} sandboxes running: adaptor {}; running per the adaptor: {}",
        args.sandboxes,
        usage(pid),
        metric(&m, "peerpod_sandboxes{phase=\"running\"}")
    );
    let mut healthy = 0;
    for i in 0..args.sandboxes {
        let sock = a.agent_socket(&format!("s{i:05}"));
        match agent_health(&sock, Duration::from_secs(10)).await {
            Ok(_) => healthy += 1,
            Err(e) => println!("s{i:05}: Health check failed: {e}"),
        }
    }
    println!(
        "Health check through every agent socket: {healthy}/{} answered",
        args.sandboxes
    );

    if args.churn_minutes > 0 {
        churn(args, &a, pid).await?;
    }
    for i in 0..args.sandboxes {
        let _ = stop_one(&a, &format!("s{i:05}")).await;
    }
    wait_gone(&a, Duration::from_secs(300)).await;
    Ok(())
}

/// Workers replace their sandboxes in a loop for `churn_minutes`.
async fn churn(args: &Args, a: &Arc<AdaptorProcess>, pid: u32) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    let per = args.sandboxes / args.concurrency.max(1);
    for w in 0..args.concurrency {
        let (a, stop, cycles, times) = (a.clone(), stop.clone(), cycles.clone(), times.clone());
        let mine: Vec<usize> = (w * per..(w + 1) * per).collect();
        workers.push(tokio::spawn(async move {
            let mut gen = 0usize;
            let mut current: Vec<String> = mine.iter().map(|i| format!("s{i:05}")).collect();
            while !stop.load(Ordering::SeqCst) {
                let slot = gen % current.len().max(1);
                stop_one(&a, &current[slot]).await?;
                gen += 1;
                let id = format!("c{w:03}-{gen:06}");
                let took = start_one(&a, &id, plain(&id)).await?;
                times
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((took, id.clone()));
                current[slot] = id;
                cycles.fetch_add(1, Ordering::SeqCst);
            }
            for id in current {
                let _ = stop_one(&a, &id).await;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let m0 = metrics(a).await?;
    let first = (fds_threads(pid), rss_kib(pid).unwrap_or(0));
    println!("churn minute 0: adaptor {}", usage(pid));
    let mut samples = vec![first];
    for minute in 1..=args.churn_minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        samples.push((fds_threads(pid), rss_kib(pid).unwrap_or(0)));
        println!(
            "churn minute {minute}: {} cycles so far, adaptor {}",
            cycles.load(Ordering::SeqCst),
            usage(pid)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await??;
    }
    let m1 = metrics(a).await?;
    let mut timed = times
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    timed.sort();
    let times: Vec<Duration> = timed.iter().map(|(t, _)| *t).collect();
    let delta = |name: &str| metric(&m1, name) - metric(&m0, name);
    println!(
        "churn pool: hits {} misses {}; slowest starts: {}",
        delta("peerpod_warm_pool_hits_total"),
        delta("peerpod_warm_pool_misses_total"),
        timed
            .iter()
            .rev()
            .take(5)
            .map(|(t, id)| format!("{id} {}", ms(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (_, id) in timed.iter().rev().take(3) {
        print_start_log(a, id);
    }
    let last = samples.last().copied().unwrap_or(first);
    println!(
        "churn: {} minutes, {} stop+start cycles, StartVM p50 {} p99 {}; adaptor fds {} -> {}, threads {} -> {}, RSS {:.1} -> {:.1} MiB",
        args.churn_minutes,
        cycles.load(Ordering::SeqCst),
        ms(pct(&times, 0.5)),
        ms(pct(&times, 0.99)),
        first.0 .0,
        last.0 .0,
        first.0 .1,
        last.0 .1,
        first.1 as f64 / 1024.0,
        last.1 as f64 / 1024.0
    );
    Ok(())
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("the scale bench needs root (network namespaces, the local provider)");
    }
    raise_nofile();
    remove_stale_bridges();
    println!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    // On SIGTERM/SIGINT the phases are dropped, and with them every
    // adaptor and instance they started.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let work = async {
        compare(&args).await?;
        if !args.compare_only {
            scale(&args).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}
