//! The `libvirt` provider: each pod VM is a libvirt domain (QEMU under TCG
//! by default, KVM when configured) on a libvirt network, created through
//! the libvirt C API (`virt` crate; every call on tokio's blocking pool).
//!
//! Per instance it makes, all named after the instance name:
//! - `<name>-cidata.iso`: the config drive (user data + meta-data), a
//!   volume in the configured pool, uploaded through libvirt;
//! - `<name>-root.qcow2`: for disk boot, a qcow2 overlay backed by the
//!   base image `LIBVIRT_VOL_NAME`; with direct kernel boot (the minimal
//!   image: `LIBVIRT_KERNEL` + `LIBVIRT_INITRD`) there is no root disk;
//! - the domain, persistent, carrying the owner tags in its `<metadata>`;
//! - `<console dir>/<name>.console.log`: its serial console.
//!
//! The instance id is the domain name (the deterministic instance name):
//! libvirt refuses a second domain of one name, so a retried create can
//! never duplicate a VM. The address is chosen by the provider from the
//! network's DHCP range and reserved there for the VM's MAC (see
//! [`ops::Reservation`]), so create returns as soon as the domain starts:
//! the adaptor's readiness check covers the boot.

pub mod cli;
pub mod config;
pub mod error;
pub mod iso;
pub mod ops;
pub mod xml;

pub use config::{Boot, DomainType, LibvirtConfig, RawLibvirtConfig, REQUIRED_ENV};
pub use error::Error;

use async_trait::async_trait;
use error::joined;
use peerpod_provider_api::{
    check_instance_id, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// libvirt's limit is generous; keep names DNS labels like on the clouds.
pub const MAX_NAME_LEN: usize = 63;
/// Lines of the serial console `console_tail` returns.
const TAIL_LINES: usize = 60;

/// See the crate doc.
pub struct LibvirtProvider {
    /// Replaced once, when the KVM probe settles the domain type.
    cfg: std::sync::RwLock<Arc<LibvirtConfig>>,
}

/// How long the KVM probe guest gets to reach its init (TCG takes ~4 s,
/// KVM well under 1 s; a guest hung on a broken nested KVM never does).
pub const KVM_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl LibvirtProvider {
    pub fn new(cfg: LibvirtConfig) -> Self {
        // libvirt prints every error to stderr by default; ours carry
        // them in typed errors and the log instead.
        virt::error::clear_error_callback();
        Self {
            cfg: std::sync::RwLock::new(Arc::new(cfg)),
        }
    }

    /// The configuration in force (the domain type settled by the probe).
    pub fn config(&self) -> Arc<LibvirtConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `LIBVIRT_DOMAIN_TYPE=auto`: boots the image once as a KVM guest and
    /// switches to KVM only if it reached its init in time; TCG otherwise.
    /// Returns what it found, for verify's report.
    pub async fn probe_kvm(&self) -> Result<String, Error> {
        let cfg = self.config();
        let name = format!(
            "peerpod-kvm-probe-{:06x}",
            rand::random::<u32>() & 0xff_ffff
        );
        let log = ops::console_log(&cfg, &name);
        let started = Instant::now();
        let (c, n, l) = (cfg.clone(), name.clone(), log.clone());
        let booted = match joined(
            tokio::task::spawn_blocking(move || ops::start_probe(&c, &n, &l)).await,
            "KVM probe",
        ) {
            Err(e) => Err(e.to_string()),
            Ok(()) => loop {
                let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
                if text.contains("init started") {
                    break Ok(started.elapsed());
                }
                if started.elapsed() > KVM_PROBE_WAIT {
                    break Err(format!("no init within {KVM_PROBE_WAIT:?}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            },
        };
        let (c, n) = (cfg.clone(), name.clone());
        if let Err(e) = joined(
            tokio::task::spawn_blocking(move || ops::stop_probe(&c, &n)).await,
            "stop the KVM probe",
        ) {
            tracing::warn!(domain = %name, error = %e, "stopping the KVM probe");
        }
        let _ = tokio::fs::remove_file(&log).await;
        let qemu_log = std::path::Path::new(ops::QEMU_LOG_DIR).join(format!("{name}.log"));
        let _ = tokio::fs::remove_file(&qemu_log).await;
        let mut next = (*cfg).clone();
        next.kvm_probe = false;
        let line = match booted {
            Ok(t) => {
                next.domain_type = DomainType::Kvm;
                format!("KVM probe: a KVM guest reached its init in {t:.1?}: using kvm")
            }
            Err(why) => {
                next.domain_type = DomainType::Qemu;
                format!("KVM probe: {why}: using qemu (TCG)")
            }
        };
        tracing::info!("{line}");
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(line)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        step: &'static str,
        f: impl FnOnce(&LibvirtConfig) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let cfg = self.config();
        joined(tokio::task::spawn_blocking(move || f(&cfg)).await, step)
    }

    /// Removes what a failed create made; a failure here is logged, the
    /// caller reports the create's own error.
    async fn undo(&self, name: &str) {
        let n = name.to_string();
        if let Err(e) = self.blocking("clean up", move |c| ops::delete(c, &n)).await {
            tracing::warn!(instance = %name, error = %e, "cleaning up a failed create");
        }
    }
}

/// The last `n` lines of a file, reading at most its last 64 KiB.
fn tail(path: &Path, n: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

#[async_trait]
impl Provider for LibvirtProvider {
    fn name(&self) -> &str {
        "libvirt"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        check_instance_id(&req.name)?;
        req.refuse_gpus("libvirt")?;
        let name = req.name.clone();
        let ctx = format!("create domain {name}");
        let started = Instant::now();
        let iso =
            iso::build(&name, &req.user_data).map_err(|e| e.into_provider_error(Some(&ctx)))?;
        let tags = req.all_tags();
        let base = self.config();
        let spec = ops::CreateSpec {
            name: name.clone(),
            vcpus: req.vcpus.unwrap_or(base.vcpus).max(1),
            memory_mib: req.memory_mib.unwrap_or(base.memory_mib).max(128),
            machine: req
                .machine_type
                .clone()
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| base.machine.clone()),
            tags: tags.clone(),
            iso,
        };
        // The pod's image annotation names another base volume in the pool.
        let mut cfg = (*base).clone();
        if let Some(img) = req
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            match &mut cfg.boot {
                Boot::Disk { base_volume } => *base_volume = img.to_string(),
                Boot::Kernel { .. } if cfg.kernel_root_volume.is_some() => {
                    cfg.kernel_root_volume = Some(img.to_string())
                }
                Boot::Kernel { .. } => {}
            }
        }
        let (vcpus, memory) = (spec.vcpus, spec.memory_mib);
        let made = joined(
            tokio::task::spawn_blocking(move || ops::create(&cfg, &spec)).await,
            "create domain",
        );
        match made {
            Ok(res) => {
                tracing::info!(
                    instance = %name,
                    vcpus,
                    memory_mib = memory,
                    ip = %res.ip,
                    took = ?started.elapsed(),
                    "domain started"
                );
                Ok(Instance {
                    id: name.clone(),
                    name,
                    ips: vec![res.ip.into()],
                    tags,
                    instance_type: None,
                })
            }
            Err(e) => {
                self.undo(&name).await;
                Err(e.into_provider_error(Some(&ctx)))
            }
        }
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        let n = instance_id.to_string();
        let found = self
            .blocking("delete domain", move |c| ops::delete(c, &n))
            .await
            .map_err(|e| e.into_provider_error(Some(&format!("delete domain {instance_id}"))))?;
        tracing::info!(instance = %instance_id, found, "domain and its volumes deleted");
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        let all = self.blocking("list domains", ops::list).await?;
        Ok(all
            .into_iter()
            .filter(|d| owner.matches(&d.tags))
            .map(|d| Instance {
                id: d.name.clone(),
                name: d.name,
                ips: d.ips,
                tags: d.tags,
                instance_type: None,
            })
            .collect())
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = self.blocking("verify", ops::verify).await?;
        if self.config().kvm_probe {
            lines.push(self.probe_kvm().await?);
        }
        Ok(lines)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let path = ops::console_log(&self.config(), instance_id);
        tokio::task::spawn_blocking(move || tail(&path, TAIL_LINES))
            .await
            .ok()
            .flatten()
    }
}
