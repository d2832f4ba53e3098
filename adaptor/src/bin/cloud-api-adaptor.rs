//! `cloud-api-adaptor`: global flags, the provider subcommand, wiring. The
//! global flags live in `cloud_api_adaptor::cli`, each provider's flags in
//! its own crate (`providers/<p>/src/cli.rs`); the logic in the library.

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use cloud_api_adaptor::cli::GlobalArgs;
use cloud_api_adaptor::daemon::Extensions;
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::cli::BuildContext;
use peerpod_providers::ProviderCmd;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Peer pods node daemon: the Kata remote hypervisor")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// One subcommand per provider (`peerpod_providers`), and the settings
/// printer for the chart.
#[derive(Subcommand)]
enum Command {
    /// Print the settings of this build (chart values per provider, or the chart's reference JSON) and exit.
    #[command(hide = true)]
    ConfigReference(ConfigReferenceArgs),
    #[command(flatten)]
    Provider(ProviderCmd),
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

fn config_reference(a: ConfigReferenceArgs) -> anyhow::Result<()> {
    use cloud_api_adaptor::config_reference as cr;
    let extras: std::collections::BTreeMap<_, _> =
        peerpod_providers::chart_providers().into_iter().collect();
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

/// The name under which this binary runs the PeerPod controller instead
/// (the image links it; see `peerpod_ctrl::cli`).
const CONTROLLER_NAME: &str = "peerpod-ctrl";

fn invoked_as(name: &str) -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|f| f == name))
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    if invoked_as(CONTROLLER_NAME) {
        return peerpod_ctrl::cli::main();
    }
    peerpod_logging::init(peerpod_logging::Colour::WhenTerminal);
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
    let provider_cmd = match cli.command {
        Command::ConfigReference(a) => return config_reference(a),
        Command::Provider(p) => p,
    };
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
        let built = provider_cmd.build(&ctx).await?;
        let checks = built.verify_logged().await?;
        if let Some(m) = built.plugin_metrics {
            ext.metrics
                .push(Box::new(move |r| r.register_collector(Box::new(m))));
        }
        let provider = built.provider;
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
