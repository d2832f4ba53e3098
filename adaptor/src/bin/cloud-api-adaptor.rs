//! `cloud-api-adaptor`: flags, provider choice and wiring. The logic lives
//! in the `cloud_api_adaptor` library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cloud_api_adaptor::config::{hostname, PathArgs};
use cloud_api_adaptor::{AdaptorConfig, Daemon};
use peerpod_provider_api::Provider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Peer pods node daemon: the Kata remote hypervisor")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    provider: ProviderCmd,
}

#[derive(Args)]
struct Global {
    #[command(flatten)]
    paths: PathArgs,
    /// This node's name, the owner tag on every instance (default: host name).
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Turn mutual TLS to the pod VMs off. For debugging only: agent traffic is then unauthenticated.
    #[arg(long, env = "PEERPOD_NO_TLS", global = true)]
    no_tls: bool,
    /// TCP port of the forwarder in the pod VM.
    #[arg(long, env = "FORWARDER_PORT", default_value_t = peerpod_vmconfig::DEFAULT_PORT, global = true)]
    forwarder_port: u16,
    /// Longest StartVM wait in seconds when the shim sends no deadline.
    #[arg(
        long,
        env = "PEERPOD_START_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    start_timeout: u64,
    /// Largest ttrpc frame payload relayed, in bytes.
    #[arg(long, env = "PEERPOD_MAX_FRAME_BYTES", default_value_t = peerpod_relay::frame::DEFAULT_MAX_PAYLOAD, global = true)]
    max_frame_bytes: u32,
    /// UDP port of the pod network tunnels (VXLAN), on the node and in the VMs.
    #[arg(long, env = "VXLAN_PORT", default_value_t = peerpod_podnet::spec::DEFAULT_VXLAN_PORT, global = true)]
    vxlan_port: u16,
    /// First VXLAN id of this node; each sandbox takes the lowest free id from here.
    #[arg(long, env = "VXLAN_MIN_ID", default_value_t = peerpod_podnet::spec::DEFAULT_VNI_BASE, global = true)]
    vxlan_min_id: u32,
    /// This node's address the pod VMs send tunnel traffic to (default: the source address of the default route).
    #[arg(long, env = "PEERPOD_WORKER_IP", global = true)]
    worker_ip: Option<std::net::IpAddr>,
    /// Most peer pods this node runs at once; CreateVM beyond it fails with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "PEERPODS_LIMIT_PER_NODE",
        default_value_t = 10,
        global = true
    )]
    limit_per_node: usize,
    /// Most provider create calls in flight at once (more wait their turn).
    #[arg(
        long,
        env = "PEERPOD_MAX_CONCURRENT_CREATES",
        default_value_t = 8,
        global = true
    )]
    max_concurrent_creates: usize,
    /// Initdata (base64, as the cc_init_data annotation) for pods that carry none.
    #[arg(long, env = "INITDATA", global = true)]
    initdata: Option<String>,
    /// Registry credentials (auth.json) given to every pod VM (default: /root/containers/auth.json if present).
    #[arg(long, env = "PEERPOD_REGISTRY_AUTH_FILE", global = true)]
    registry_auth_file: Option<PathBuf>,
    /// Seconds between orphan VM collection passes (0: only at start-up).
    #[arg(
        long,
        env = "PEERPOD_ORPHAN_INTERVAL",
        default_value_t = 300,
        global = true
    )]
    orphan_interval: u64,
    /// Seconds an instance must be seen without a sandbox before it is deleted.
    #[arg(
        long,
        env = "PEERPOD_ORPHAN_GRACE",
        default_value_t = 300,
        global = true
    )]
    orphan_grace: u64,
    /// Address of the HTTP probe endpoint (/healthz, /readyz, /metrics); "off" turns it off.
    #[arg(
        long,
        env = "PEERPOD_PROBE_LISTEN",
        default_value = "0.0.0.0:8000",
        global = true
    )]
    probe_listen: String,
    /// Log orphan VMs instead of deleting them.
    #[arg(long, env = "PEERPOD_ORPHAN_DRY_RUN", global = true)]
    orphan_dry_run: bool,
    /// Seconds one provider call (create, delete, list) may take before it is abandoned and retried (0: no limit).
    #[arg(
        long,
        env = "PEERPOD_PROVIDER_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    provider_timeout: u64,
    /// Check the provider's configuration, print what was checked, and exit.
    #[arg(long, global = true)]
    check: bool,
}

#[derive(Subcommand)]
enum ProviderCmd {
    /// Instances are processes in network namespaces on this host (no cloud needed).
    Local(LocalArgs),
    /// Pod VMs are EC2 instances (AMD SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "aws")]
    Aws(Box<AwsArgs>),
    /// Pod VMs are Compute Engine confidential instances (SEV-SNP unless configured otherwise).
    #[cfg(feature = "gcp")]
    Gcp(Box<GcpArgs>),
    /// Pod VMs are libvirt domains (QEMU/TCG by default, KVM when configured).
    #[cfg(feature = "libvirt")]
    Libvirt(Box<LibvirtArgs>),
    /// Pod VMs are Azure confidential VMs (SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "azure")]
    Azure(Box<AzureArgs>),
}

/// GCP settings (env names as in the issue and the Go adaptor where it has them).
#[cfg(feature = "gcp")]
#[derive(Args)]
struct GcpArgs {
    /// The project (required).
    #[arg(long, env = "GCP_PROJECT_ID")]
    gcp_project_id: Option<String>,
    /// The zone (required), e.g. us-central1-a.
    #[arg(long, env = "GCP_ZONE")]
    gcp_zone: Option<String>,
    /// Default machine type (n2d-standard-2).
    #[arg(long, env = "GCP_MACHINE_TYPE")]
    gcp_machine_type: Option<String>,
    /// Machine types pods may get (comma list); sized from their annotations.
    #[arg(long, env = "GCP_MACHINE_TYPES")]
    gcp_machine_types: Option<String>,
    /// Network name or path (default).
    #[arg(long, env = "GCP_NETWORK")]
    gcp_network: Option<String>,
    /// Subnetwork path, when the network has several in the region.
    #[arg(long, env = "GCP_SUBNETWORK")]
    gcp_subnetwork: Option<String>,
    /// The pod VM image: a name in the project or projects/P/global/images/I (required).
    #[arg(long, env = "PODVM_IMAGE_NAME")]
    podvm_image_name: Option<String>,
    /// Plain VMs without confidential computing (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    disablecvm: Option<String>,
    /// SEV, SEV_SNP (default) or TDX.
    #[arg(long, env = "GCP_CONFIDENTIAL_TYPE")]
    gcp_confidential_type: Option<String>,
    /// Boot disk type (pd-balanced).
    #[arg(long, env = "GCP_DISK_TYPE")]
    gcp_disk_type: Option<String>,
    /// Boot disk size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    root_volume_size: Option<String>,
    /// Give the VMs an external address and reach them there (true/false).
    #[arg(long, env = "USE_PUBLIC_IP")]
    use_public_ip: Option<String>,
    /// Extra labels on every instance: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    tags: Option<String>,
    /// Another Compute endpoint (private endpoint, a local test server).
    #[arg(long, env = "GCP_ENDPOINT")]
    gcp_endpoint: Option<String>,
    /// A service account key (JSON text); default: application default credentials.
    #[arg(long, env = "GCP_CREDENTIALS", hide_env_values = true)]
    gcp_credentials: Option<String>,
}

/// The Go adaptor's flag and env names where it has them (LIBVIRT_URI,
/// LIBVIRT_POOL, LIBVIRT_NET, LIBVIRT_VOL_NAME, LIBVIRT_CPU,
/// LIBVIRT_MEMORY), ours for the rest. Empty values mean "not set".
#[cfg(feature = "libvirt")]
#[derive(Args)]
struct LibvirtArgs {
    /// libvirt connection URI (qemu:///system).
    #[arg(long, env = "LIBVIRT_URI")]
    uri: Option<String>,
    /// Storage pool for the VMs' volumes and config drives (default).
    #[arg(long = "pool-name", env = "LIBVIRT_POOL")]
    pool: Option<String>,
    /// libvirt network the VMs join; each VM's address is reserved in its DHCP range (default).
    #[arg(long = "network-name", env = "LIBVIRT_NET")]
    network: Option<String>,
    /// Base image volume in the pool, for disk boot (podvm-base.qcow2).
    #[arg(long = "vol-name", env = "LIBVIRT_VOL_NAME")]
    vol_name: Option<String>,
    /// Kernel for direct kernel boot (the minimal pod VM image); disk boot when unset.
    #[arg(long, env = "LIBVIRT_KERNEL")]
    kernel: Option<PathBuf>,
    /// Initramfs for direct kernel boot.
    #[arg(long, env = "LIBVIRT_INITRD")]
    initrd: Option<PathBuf>,
    /// Kernel command line for direct kernel boot.
    #[arg(long, env = "LIBVIRT_CMDLINE")]
    cmdline: Option<String>,
    /// Domain type: qemu (TCG, the default) or kvm.
    #[arg(long, env = "LIBVIRT_DOMAIN_TYPE")]
    domain_type: Option<String>,
    /// vCPUs of a VM when the pod asks for none (2).
    #[arg(long, env = "LIBVIRT_CPU")]
    cpu: Option<String>,
    /// Memory of a VM in MiB when the pod asks for none (8192).
    #[arg(long, env = "LIBVIRT_MEMORY")]
    memory: Option<String>,
    /// Machine type when the pod asks for none (q35).
    #[arg(long, env = "LIBVIRT_MACHINE")]
    machine: Option<String>,
    /// Directory for the VMs' serial console logs (/var/log/libvirt/qemu).
    #[arg(long, env = "LIBVIRT_CONSOLE_DIR")]
    console_dir: Option<PathBuf>,
}

/// The Go adaptor's names (peer-pods-cm), so its ConfigMap works as is.
/// Credentials: AZURE_CLIENT_ID + AZURE_TENANT_ID with
/// AZURE_FEDERATED_TOKEN_FILE (workload identity) or AZURE_CLIENT_SECRET;
/// else the managed identity.
#[cfg(feature = "azure")]
#[derive(Args)]
struct AzureArgs {
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    azure_subscription_id: Option<String>,
    #[arg(long, env = "AZURE_REGION")]
    azure_region: Option<String>,
    #[arg(long, env = "AZURE_RESOURCE_GROUP")]
    azure_resource_group: Option<String>,
    /// Full id of the pods' subnet.
    #[arg(long, env = "AZURE_SUBNET_ID")]
    azure_subnet_id: Option<String>,
    /// Network security group for the VMs' NICs.
    #[arg(long, env = "AZURE_NSG_ID")]
    azure_nsg_id: Option<String>,
    /// The pod VM image: gallery image (version) id (required).
    #[arg(long, env = "AZURE_IMAGE_ID")]
    azure_image_id: Option<String>,
    /// Default VM size (Standard_DC2as_v5).
    #[arg(long, env = "AZURE_INSTANCE_SIZE")]
    azure_instance_size: Option<String>,
    /// VM sizes pods may get (comma list); sized from their annotations.
    #[arg(long, env = "AZURE_INSTANCE_SIZES")]
    azure_instance_sizes: Option<String>,
    /// Extra tags on every VM and NIC: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    tags: Option<String>,
    /// Plain VMs, not confidential (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    disablecvm: Option<String>,
    /// UEFI secure boot on the confidential VMs (true/false, default false).
    #[arg(long, env = "ENABLE_SECURE_BOOT")]
    enable_secure_boot: Option<String>,
    /// The VMs' admin user (peerpod).
    #[arg(long, env = "SSH_USERNAME")]
    ssh_username: Option<String>,
    /// SSH public key file for that user (default: a key nobody holds).
    #[arg(long, env = "SSH_KEY_PATH")]
    ssh_key_path: Option<String>,
    /// OS disk size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    root_volume_size: Option<String>,
    /// Another Resource Manager endpoint (sovereign cloud, a local test API).
    #[arg(long, env = "AZURE_ARM_ENDPOINT")]
    azure_arm_endpoint: Option<String>,
    #[arg(long, env = "AZURE_CLIENT_ID")]
    azure_client_id: Option<String>,
    #[arg(long, env = "AZURE_TENANT_ID")]
    azure_tenant_id: Option<String>,
    /// Service principal secret (prefer workload identity).
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    azure_client_secret: Option<String>,
    /// Workload identity token file (set by the AKS webhook).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    azure_federated_token_file: Option<String>,
    /// Another Entra ID authority (https URL; sovereign clouds).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    azure_authority_host: Option<String>,
}

/// The Go adaptor's names (peer-pods-cm), so its ConfigMap works as is.
#[cfg(feature = "aws")]
#[derive(Args)]
struct AwsArgs {
    /// The pod VM image (required).
    #[arg(long, env = "PODVM_AMI_ID")]
    podvm_ami_id: Option<String>,
    /// Default instance type (m6a.large).
    #[arg(long, env = "PODVM_INSTANCE_TYPE")]
    podvm_instance_type: Option<String>,
    /// Instance types pods may get (comma list); sized from their annotations.
    #[arg(long, env = "PODVM_INSTANCE_TYPES")]
    podvm_instance_types: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    aws_region: Option<String>,
    #[arg(long, env = "AWS_SUBNET_ID")]
    aws_subnet_id: Option<String>,
    /// Security group ids (comma list).
    #[arg(long, env = "AWS_SG_IDS")]
    aws_sg_ids: Option<String>,
    /// Key pair for the instances.
    #[arg(long, env = "SSH_KP_NAME")]
    ssh_kp_name: Option<String>,
    /// Extra tags on every instance: k=v,k2=v2.
    #[arg(long, env = "TAGS")]
    tags: Option<String>,
    /// Reach the VMs on their public address (true/false).
    #[arg(long, env = "USE_PUBLIC_IP")]
    use_public_ip: Option<String>,
    /// Root volume size in GiB.
    #[arg(long, env = "ROOT_VOLUME_SIZE")]
    root_volume_size: Option<String>,
    /// Plain VMs without SEV-SNP (true/false): testing only.
    #[arg(long, env = "DISABLECVM")]
    disablecvm: Option<String>,
    /// Launch from the template PODVM_LAUNCHTEMPLATE_NAME (true/false).
    #[arg(long, env = "USE_PODVM_LAUNCHTEMPLATE")]
    use_podvm_launchtemplate: Option<String>,
    #[arg(long, env = "PODVM_LAUNCHTEMPLATE_NAME")]
    podvm_launchtemplate_name: Option<String>,
    /// Another EC2 endpoint (private endpoint, a local test API).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// Longest wait for a new instance's address, in seconds (180).
    #[arg(long, env = "AWS_IP_WAIT_SECONDS")]
    aws_ip_wait_seconds: Option<String>,
}

#[derive(Args)]
struct LocalArgs {
    /// Where the local provider keeps its instances (default: <state dir>/local).
    #[arg(long, env = "LOCAL_STATE_DIR")]
    local_state_dir: Option<PathBuf>,
    /// The forwarder binary (default: agent-protocol-forwarder next to this binary).
    #[arg(long, env = "LOCAL_FORWARDER_BIN")]
    forwarder_bin: Option<PathBuf>,
    /// The kata-agent binary (default: the kata-agent-double test agent next to this binary).
    #[arg(long, env = "LOCAL_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// The pod VM's user-data step (default: process-user-data next to this binary).
    #[arg(long, env = "LOCAL_USER_DATA_BIN")]
    user_data_bin: Option<PathBuf>,
    /// Host bridge joining the instances' network namespaces.
    #[arg(long, env = "LOCAL_BRIDGE", default_value = "pplocal0")]
    bridge: String,
    /// The /24 the local provider gives its instances (the bridge takes .1).
    #[arg(long, env = "LOCAL_SUBNET", default_value = "10.213.0.0")]
    subnet: std::net::Ipv4Addr,
}

async fn provider(
    cmd: ProviderCmd,
    state_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn Provider>> {
    match cmd {
        #[cfg(feature = "aws")]
        ProviderCmd::Aws(a) => {
            let raw = peerpod_provider_aws::RawAwsConfig {
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
            let cfg = raw
                .check()
                .map_err(|e| anyhow::anyhow!("aws provider configuration: {e}"))?;
            Ok(Arc::new(peerpod_provider_aws::AwsProvider::new(cfg).await))
        }
        #[cfg(feature = "gcp")]
        ProviderCmd::Gcp(a) => {
            let raw = peerpod_provider_gcp::RawGcpConfig {
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
            let cfg = raw
                .check()
                .map_err(|e| anyhow::anyhow!("gcp provider configuration: {e}"))?;
            let p = peerpod_provider_gcp::GcpProvider::new(cfg, Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("gcp provider: {e}"))?;
            Ok(Arc::new(p))
        }
        #[cfg(feature = "libvirt")]
        ProviderCmd::Libvirt(a) => {
            let raw = peerpod_provider_libvirt::RawLibvirtConfig {
                uri: a.uri,
                pool: a.pool,
                network: a.network,
                vol_name: a.vol_name,
                kernel: a.kernel,
                initrd: a.initrd,
                cmdline: a.cmdline,
                domain_type: a.domain_type,
                cpu: a.cpu,
                memory: a.memory,
                machine: a.machine,
                console_dir: a.console_dir,
            };
            let cfg = raw
                .check()
                .map_err(|e| anyhow::anyhow!("libvirt provider configuration: {e}"))?;
            Ok(Arc::new(peerpod_provider_libvirt::LibvirtProvider::new(
                cfg,
            )))
        }
        #[cfg(feature = "azure")]
        ProviderCmd::Azure(a) => {
            let a = *a;
            let raw = peerpod_provider_azure::RawAzureConfig {
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
            let cfg = raw
                .check()
                .map_err(|e| anyhow::anyhow!("azure provider configuration: {e}"))?;
            let creds = peerpod_provider_azure::RawCredentials {
                client_id: a.azure_client_id,
                tenant_id: a.azure_tenant_id,
                client_secret: a.azure_client_secret,
                federated_token_file: a.azure_federated_token_file,
                authority_host: a.azure_authority_host,
            };
            let (credential, kind) = creds
                .build()
                .map_err(|e| anyhow::anyhow!("azure credentials: {e}"))?;
            tracing::info!(credential = kind.as_str(), subscription = %cfg.subscription_id, resource_group = %cfg.resource_group, region = %cfg.region, "azure provider");
            let p = peerpod_provider_azure::AzureProvider::new(
                cfg,
                credential,
                peerpod_provider_azure::ArmTiming::default(),
            )
            .map_err(|e| anyhow::anyhow!("azure provider: {e}"))?;
            Ok(Arc::new(p))
        }
        ProviderCmd::Local(a) => {
            let mut cfg = peerpod_provider_local::LocalConfig::with_defaults(
                a.local_state_dir.unwrap_or_else(|| state_dir.join("local")),
            );
            if let Some(f) = a.forwarder_bin {
                cfg.forwarder_bin = f;
            }
            if let Some(b) = a.agent_bin {
                cfg.agent_bin = b;
            }
            if let Some(b) = a.user_data_bin {
                cfg.user_data_bin = b;
            }
            cfg.bridge = a.bridge;
            cfg.subnet = a.subnet;
            Ok(Arc::new(peerpod_provider_local::LocalProvider::new(cfg)?))
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
    let g = cli.global;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let provider = provider(cli.provider, &g.paths.state_dir).await?;
        let checks = provider
            .verify()
            .await
            .with_context(|| format!("provider {} configuration check failed", provider.name()))?;
        for line in &checks {
            tracing::info!(provider = provider.name(), "checked: {line}");
        }
        if g.check {
            for line in checks {
                println!("ok: {line}");
            }
            return Ok(());
        }
        let mut cfg = AdaptorConfig::new(g.node_name.unwrap_or_else(hostname));
        cfg.socket = g.paths.socket;
        cfg.pods_dir = g.paths.pods_dir;
        cfg.state_dir = g.paths.state_dir;
        cfg.tls = !g.no_tls;
        cfg.forwarder_port = g.forwarder_port;
        cfg.start_timeout = Duration::from_secs(g.start_timeout);
        cfg.max_frame_bytes = g.max_frame_bytes;
        cfg.vxlan_port = g.vxlan_port;
        cfg.vni_base = g.vxlan_min_id;
        cfg.worker_ip = g.worker_ip;
        cfg.limit_per_node = g.limit_per_node;
        cfg.probe_addr = match g.probe_listen.trim() {
            "" | "off" => None,
            a => Some(a.parse().with_context(|| {
                format!("--probe-listen / PEERPOD_PROBE_LISTEN {a:?}: expected host:port (e.g. 0.0.0.0:8000) or \"off\"")
            })?),
        };
        cfg.orphans = cloud_api_adaptor::orphans::OrphanPolicy {
            interval: Duration::from_secs(g.orphan_interval),
            grace: Duration::from_secs(g.orphan_grace),
            dry_run: g.orphan_dry_run,
        };
        if let Some(i) = g.initdata.filter(|i| !i.trim().is_empty()) {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(i.trim())
                .map_err(|e| anyhow::anyhow!("INITDATA is not valid base64: {e}"))?;
            cfg.initdata = Some(i.trim().to_string());
        }
        cfg.registry_auth =
            cloud_api_adaptor::config::read_registry_auth(g.registry_auth_file.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
        if cfg.registry_auth.is_some() {
            tracing::info!("registry credentials loaded; every pod VM gets them (0600)");
        }
        cfg.max_concurrent_creates = g.max_concurrent_creates;
        cfg.provider_timeout = Duration::from_secs(g.provider_timeout);
        let daemon = Daemon::start(cfg, provider).await?;
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
