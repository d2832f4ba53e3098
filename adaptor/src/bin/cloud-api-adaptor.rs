//! `cloud-api-adaptor`: global flags, the provider subcommand, wiring. The
//! global flags live in `cloud_api_adaptor::cli`, each provider's flags in
//! its own crate (`providers/<p>/src/cli.rs`); the logic in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloud_api_adaptor::cli::GlobalArgs;
use cloud_api_adaptor::daemon::Extensions;
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Peer pods node daemon: the Kata remote hypervisor")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    provider: ProviderCmd,
}

/// One subcommand per provider; its flags come from the provider's crate.
#[derive(Subcommand)]
enum ProviderCmd {
    /// Instances are processes in network namespaces on this host (no cloud needed).
    Local(peerpod_provider_local::cli::Args),
    /// Pod VMs are EC2 instances (AMD SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "aws")]
    Aws(Box<peerpod_provider_aws::cli::Args>),
    /// Pod VMs are Compute Engine confidential instances (SEV-SNP unless configured otherwise).
    #[cfg(feature = "gcp")]
    Gcp(Box<peerpod_provider_gcp::cli::Args>),
    /// Pod VMs are libvirt domains (QEMU/TCG by default, KVM when configured).
    #[cfg(feature = "libvirt")]
    Libvirt(Box<peerpod_provider_libvirt::cli::Args>),
    /// Pod VMs are Azure confidential VMs (SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "azure")]
    Azure(Box<peerpod_provider_azure::cli::Args>),
    /// An out-of-process provider (any language) serving the provider plugin protocol on a unix socket.
    Plugin(peerpod_provider_plugin::cli::Args),
}

impl ProviderCmd {
    /// The provider, and extensions it brings (its own metrics).
    async fn build(
        self,
        ctx: &BuildContext,
        ext: &mut Extensions,
    ) -> Result<Arc<dyn Provider>, BuildError> {
        match self {
            ProviderCmd::Plugin(a) => {
                let (p, metrics) = a.build_with_metrics(ctx).await?;
                ext.metrics
                    .push(Box::new(move |r| r.register_collector(Box::new(metrics))));
                Ok(p)
            }
            ProviderCmd::Local(a) => a.build(ctx).await,
            #[cfg(feature = "aws")]
            ProviderCmd::Aws(a) => a.build(ctx).await,
            #[cfg(feature = "gcp")]
            ProviderCmd::Gcp(a) => a.build(ctx).await,
            #[cfg(feature = "libvirt")]
            ProviderCmd::Libvirt(a) => a.build(ctx).await,
            #[cfg(feature = "azure")]
            ProviderCmd::Azure(a) => a.build(ctx).await,
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let check_only = cli.global.check;
    let drain_only = cli.global.drain_pool;
    // glibc gives every thread that allocates its own malloc arena; with
    // the blocking pool's threads coming and going under sandbox churn
    // the arenas fragment and RSS creeps up (51 -> 90 MiB in ten minutes
    // at 500 sandboxes). Two arenas and a bounded blocking pool keep it
    // flat; the blocking work (netlink, fork/exec, fsync) is short.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain libc call before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let ctx = BuildContext {
            state_dir: cli.global.paths.state_dir.clone(),
        };
        let mut ext = Extensions::default();
        let provider = cli.provider.build(&ctx, &mut ext).await?;
        let checks = provider
            .verify()
            .await
            .with_context(|| format!("provider {} configuration check failed", provider.name()))?;
        for line in &checks {
            tracing::info!(provider = provider.name(), "checked: {line}");
        }
        if check_only {
            for line in checks {
                println!("ok: {line}");
            }
            return Ok(());
        }
        let kube_args = cli.global.kube.clone();
        let mut cfg = cli.global.into_config()?;
        // Kubernetes (Events, PeerPods, the default cluster id) before the
        // daemon starts, so instances get the cluster id from the first.
        if let Some(k) =
            cloud_api_adaptor::kube::setup(&kube_args, &mut cfg, provider.name()).await?
        {
            ext.observers.push(k.observer);
            let m = k.metrics;
            ext.metrics.push(Box::new(move |r| m.register(r)));
        }
        if drain_only {
            let owner = peerpod_provider_api::OwnerTags::new(&*cfg.cluster_id, &*cfg.node_name, "");
            let done = cloud_api_adaptor::drain::drain_pool(
                &cfg,
                provider,
                owner,
                Duration::from_secs(600),
            )
            .await?;
            println!("warm pool drained: {done:?}");
            return Ok(());
        }
        if cfg.registry_auth.is_some() {
            tracing::info!("registry credentials loaded; every pod VM gets them (0600)");
        }
        cloud_api_adaptor::cli::warn_without_cluster_id(&cfg);
        match cloud_api_adaptor::daemon::raise_fd_limit() {
            Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        let daemon = Daemon::start_with(cfg, provider, ext).await?;
        cloud_api_adaptor::daemon::spawn_memory_trim(Duration::from_secs(30));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(
            "shutting down; sandboxes and their VMs stay and are recovered at the next start"
        );
        daemon.shutdown().await;
        Ok(())
    })
}
