//! `cloud-api-adaptor libvirt`: the flags and env vars of the libvirt
//! provider (the Go adaptor's names where it has them) and how they become
//! a [`LibvirtProvider`](crate::LibvirtProvider).

use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::path::PathBuf;
use std::sync::Arc;

/// The Go adaptor's flag and env names where it has them (LIBVIRT_URI,
/// LIBVIRT_POOL, LIBVIRT_NET, LIBVIRT_VOL_NAME, LIBVIRT_CPU,
/// LIBVIRT_MEMORY), ours for the rest. Empty values mean "not set".
#[derive(clap::Args, Debug)]
pub struct Args {
    /// libvirt connection URI (qemu:///system).
    #[arg(long, env = "LIBVIRT_URI")]
    pub uri: Option<String>,
    /// Storage pool for the VMs' volumes and config drives (default).
    #[arg(long = "pool-name", env = "LIBVIRT_POOL")]
    pub pool: Option<String>,
    /// libvirt network the VMs join; each VM's address is reserved in its DHCP range (default).
    #[arg(long = "network-name", env = "LIBVIRT_NET")]
    pub network: Option<String>,
    /// Base image volume in the pool, for disk boot (podvm-base.qcow2).
    #[arg(long = "vol-name", env = "LIBVIRT_VOL_NAME")]
    pub vol_name: Option<String>,
    /// Kernel for direct kernel boot (the minimal pod VM image); disk boot when unset.
    #[arg(long, env = "LIBVIRT_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for direct kernel boot.
    #[arg(long, env = "LIBVIRT_INITRD")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct kernel boot.
    #[arg(long, env = "LIBVIRT_CMDLINE")]
    pub cmdline: Option<String>,
    /// Domain type: qemu (TCG, the default) or kvm.
    #[arg(long, env = "LIBVIRT_DOMAIN_TYPE")]
    pub domain_type: Option<String>,
    /// vCPUs of a VM when the pod asks for none (2).
    #[arg(long, env = "LIBVIRT_CPU")]
    pub cpu: Option<String>,
    /// Memory of a VM in MiB when the pod asks for none (8192).
    #[arg(long, env = "LIBVIRT_MEMORY")]
    pub memory: Option<String>,
    /// Machine type when the pod asks for none (q35).
    #[arg(long, env = "LIBVIRT_MACHINE")]
    pub machine: Option<String>,
    /// Directory for the VMs' serial console logs (/var/log/libvirt/qemu).
    #[arg(long, env = "LIBVIRT_CONSOLE_DIR")]
    pub console_dir: Option<PathBuf>,
}

impl Args {
    /// Checks the settings and builds the provider.
    pub async fn build(self, _ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        let a = self;
        let raw = crate::RawLibvirtConfig {
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
        let cfg = raw.check().map_err(|e| BuildError::config("libvirt", e))?;
        Ok(Arc::new(crate::LibvirtProvider::new(cfg)))
    }
}
