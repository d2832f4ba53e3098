//! `peerpod-libvirt-bench`: StartVM to ready on libvirt with the minimal
//! pod VM image, one VM at a time, split into
//! - provider create: the provider's create_instance (define + start the
//!   domain, wait for its address),
//! - boot: StartVM called → the VM's console shows "forwarder listening"
//!   (includes provider create; the host polls the console log every 10 ms),
//! - readiness: "forwarder listening" seen → StartVM returned (the
//!   adaptor's Health check end to end).
//!
//! Then `--warm-runs` StartVMs from a warm pool of one VM (booted, and
//! refilled, between runs; StartVM binds it), in the same run.
//!
//! Prints each run and the p50 of each phase. Needs root and libvirt
//! (`scripts/setup.sh --libvirt`); makes its own network and pool.
//! `cargo run -p peerpod-tests --features libvirt --bin peerpod-libvirt-bench -- --runs 5`

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::{Instance, InstanceRequest, OwnerTags, Provider, ProviderError};
use peerpod_provider_libvirt::LibvirtProvider;
use peerpod_tests::harness::config_in;
use peerpod_tests::libvirt_env::LibvirtEnv;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "StartVM to ready on libvirt with the minimal pod VM image")]
struct Args {
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs from the warm pool after the cold ones (0: none).
    #[arg(long, default_value_t = 5)]
    warm_runs: usize,
    /// Domain type (qemu = TCG, kvm, auto = probe).
    #[arg(long, default_value = "qemu")]
    domain_type: String,
}

/// The libvirt provider, timing each create.
struct Timed {
    inner: LibvirtProvider,
    creates: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Provider for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        let t = Instant::now();
        let r = self.inner.create_instance(req).await;
        if let Ok(mut c) = self.creates.lock() {
            c.push(t.elapsed());
        }
        r
    }
    async fn delete_instance(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.delete_instance(id).await
    }
    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        self.inner.list_instances(owner).await
    }
    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.inner.verify().await
    }
    async fn console_tail(&self, id: &str) -> Option<String> {
        self.inner.console_tail(id).await
    }
}

fn p50(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    peerpod_tests::harness::init_logging();
    let env = LibvirtEnv::new()
        .map_err(anyhow::Error::msg)
        .context("libvirt is not usable here")?;
    let mut lc = env.config();
    let chosen = peerpod_provider_libvirt::RawLibvirtConfig {
        domain_type: Some(args.domain_type.clone()),
        kernel: Some(env.image.join("vmlinux")),
        ..Default::default()
    }
    .check()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    lc.domain_type = chosen.domain_type;
    lc.kvm_probe = chosen.kvm_probe;
    let console_dir = lc.console_dir.clone();
    let provider = Arc::new(Timed {
        inner: LibvirtProvider::new(lc),
        creates: Mutex::new(Vec::new()),
    });
    for line in provider.verify().await? {
        println!("checked: {line}");
    }
    let dir = tempfile::tempdir()?;
    let mut cfg = config_in(dir.path(), &format!("bench-{}", env.token));
    cfg.worker_ip = Some(env.gateway.into());
    cfg.start_timeout = Duration::from_secs(120);
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await?;
    let h = Hypervisor::connect(&cfg.socket).await?;
    let (mut creates, mut boots, mut readies, mut totals) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let id = format!("bench{run}{}", env.token);
        h.create_vm(
            &id,
            shim_annotations(&format!("b{}", env.token), "default"),
            "",
        )
        .await?;
        let t0 = Instant::now();
        let start = h.start_vm(&id, Duration::from_secs(120));
        tokio::pin!(start);
        let mut listening = None;
        let result = loop {
            tokio::select! {
                r = &mut start => break r,
                _ = tokio::time::sleep(Duration::from_millis(10)), if listening.is_none() => {
                    let seen = std::fs::read_dir(&console_dir).ok().into_iter().flatten()
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().contains(&id[..8.min(id.len())]))
                        .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default().contains("forwarder listening"));
                    if seen {
                        listening = Some(t0.elapsed());
                    }
                }
            }
        };
        let total = t0.elapsed();
        result.with_context(|| format!("StartVM {id}"))?;
        let create = provider
            .creates
            .lock()
            .ok()
            .and_then(|c| c.last().copied())
            .unwrap_or_default();
        let boot = listening.unwrap_or(total);
        let ready = total.saturating_sub(boot);
        println!(
            "run {run}: provider create {}, boot to forwarder listening {}, readiness {}, total {}",
            secs(create),
            secs(boot),
            secs(ready),
            secs(total)
        );
        creates.push(create);
        boots.push(boot);
        readies.push(ready);
        totals.push(total);
        if run == 0 {
            // The guest's own timeline (uptime stamps of its init).
            let inst = provider
                .list_instances(&OwnerTags {
                    cluster: String::new(),
                    node: cfg.node_name.clone(),
                    sandbox_id: id.clone(),
                })
                .await?;
            if let Some(i) = inst.first() {
                let tail = provider.console_tail(&i.id).await.unwrap_or_default();
                for l in tail
                    .lines()
                    .filter(|l| l.starts_with("podvm:") || l.contains("listening"))
                {
                    println!("  guest: {l}");
                }
            }
        }
        h.stop_vm(&id).await?;
        daemon.manager.wait_teardowns().await;
    }
    println!(
        "p50 of {} runs ({}): provider create {}, boot to forwarder listening {}, readiness {}, StartVM total {}",
        args.runs,
        args.domain_type,
        secs(p50(&creates)),
        secs(p50(&boots)),
        secs(p50(&readies)),
        secs(p50(&totals))
    );
    daemon.shutdown().await;
    if args.warm_runs > 0 {
        warm(&args, &env, provider.clone()).await?;
    }
    Ok(())
}

/// StartVM → ready from the warm pool: a pool of one VM, refilled (and
/// booted) between runs, bound at each StartVM.
async fn warm(args: &Args, env: &LibvirtEnv, provider: Arc<Timed>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config_in(dir.path(), &format!("warm-{}", env.token));
    let _domains = peerpod_tests::libvirt_env::PoolDomains(cfg.state_dir.join("pool"));
    cfg.worker_ip = Some(env.gateway.into());
    cfg.start_timeout = Duration::from_secs(120);
    cfg.warm_pool = cloud_api_adaptor::pool::PoolSettings {
        keys: vec![cloud_api_adaptor::pool::KeySpec {
            key: Default::default(),
            size: 1,
            initdata: None,
        }],
        creates_per_minute: 600,
        boot_timeout: Duration::from_secs(120),
    };
    let daemon = Daemon::start(cfg.clone(), provider).await?;
    let m = daemon.manager.clone();
    let h = Hypervisor::connect(&cfg.socket).await?;
    let mut totals = Vec::new();
    for run in 0..args.warm_runs {
        let refill = Instant::now();
        while m.pool_ready() < 1 {
            anyhow::ensure!(
                refill.elapsed() < Duration::from_secs(120),
                "the pool VM did not boot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = format!("warm{run}{}", env.token);
        h.create_vm(
            &id,
            shim_annotations(&format!("w{}", env.token), "default"),
            "",
        )
        .await?;
        let t0 = Instant::now();
        h.start_vm(&id, Duration::from_secs(120))
            .await
            .with_context(|| format!("StartVM {id}"))?;
        let total = t0.elapsed();
        println!(
            "warm run {run}: StartVM from the pool {} (pool VM booted in the background; refill waited {})",
            secs(total),
            secs(refill.elapsed().saturating_sub(total))
        );
        totals.push(total);
        h.stop_vm(&id).await?;
    }
    let text = m.metrics_text().await;
    let hits = text
        .lines()
        .find(|l| l.starts_with("peerpod_warm_pool_hits_total"))
        .unwrap_or("no hits")
        .to_string();
    println!(
        "p50 of {} warm runs ({}): StartVM from the pool {} ({hits})",
        args.warm_runs,
        args.domain_type,
        secs(p50(&totals))
    );
    m.drain_pool();
    while m.pool_len() > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.wait_teardowns().await;
    daemon.shutdown().await;
    Ok(())
}
