//! `cloud-api-adaptor`: global flags, the provider subcommand, wiring. The
//! global flags live in `cloud_api_adaptor::cli`, each provider's flags in
//! its own crate (`providers/<p>/src/cli.rs`); the logic in the library.

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use cloud_api_adaptor::cli::GlobalArgs;
use cloud_api_adaptor::config_reference::ProviderExtras;
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
    /// Print the settings of this build (chart values per provider, or the chart's reference JSON) and exit.
    #[command(hide = true)]
    ConfigReference(ConfigReferenceArgs),
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
            ProviderCmd::ConfigReference(_) => Err(BuildError::Config {
                provider: "config-reference",
                message: "not a provider".into(),
            }),
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

#[derive(Args)]
struct ConfigReferenceArgs {
    /// helm-values (one provider's values file) or chart-json (the chart's generated/reference.json).
    #[arg(long, value_parser = ["helm-values", "chart-json"])]
    format: String,
    /// The provider, for helm-values.
    #[arg(long)]
    provider: Option<String>,
}

/// The chart's providers and what each crate adds to its clap arguments.
fn provider_extras() -> std::collections::BTreeMap<&'static str, ProviderExtras> {
    #[allow(unused_mut)]
    let mut m = std::collections::BTreeMap::new();
    #[cfg(feature = "aws")]
    m.insert(
        "aws",
        ProviderExtras {
            required: peerpod_provider_aws::REQUIRED_ENV,
            sdk_env: peerpod_provider_aws::SDK_ENV,
        },
    );
    #[cfg(feature = "azure")]
    m.insert(
        "azure",
        ProviderExtras {
            required: peerpod_provider_azure::REQUIRED_ENV,
            sdk_env: &[],
        },
    );
    #[cfg(feature = "gcp")]
    m.insert(
        "gcp",
        ProviderExtras {
            required: peerpod_provider_gcp::REQUIRED_ENV,
            sdk_env: &[],
        },
    );
    #[cfg(feature = "libvirt")]
    m.insert(
        "libvirt",
        ProviderExtras {
            required: peerpod_provider_libvirt::REQUIRED_ENV,
            sdk_env: &[],
        },
    );
    m
}

fn config_reference(a: ConfigReferenceArgs) -> anyhow::Result<()> {
    use cloud_api_adaptor::config_reference as cr;
    let extras = provider_extras();
    for p in ["aws", "azure", "gcp", "libvirt"] {
        anyhow::ensure!(
            extras.contains_key(p),
            "config-reference needs every chart provider: this build lacks {p} (cargo build -p cloud-api-adaptor --all-features)"
        );
    }
    let r = cr::reference(&Cli::command(), &extras, cr::rbac_tables())
        .map_err(|e| anyhow::anyhow!(e))?;
    match a.format.as_str() {
        "chart-json" => print!("{}", cr::chart_json(&r)),
        _ => {
            let p = a
                .provider
                .context("--provider is required with --format helm-values")?;
            print!(
                "{}",
                cr::helm_values(&r, &p).map_err(|e| anyhow::anyhow!(e))?
            );
        }
    }
    Ok(())
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
    // The Go adaptor's deployments name the provider in CLOUD_PROVIDER.
    let args = cloud_api_adaptor::provider_env::with_provider(
        Cli::command(),
        std::env::args_os().collect(),
        std::env::var(cloud_api_adaptor::provider_env::ENV).ok(),
    )
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let cli = Cli::parse_from(args);
    if let ProviderCmd::ConfigReference(a) = cli.provider {
        return config_reference(a);
    }
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
    let delete_cluster_vms = cli.global.delete_cluster_vms;
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
        if delete_cluster_vms {
            let cluster = cli.global.cluster_id.as_deref().map(str::trim).unwrap_or("");
            anyhow::ensure!(
                !cluster.is_empty(),
                "--delete-cluster-vms needs this cluster's id (--cluster-id / PEERPOD_CLUSTER_ID): without it every peer pod VM of the account would match"
            );
            let owner = peerpod_provider_api::OwnerTags::new(cluster, "", "");
            let policy = cloud_api_adaptor::cluster_vms::Policy::default();
            let report = cloud_api_adaptor::cluster_vms::delete_all(provider.as_ref(), &owner, &policy)
                .await
                .with_context(|| format!("deleting the pod VMs of cluster {cluster}"))?;
            println!("deleted {} pod VM(s) of cluster {cluster}", report.deleted.len());
            return Ok(());
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
