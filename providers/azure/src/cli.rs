//! `cloud-api-adaptor azure`: the flags and env vars of the Azure provider
//! (the Go adaptor's peer-pods-cm names, so its ConfigMap works as is) and
//! how they become an [`AzureProvider`](crate::AzureProvider) with its
//! credential chain.

use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::sync::Arc;

/// The Go adaptor's names (peer-pods-cm), so its ConfigMap works as is.
/// Credentials: AZURE_CLIENT_ID + AZURE_TENANT_ID with
/// AZURE_FEDERATED_TOKEN_FILE (workload identity) or AZURE_CLIENT_SECRET;
/// else the managed identity.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub azure_subscription_id: Option<String>,
    #[arg(long, env = "AZURE_REGION")]
    pub azure_region: Option<String>,
    #[arg(long, env = "AZURE_RESOURCE_GROUP")]
    pub azure_resource_group: Option<String>,
    /// Full id of the pods' subnet.
    #[arg(long, env = "AZURE_SUBNET_ID")]
    pub azure_subnet_id: Option<String>,
    /// Network security group for the VMs' NICs.
    #[arg(long, env = "AZURE_NSG_ID")]
    pub azure_nsg_id: Option<String>,
    /// The pod VM image: gallery image (version) id (required).
    #[arg(long, env = "AZURE_IMAGE_ID")]
    pub azure_image_id: Option<String>,
    /// Default VM size (Standard_DC2as_v5).
    #[arg(long, env = "AZURE_INSTANCE_SIZE")]
    pub azure_instance_size: Option<String>,
    /// VM sizes pods may get (comma list); sized from their annotations.
    #[arg(long, env = "AZURE_INSTANCE_SIZES")]
    pub azure_instance_sizes: Option<String>,
    /// Extra tags on every VM and NIC: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    pub tags: Option<String>,
    /// Plain VMs, not confidential (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    pub disablecvm: Option<String>,
    /// UEFI secure boot on the confidential VMs (true/false, default false).
    #[arg(long, env = "ENABLE_SECURE_BOOT")]
    pub enable_secure_boot: Option<String>,
    /// The VMs' admin user (peerpod).
    #[arg(long, env = "SSH_USERNAME")]
    pub ssh_username: Option<String>,
    /// SSH public key file for that user (default: a key nobody holds).
    #[arg(long, env = "SSH_KEY_PATH")]
    pub ssh_key_path: Option<String>,
    /// OS disk size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    pub root_volume_size: Option<String>,
    /// Another Resource Manager endpoint (sovereign cloud, a local test API).
    #[arg(long, env = "AZURE_ARM_ENDPOINT")]
    pub azure_arm_endpoint: Option<String>,
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    /// Service principal secret (prefer workload identity).
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    pub azure_client_secret: Option<String>,
    /// Workload identity token file (set by the AKS webhook).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub azure_federated_token_file: Option<String>,
    /// Another Entra ID authority (https URL; sovereign clouds).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub azure_authority_host: Option<String>,
}

impl Args {
    /// Checks the settings and builds the provider.
    pub async fn build(self, _ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        let a = self;
        let raw = crate::RawAzureConfig {
            subscription_id: a.azure_subscription_id,
            region: a.azure_region,
            resource_group: a.azure_resource_group,
            subnet_id: a.azure_subnet_id,
            nsg_id: a.azure_nsg_id,
            image_id: a.azure_image_id,
            instance_size: a.azure_instance_size,
            instance_sizes: a.azure_instance_sizes,
            tags: a.tags,
            disable_cvm: a.disablecvm,
            secure_boot: a.enable_secure_boot,
            ssh_username: a.ssh_username,
            ssh_key_path: a.ssh_key_path,
            root_volume_size: a.root_volume_size,
            arm_endpoint: a.azure_arm_endpoint,
        };
        let cfg = raw.check().map_err(|e| BuildError::config("azure", e))?;
        let creds = crate::RawCredentials {
            client_id: a.azure_client_id,
            tenant_id: a.azure_tenant_id,
            client_secret: a.azure_client_secret,
            federated_token_file: a.azure_federated_token_file,
            authority_host: a.azure_authority_host,
        };
        let (credential, kind) = creds
            .build()
            .map_err(|e| BuildError::config("azure", format!("credentials: {e}")))?;
        tracing::info!(credential = kind.as_str(), subscription = %cfg.subscription_id, resource_group = %cfg.resource_group, region = %cfg.region, "azure provider");
        let p = crate::AzureProvider::new(cfg, credential, crate::ArmTiming::default())
            .map_err(|e| BuildError::init("azure", e))?;
        Ok(Arc::new(p))
    }
}
