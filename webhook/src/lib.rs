//! `peerpods-webhook`: the mutating admission webhook for peer pods.
//!
//! For pods of the peer pod runtime class it moves the containers'
//! cpu/memory/GPU requests and limits into the Kata VM size annotations
//! (the VM, not the node, runs the containers) and gives the pod one unit
//! of the `kata.peerpods.io/vm` extended resource, which the adaptor's
//! device plugin advertises per node ([`mutate`], [`sizing`]).
//!
//! It brings its own TLS: a CA kept in a Secret and patched into the
//! caBundle of its MutatingWebhookConfiguration ([`ca_secret`], [`tls`]),
//! so it needs no cert-manager. [`run`] wires it all for the binary.

pub mod ca_secret;
pub mod mutate;
pub mod quantity;
pub mod review;
pub mod server;
pub mod sizing;
pub mod tls;

use server::{State, WebhookServer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::{service_names, CertStore};

/// Where the webhook serves and what it manages in the cluster.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub mutation: mutate::MutationConfig,
    /// The namespace the webhook runs in (its Service and CA Secret).
    pub namespace: String,
    /// The Service the API server calls (its DNS names go in the certificate).
    pub service: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    pub webhook_config: String,
    /// The Secret holding the CA shared by the replicas.
    pub ca_secret: String,
    /// After a shutdown signal: time not-ready but still serving, so the
    /// endpoint is removed from the Service before we stop.
    pub drain: Duration,
    /// Then: longest wait for open requests.
    pub grace: Duration,
}

/// Why the webhook stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Ca(#[from] ca_secret::CaSecretError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Attempts at reading/creating the CA Secret before giving up.
const CA_ATTEMPTS: u32 = 6;

/// Runs the webhook until `shutdown` completes.
pub async fn run(cfg: WebhookConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // kube's rustls connector takes the process-wide crypto provider, and
    // a workspace build can compile in two (a cloud SDK brings aws-lc-rs):
    // say which. Already set is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    let ca = get_ca(&client, &cfg).await?;
    let names = service_names(&cfg.service, &cfg.namespace);
    let certs = CertStore::new(ca.issue_serving(&names)?);
    let state = State::new(cfg.mutation.clone());
    let server = WebhookServer::bind(cfg.listen, certs.clone(), state.clone()).await?;
    tracing::info!(
        addr = %server.local_addr(),
        runtime_class = %cfg.mutation.runtime_class,
        names = ?names,
        "peerpods-webhook serving (POST /mutate, GET /healthz, /readyz)"
    );
    let keeper = tokio::spawn(keep_current(
        client,
        cfg.clone(),
        ca,
        names,
        certs,
        state.clone(),
    ));
    shutdown.await;
    tracing::info!(drain = ?cfg.drain, "shutting down: not ready, draining");
    state.set_ready(false);
    keeper.abort();
    tokio::time::sleep(cfg.drain).await;
    server.shutdown(cfg.grace).await;
    tracing::info!("peerpods-webhook stopped");
    Ok(())
}

/// The CA from its Secret (created when absent), retried a few times for
/// an API server that is not reachable yet; a 403 stops at once (RBAC).
async fn get_ca(client: &kube::Client, cfg: &WebhookConfig) -> Result<tls::WebhookCa, RunError> {
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match ca_secret::load_or_create_ca(client, &cfg.namespace, &cfg.ca_secret).await {
            Ok(ca) => return Ok(ca),
            Err(e) if attempt < CA_ATTEMPTS && !matches!(e.status(), Some(401 | 403 | 422)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "webhook CA not available yet");
            }
            Err(e) => return Err(e.into()),
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Puts the CA into the caBundle (retrying until it is in place, then
/// ready), and re-issues the serving certificate before it expires.
async fn keep_current(
    client: kube::Client,
    cfg: WebhookConfig,
    ca: tls::WebhookCa,
    names: Vec<String>,
    certs: Arc<CertStore>,
    state: Arc<State>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match ca_secret::patch_ca_bundle(&client, &cfg.webhook_config, ca.cert_pem()).await {
            Ok(n) => {
                tracing::info!(
                    config = %cfg.webhook_config,
                    webhooks_changed = n,
                    "caBundle in place"
                );
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "caBundle not in place yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    state.set_ready(true);
    loop {
        tokio::time::sleep(tls::RENEW_EVERY).await;
        match ca.issue_serving(&names) {
            Ok(c) => {
                certs.replace(c);
                tracing::info!("serving certificate renewed");
            }
            Err(e) => tracing::error!(error = %e, "renewing the serving certificate failed"),
        }
    }
}
