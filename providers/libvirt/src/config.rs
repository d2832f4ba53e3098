//! The provider's settings, checked once at start-up. The names follow the
//! Go adaptor's libvirt provider (`LIBVIRT_URI`, `LIBVIRT_POOL`,
//! `LIBVIRT_NET`, `LIBVIRT_VOL_NAME`, `LIBVIRT_CPU`, `LIBVIRT_MEMORY`), plus
//! ours for direct kernel boot, the domain type and the console logs.

use std::path::PathBuf;

/// The settings without which `check` fails: none, every setting has a
/// default (`nothing_set_gives_the_go_adaptor_defaults` checks it).
pub const REQUIRED_ENV: &[&str] = &[];

/// Go adaptor default `LIBVIRT_URI`.
pub const DEFAULT_URI: &str = "qemu:///system";
/// Go adaptor default `LIBVIRT_POOL` / `LIBVIRT_NET`.
pub const DEFAULT_POOL: &str = "default";
pub const DEFAULT_NET: &str = "default";
/// Go adaptor default `LIBVIRT_VOL_NAME`.
pub const DEFAULT_VOL_NAME: &str = "podvm-base.qcow2";
/// Go adaptor defaults `LIBVIRT_CPU` / `LIBVIRT_MEMORY` (MiB).
pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 8192;
/// Kernel command line for direct kernel boot when none is configured (the
/// minimal image's, `podvm-image/build.sh` writes the same to `cmdline`).
/// `cryptomgr.notests` skips the boot-time self-tests of the kernel's
/// crypto algorithms: ~0.3 s of a 2.5 s kernel boot under TCG. Images that
/// must run them (FIPS) set their own command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 cryptomgr.notests";
/// Where serial console logs go when not configured.
pub const DEFAULT_CONSOLE_DIR: &str = "/var/log/libvirt/qemu";

/// The libvirt domain type. TCG (`qemu`) is the default: KVM is used only
/// when configured (`kvm`) or proven by a probe boot (`auto`), because a
/// `/dev/kvm` that exists is no proof that guests boot on it (nested
/// hypervisors may hang a guest early in boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Qemu,
    Kvm,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Qemu => "qemu",
            DomainType::Kvm => "kvm",
        }
    }
}

/// How the pod VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot (the minimal image: kernel + initramfs, no root
    /// disk): nothing to copy per VM, and no firmware or boot loader time.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Boot from a per-VM qcow2 overlay of this base volume in the pool.
    Disk { base_volume: String },
}

/// Settings of the libvirt provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    pub uri: String,
    pub pool: String,
    pub network: String,
    pub boot: Boot,
    /// With direct kernel boot, a base volume for a root disk (the debian
    /// image: its kernel and initrd boot `root=LABEL=podvm-root` from a
    /// per-VM overlay of it). `LIBVIRT_VOL_NAME` given with `LIBVIRT_KERNEL`.
    pub kernel_root_volume: Option<String>,
    pub domain_type: DomainType,
    /// `LIBVIRT_DOMAIN_TYPE=auto`: boot the image once under KVM at start
    /// (verify) and use KVM only if that guest reached its init.
    pub kvm_probe: bool,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Machine type when the pod asks for none.
    pub machine: String,
    /// Directory (on the libvirt host, which must be this host for
    /// `console_tail`) for the serial console logs.
    pub console_dir: PathBuf,
}

impl LibvirtConfig {
    /// Defaults for everything, booting from `LIBVIRT_VOL_NAME`'s default.
    pub fn with_defaults() -> Self {
        Self {
            uri: DEFAULT_URI.into(),
            pool: DEFAULT_POOL.into(),
            network: DEFAULT_NET.into(),
            boot: Boot::Disk {
                base_volume: DEFAULT_VOL_NAME.into(),
            },
            kernel_root_volume: None,
            domain_type: DomainType::Qemu,
            kvm_probe: false,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            machine: "q35".into(),
            console_dir: DEFAULT_CONSOLE_DIR.into(),
        }
    }
}

/// The settings as given (flags or env), before checking.
#[derive(Debug, Clone, Default)]
pub struct RawLibvirtConfig {
    pub uri: Option<String>,
    pub pool: Option<String>,
    pub network: Option<String>,
    pub vol_name: Option<String>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub domain_type: Option<String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub machine: Option<String>,
    pub console_dir: Option<PathBuf>,
}

use peerpod_provider_api::settings::bad;
pub use peerpod_provider_api::settings::ConfigError;

/// An empty value means "not set" (env vars from a ConfigMap often are);
/// borrowed, unlike `settings::non_empty`, as most values here have a
/// `&'static str` default.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn name(v: &Option<String>, env: &'static str, default: &str) -> Result<String, ConfigError> {
    let s = given(v).unwrap_or(default);
    if s.contains(['\0', '/']) {
        return Err(bad(env, format!("{s:?} is not a libvirt object name")));
    }
    Ok(s.to_string())
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    v: &Option<String>,
    env: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match given(v) {
        None => Ok(default),
        Some(s) => match s.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err(bad(env, format!("{s:?} is not a positive whole number"))),
        },
    }
}

impl RawLibvirtConfig {
    pub fn check(&self) -> Result<LibvirtConfig, ConfigError> {
        let d = LibvirtConfig::with_defaults();
        let uri = given(&self.uri).unwrap_or(DEFAULT_URI).to_string();
        if uri.contains('\0') {
            return Err(bad("LIBVIRT_URI", "contains a NUL byte"));
        }
        let boot = match self.kernel.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            Some(kernel) => {
                if !kernel.is_absolute() {
                    return Err(bad("LIBVIRT_KERNEL", "must be an absolute path"));
                }
                let initrd = self.initrd.clone().filter(|p| !p.as_os_str().is_empty());
                if initrd.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err(bad("LIBVIRT_INITRD", "must be an absolute path"));
                }
                Boot::Kernel {
                    kernel: kernel.clone(),
                    initrd,
                    cmdline: given(&self.cmdline).unwrap_or(DEFAULT_CMDLINE).to_string(),
                }
            }
            None => {
                if self
                    .initrd
                    .as_ref()
                    .is_some_and(|p| !p.as_os_str().is_empty())
                {
                    return Err(bad("LIBVIRT_INITRD", "needs LIBVIRT_KERNEL"));
                }
                Boot::Disk {
                    base_volume: name(&self.vol_name, "LIBVIRT_VOL_NAME", DEFAULT_VOL_NAME)?,
                }
            }
        };
        let domain_type = match given(&self.domain_type)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("qemu") | Some("tcg") | Some("auto") => DomainType::Qemu,
            Some("kvm") => DomainType::Kvm,
            Some(other) => {
                return Err(bad(
                    "LIBVIRT_DOMAIN_TYPE",
                    format!("{other:?}: use qemu (TCG), kvm or auto"),
                ))
            }
        };
        let kvm_probe = given(&self.domain_type).is_some_and(|t| t.eq_ignore_ascii_case("auto"));
        if kvm_probe && !matches!(boot, Boot::Kernel { .. }) {
            return Err(bad(
                "LIBVIRT_DOMAIN_TYPE",
                "auto needs LIBVIRT_KERNEL: the KVM probe boots the minimal image",
            ));
        }
        let machine = given(&self.machine).unwrap_or(&d.machine).to_string();
        if machine.contains('\0') {
            return Err(bad("LIBVIRT_MACHINE", "contains a NUL byte"));
        }
        let console_dir = self
            .console_dir
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(d.console_dir);
        if !console_dir.is_absolute() {
            return Err(bad("LIBVIRT_CONSOLE_DIR", "must be an absolute path"));
        }
        let kernel_root_volume = match (&boot, given(&self.vol_name)) {
            (Boot::Kernel { .. }, Some(_)) => Some(name(&self.vol_name, "LIBVIRT_VOL_NAME", "")?),
            _ => None,
        };
        Ok(LibvirtConfig {
            uri,
            kernel_root_volume,
            pool: name(&self.pool, "LIBVIRT_POOL", DEFAULT_POOL)?,
            network: name(&self.network, "LIBVIRT_NET", DEFAULT_NET)?,
            boot,
            domain_type,
            kvm_probe,
            vcpus: number(&self.cpu, "LIBVIRT_CPU", DEFAULT_VCPUS)?,
            memory_mib: number(&self.memory, "LIBVIRT_MEMORY", DEFAULT_MEMORY_MIB)?,
            machine,
            console_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_set_gives_the_go_adaptor_defaults() {
        let c = RawLibvirtConfig::default().check().unwrap();
        assert_eq!(c, LibvirtConfig::with_defaults());
        assert_eq!(c.uri, "qemu:///system");
        assert_eq!(
            c.boot,
            Boot::Disk {
                base_volume: "podvm-base.qcow2".into()
            }
        );
        assert_eq!((c.vcpus, c.memory_mib), (2, 8192));
        assert_eq!(c.domain_type, DomainType::Qemu);
    }

    #[test]
    fn empty_values_are_unset_and_a_kernel_means_direct_boot() {
        let raw = RawLibvirtConfig {
            pool: Some("".into()),
            kernel: Some("/img/vmlinuz".into()),
            initrd: Some("/img/initrd.img".into()),
            domain_type: Some("KVM".into()),
            cpu: Some(" 1 ".into()),
            memory: Some("512".into()),
            ..Default::default()
        };
        let c = raw.check().unwrap();
        assert_eq!(c.pool, "default");
        assert_eq!(c.domain_type, DomainType::Kvm);
        assert!(!c.kvm_probe);
        let auto = RawLibvirtConfig {
            kernel: Some("/img/vmlinuz".into()),
            domain_type: Some("auto".into()),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(c.kernel_root_volume, None);
        let debian = RawLibvirtConfig {
            kernel: Some("/img/vmlinuz".into()),
            vol_name: Some("podvm-debian.qcow2".into()),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(
            debian.kernel_root_volume.as_deref(),
            Some("podvm-debian.qcow2")
        );
        // TCG until the probe has seen a KVM guest boot.
        assert_eq!((auto.domain_type, auto.kvm_probe), (DomainType::Qemu, true));
        assert_eq!((c.vcpus, c.memory_mib), (1, 512));
        match c.boot {
            Boot::Kernel {
                cmdline, initrd, ..
            } => {
                assert_eq!(cmdline, DEFAULT_CMDLINE);
                assert_eq!(initrd, Some("/img/initrd.img".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: Vec<(RawLibvirtConfig, &str)> = vec![
            (
                RawLibvirtConfig {
                    cpu: Some("0".into()),
                    ..Default::default()
                },
                "LIBVIRT_CPU",
            ),
            (
                RawLibvirtConfig {
                    memory: Some("lots".into()),
                    ..Default::default()
                },
                "LIBVIRT_MEMORY",
            ),
            (
                RawLibvirtConfig {
                    domain_type: Some("xen".into()),
                    ..Default::default()
                },
                "LIBVIRT_DOMAIN_TYPE",
            ),
            (
                RawLibvirtConfig {
                    initrd: Some("/i".into()),
                    ..Default::default()
                },
                "LIBVIRT_INITRD",
            ),
            (
                RawLibvirtConfig {
                    kernel: Some("vmlinuz".into()),
                    ..Default::default()
                },
                "LIBVIRT_KERNEL",
            ),
            (
                RawLibvirtConfig {
                    pool: Some("a/b".into()),
                    ..Default::default()
                },
                "LIBVIRT_POOL",
            ),
            (
                RawLibvirtConfig {
                    domain_type: Some("auto".into()),
                    ..Default::default()
                },
                "LIBVIRT_DOMAIN_TYPE",
            ),
        ];
        for (raw, var) in cases {
            let e = raw.check().unwrap_err();
            assert_eq!(e.key, var, "{e}");
        }
    }
}
