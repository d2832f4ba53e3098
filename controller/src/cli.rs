//! The `peerpod-ctrl` command: flags (the same provider subcommands,
//! flags and env vars as `cloud-api-adaptor`, so it reads the same
//! peer-pods-cm) and wiring of the library's parts. Its own binary runs it,
//! and so does `cloud-api-adaptor` when invoked under the name
//! `peerpod-ctrl`: the image links that name to the adaptor, so the cloud
//! SDKs are in the image once (two copies were 15 MiB of a compressed
//! image).

use crate::lease::LeaseConfig;
use crate::probes::Probes;
use crate::{run, ControllerOptions};
use anyhow::Context;
use clap::Parser;
use peerpod_kube::client::{client, detect};
use peerpod_provider_api::cli::BuildContext;
use peerpod_providers::ProviderCmd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "peerpod-ctrl",
    version,
    about = "PeerPod cleanup controller: deletes the pod VMs of deleted pods and gone nodes"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    provider: ProviderCmd,
}

#[derive(clap::Args)]
struct Global {
    /// A kubeconfig (default: the pod's service account).
    #[arg(long, env = "PEERPOD_KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease (the controller's own; the downward API's POD_NAMESPACE).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "confidential-containers-system",
        global = true
    )]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "PEERPOD_CTRL_LEASE_NAME",
        default_value = "peerpod-ctrl",
        global = true
    )]
    lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME", global = true)]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(
        long,
        env = "PEERPOD_CTRL_LEASE_DURATION",
        default_value_t = 15,
        global = true
    )]
    lease_duration: u64,
    /// Seconds a leader keeps acting without a successful renewal.
    #[arg(
        long,
        env = "PEERPOD_CTRL_RENEW_DEADLINE",
        default_value_t = 10,
        global = true
    )]
    renew_deadline: u64,
    /// Seconds between Lease attempts (acquire or renew).
    #[arg(
        long,
        env = "PEERPOD_CTRL_RETRY_PERIOD",
        default_value_t = 2,
        global = true
    )]
    retry_period: u64,
    /// Seconds between checks that a PeerPod's node still exists.
    #[arg(
        long,
        env = "PEERPOD_CTRL_NODE_CHECK_INTERVAL",
        default_value_t = 60,
        global = true
    )]
    node_check_interval: u64,
    /// State directory for providers that keep records (local, libvirt).
    #[arg(
        long,
        env = "PEERPOD_STATE_DIR",
        default_value = "/var/lib/peerpod",
        global = true
    )]
    state_dir: PathBuf,
    /// Address of the probe endpoint (/healthz, /readyz, /leader); "off" turns it off.
    #[arg(
        long,
        env = "PEERPOD_CTRL_PROBE_LISTEN",
        default_value = "0.0.0.0:8081",
        global = true
    )]
    probe_listen: String,
}

fn default_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "peerpod-ctrl".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Runs the controller with the process's command line; returns when it
/// is stopped (SIGTERM, ctrl-c) or fails.
pub fn main() -> anyhow::Result<()> {
    peerpod_logging::init(peerpod_logging::Colour::WhenTerminal);
    let cli = Cli::parse();
    let g = cli.global;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let ctx = BuildContext {
            state_dir: g.state_dir.clone(),
        };
        let built = cli.provider.build(&ctx).await?;
        built.verify_logged().await?;
        let provider = built.provider;
        let access = detect(g.kubeconfig.as_deref()).ok_or_else(|| {
            anyhow::anyhow!("no Kubernetes API: run in a pod (KUBERNETES_SERVICE_HOST) or pass --kubeconfig / PEERPOD_KUBECONFIG")
        })?;
        let kube = client(&access).await?;
        let leading = Arc::new(AtomicBool::new(false));
        let _probes = match g.probe_listen.trim() {
            "" | "off" => None,
            a => {
                let addr = a.parse().with_context(|| {
                    format!("--probe-listen / PEERPOD_CTRL_PROBE_LISTEN {a:?}: expected host:port or \"off\"")
                })?;
                let p = Probes::bind(addr, leading.clone())
                    .await
                    .with_context(|| format!("probe endpoint {addr}"))?;
                tracing::info!(addr = %p.local_addr(), "probe endpoint listening (/healthz, /readyz, /leader)");
                Some(p)
            }
        };
        let identity = g
            .identity
            .filter(|i| !i.trim().is_empty())
            .unwrap_or_else(default_identity);
        let mut lease = LeaseConfig::new(g.lease_namespace, g.lease_name, identity);
        lease.lease_duration = Duration::from_secs(g.lease_duration.max(1));
        lease.renew_deadline = Duration::from_secs(g.renew_deadline.max(1));
        lease.retry_period = Duration::from_secs(g.retry_period.max(1));
        anyhow::ensure!(
            lease.retry_period < lease.renew_deadline && lease.renew_deadline < lease.lease_duration,
            "lease timing: need retry period < renew deadline < lease duration (got {} s, {} s, {} s)",
            g.retry_period,
            g.renew_deadline,
            g.lease_duration
        );
        let opts = ControllerOptions {
            lease,
            node_check_interval: Duration::from_secs(g.node_check_interval.max(1)),
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        };
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = t.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down");
        };
        run(kube, provider, opts, leading, shutdown).await?;
        Ok(())
    })
}
