//! `peerpods-webhook`: flags and wiring; the logic is in the library.

use anyhow::Context;
use clap::Parser;
use peerpods_webhook::mutate::MutationConfig;
use peerpods_webhook::{run, WebhookConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// Where a pod finds its own namespace (the service account mount).
const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Parser)]
#[command(
    version,
    about = "Mutating admission webhook for peer pods: sizes the VM from the pod's resources"
)]
struct Cli {
    /// HTTPS address (POST /mutate, GET /healthz, GET /readyz).
    #[arg(long, env = "PEERPODS_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Pods with this runtimeClassName are mutated; no other pod is changed.
    #[arg(long, env = "TARGET_RUNTIMECLASS", default_value = "kata-remote")]
    target_runtime_class: String,
    /// The extended resource each peer pod takes one of.
    #[arg(
        long,
        env = "POD_VM_EXTENDED_RESOURCE",
        default_value = "kata.peerpods.io/vm"
    )]
    pod_vm_extended_resource: String,
    /// The webhook's namespace (default: the pod's own, from its service account).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// The Service the API server calls; its DNS names go in the serving certificate.
    #[arg(
        long,
        env = "PEERPODS_WEBHOOK_SERVICE",
        default_value = "peerpods-webhook"
    )]
    service: String,
    /// The MutatingWebhookConfiguration whose caBundle the webhook keeps current.
    #[arg(
        long,
        env = "PEERPODS_WEBHOOK_CONFIG",
        default_value = peerpod_kube::rbac::WEBHOOK_CONFIG_NAME
    )]
    webhook_config: String,
    /// The Secret (in the webhook's namespace) holding the CA all replicas share.
    #[arg(
        long,
        env = "PEERPODS_WEBHOOK_CA_SECRET",
        default_value = peerpod_kube::rbac::WEBHOOK_CA_SECRET_NAME
    )]
    ca_secret: String,
    /// Seconds to stay up but not ready after SIGTERM, so the Service stops sending reviews first.
    #[arg(long, env = "PEERPODS_WEBHOOK_DRAIN", default_value_t = 5)]
    drain: u64,
    /// Seconds open reviews may take to finish after draining.
    #[arg(long, env = "PEERPODS_WEBHOOK_GRACE", default_value_t = 10)]
    grace: u64,
}

fn namespace(flag: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    let n = std::fs::read_to_string(SA_NAMESPACE).with_context(|| {
        format!("no --namespace / POD_NAMESPACE and cannot read {SA_NAMESPACE}")
    })?;
    Ok(n.trim().to_string())
}

async fn signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the webhook");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    peerpod_logging::init(peerpod_logging::Colour::WhenTerminal);
    let cli = Cli::parse();
    let cfg = WebhookConfig {
        listen: cli.listen,
        mutation: MutationConfig {
            runtime_class: cli.target_runtime_class,
            vm_resource: cli.pod_vm_extended_resource,
        },
        namespace: namespace(cli.namespace)?,
        service: cli.service,
        webhook_config: cli.webhook_config,
        ca_secret: cli.ca_secret,
        drain: Duration::from_secs(cli.drain),
        grace: Duration::from_secs(cli.grace),
    };
    run(cfg, signal()).await.context("peerpods-webhook")
}
