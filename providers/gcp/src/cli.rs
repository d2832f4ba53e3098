//! `cloud-api-adaptor gcp`: the flags and env vars of the GCP provider
//! (the Go adaptor's names where it has them) and how they become a
//! [`GcpProvider`](crate::GcpProvider).

use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::sync::Arc;

/// GCP settings (env names as in the issue and the Go adaptor where it has them).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The project (required).
    #[arg(long, env = "GCP_PROJECT_ID")]
    pub gcp_project_id: Option<String>,
    /// The zone (required), e.g. us-central1-a.
    #[arg(long, env = "GCP_ZONE")]
    pub gcp_zone: Option<String>,
    /// Default machine type (n2d-standard-2).
    #[arg(long, env = "GCP_MACHINE_TYPE")]
    pub gcp_machine_type: Option<String>,
    /// Machine types pods may get (comma list); sized from their annotations.
    #[arg(long, env = "GCP_MACHINE_TYPES")]
    pub gcp_machine_types: Option<String>,
    /// Network name or path (default).
    #[arg(long, env = "GCP_NETWORK")]
    pub gcp_network: Option<String>,
    /// Subnetwork path, when the network has several in the region.
    #[arg(long, env = "GCP_SUBNETWORK")]
    pub gcp_subnetwork: Option<String>,
    /// The pod VM image: a name in the project or projects/P/global/images/I (required).
    #[arg(long, env = "PODVM_IMAGE_NAME")]
    pub podvm_image_name: Option<String>,
    /// Plain VMs without confidential computing (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    pub disablecvm: Option<String>,
    /// SEV, SEV_SNP (default) or TDX.
    #[arg(long, env = "GCP_CONFIDENTIAL_TYPE")]
    pub gcp_confidential_type: Option<String>,
    /// Boot disk type (pd-balanced).
    #[arg(long, env = "GCP_DISK_TYPE")]
    pub gcp_disk_type: Option<String>,
    /// Boot disk size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    pub root_volume_size: Option<String>,
    /// Give the VMs an external address and reach them there (true/false).
    #[arg(long, env = "USE_PUBLIC_IP")]
    pub use_public_ip: Option<String>,
    /// Extra labels on every instance: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    pub tags: Option<String>,
    /// Another Compute endpoint (private endpoint, a local test server).
    #[arg(long, env = "GCP_ENDPOINT")]
    pub gcp_endpoint: Option<String>,
    /// A service account key (JSON text); default: application default credentials.
    #[arg(long, env = "GCP_CREDENTIALS", hide_env_values = true)]
    pub gcp_credentials: Option<String>,
}

impl Args {
    /// Checks the settings and builds the provider.
    pub async fn build(self, _ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        let a = self;
        let raw = crate::RawGcpConfig {
            project: a.gcp_project_id,
            zone: a.gcp_zone,
            machine_type: a.gcp_machine_type,
            machine_types: a.gcp_machine_types,
            network: a.gcp_network,
            subnetwork: a.gcp_subnetwork,
            image: a.podvm_image_name,
            disable_cvm: a.disablecvm,
            confidential_type: a.gcp_confidential_type,
            disk_type: a.gcp_disk_type,
            disk_size: a.root_volume_size,
            use_public_ip: a.use_public_ip,
            tags: a.tags,
            endpoint: a.gcp_endpoint,
            credentials_json: a.gcp_credentials,
        };
        let cfg = raw.check().map_err(|e| BuildError::config("gcp", e))?;
        let p = crate::GcpProvider::new(cfg, Default::default())
            .await
            .map_err(|e| BuildError::init("gcp", e))?;
        Ok(Arc::new(p))
    }
}
