//! `cloud-api-adaptor aws`: the flags and env vars of the AWS provider
//! (the Go adaptor's peer-pods-cm names, so its ConfigMap works as is) and
//! how they become an [`AwsProvider`](crate::AwsProvider).

use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::sync::Arc;

/// The Go adaptor's names (peer-pods-cm), so its ConfigMap works as is.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod VM image (required).
    #[arg(long, env = "PODVM_AMI_ID")]
    pub podvm_ami_id: Option<String>,
    /// Default instance type (m6a.large).
    #[arg(long, env = "PODVM_INSTANCE_TYPE")]
    pub podvm_instance_type: Option<String>,
    /// Instance types pods may get (comma list); sized from their annotations.
    #[arg(long, env = "PODVM_INSTANCE_TYPES")]
    pub podvm_instance_types: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    #[arg(long, env = "AWS_SUBNET_ID")]
    pub aws_subnet_id: Option<String>,
    /// Security group ids (comma list).
    #[arg(long, env = "AWS_SG_IDS")]
    pub aws_sg_ids: Option<String>,
    /// Key pair for the instances.
    #[arg(long, env = "SSH_KP_NAME")]
    pub ssh_kp_name: Option<String>,
    /// Extra tags on every instance: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    pub tags: Option<String>,
    /// Reach the VMs on their public address (true/false).
    #[arg(long, env = "USE_PUBLIC_IP")]
    pub use_public_ip: Option<String>,
    /// Root volume size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    pub root_volume_size: Option<String>,
    /// Plain VMs without SEV-SNP (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    pub disablecvm: Option<String>,
    /// Launch from the template PODVM_LAUNCHTEMPLATE_NAME (true/false).
    #[arg(long, env = "USE_PODVM_LAUNCHTEMPLATE")]
    pub use_podvm_launchtemplate: Option<String>,
    #[arg(long, env = "PODVM_LAUNCHTEMPLATE_NAME")]
    pub podvm_launchtemplate_name: Option<String>,
    /// Another EC2 endpoint (private endpoint, a local test API).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Longest wait for a new instance's address, in seconds (180).
    #[arg(long, env = "AWS_IP_WAIT_SECONDS")]
    pub aws_ip_wait_seconds: Option<String>,
}

impl Args {
    /// Checks the settings and builds the provider.
    pub async fn build(self, _ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        let a = self;
        let raw = crate::RawAwsConfig {
            ami_id: a.podvm_ami_id,
            instance_type: a.podvm_instance_type,
            instance_types: a.podvm_instance_types,
            region: a.aws_region,
            subnet_id: a.aws_subnet_id,
            security_group_ids: a.aws_sg_ids,
            key_name: a.ssh_kp_name,
            tags: a.tags,
            use_public_ip: a.use_public_ip,
            root_volume_size: a.root_volume_size,
            disable_cvm: a.disablecvm,
            use_launch_template: a.use_podvm_launchtemplate,
            launch_template_name: a.podvm_launchtemplate_name,
            endpoint: a.aws_endpoint_url,
            ip_wait_secs: a.aws_ip_wait_seconds,
        };
        let cfg = raw.check().map_err(|e| BuildError::config("aws", e))?;
        Ok(Arc::new(crate::AwsProvider::new(cfg).await))
    }
}
