//! The blocking libvirt calls, one function per provider operation. Each
//! opens its own connection ([`Session`]), so operations run in parallel
//! on tokio's blocking pool without sharing a handle; opening a local
//! `qemu:///system` connection costs a few milliseconds.

use crate::config::{Boot, LibvirtConfig};
use crate::error::{Error, Step};
use crate::xml::{self, DomainSpec, NetworkIpv4, METADATA_NS};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::network::Network;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

/// An open libvirt connection, closed on drop.
pub struct Session {
    conn: Connect,
    uri: String,
}

impl Session {
    pub fn open(uri: &str) -> Result<Self, Error> {
        let conn = Connect::open(Some(uri)).step(format!("connect to libvirt at {uri}"))?;
        Ok(Self {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn conn(&self) -> &Connect {
        &self.conn
    }

    fn pool(&self, name: &str) -> Result<StoragePool, Error> {
        let pool = StoragePool::lookup_by_name(&self.conn, name)
            .step(format!("look up storage pool {name}"))?;
        if !pool
            .is_active()
            .step(format!("state of storage pool {name}"))?
        {
            return Err(Error::Config(format!(
                "storage pool {name} is not active (virsh pool-start {name})"
            )));
        }
        Ok(pool)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.conn.close() {
            tracing::debug!(uri = %self.uri, error = %e, "closing libvirt connection");
        }
    }
}

/// Where libvirt's system daemon writes each domain's QEMU log.
pub const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";

/// The volume names an instance owns.
pub fn iso_volume(name: &str) -> String {
    format!("{name}-cidata.iso")
}
pub fn root_volume(name: &str) -> String {
    format!("{name}-root.qcow2")
}
pub fn console_log(cfg: &LibvirtConfig, name: &str) -> PathBuf {
    cfg.console_dir.join(format!("{name}.console.log"))
}

/// What one create asks for.
pub struct CreateSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub machine: String,
    pub tags: BTreeMap<String, String>,
    pub iso: Vec<u8>,
}

/// The address a VM was given: reserved for its MAC in the network's DHCP
/// section (so dnsmasq never hands it to another guest, and a disk-booted
/// image that runs DHCP gets the same address), and passed to the minimal
/// image on the kernel command line (`peerpod.ip=ADDR/PREFIX,GATEWAY`), so
/// it configures eth0 at once, without a DHCP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

fn update_flags(net: &Network) -> u32 {
    let mut f = virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
    if net.is_persistent().unwrap_or(false) {
        f |= virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
    }
    f
}

fn network(s: &Session, cfg: &LibvirtConfig) -> Result<(Network, NetworkIpv4), Error> {
    let net = Network::lookup_by_name(s.conn(), &cfg.network)
        .step(format!("look up network {}", cfg.network))?;
    let x = net
        .get_xml_desc(0)
        .step(format!("describe network {}", cfg.network))?;
    let v4 = xml::parse_network(&x)?.ok_or_else(|| {
        Error::Config(format!(
            "network {} has no IPv4 DHCP range: the provider reserves each VM's address in it",
            cfg.network
        ))
    })?;
    Ok((net, v4))
}

/// Addresses leased to running domains (best effort: a domain that is not
/// on a libvirt network has none).
fn leased(s: &Session) -> Vec<Ipv4Addr> {
    let Ok(doms) = s
        .conn()
        .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    else {
        return Vec::new();
    };
    doms.iter()
        .filter_map(|d| {
            d.interface_addresses(virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
                .ok()
        })
        .flatten()
        .flat_map(|i| i.addrs)
        .filter_map(|a| a.addr.parse().ok())
        .collect()
}

/// Addresses picked by creates of this process whose reservation has not
/// landed yet: two creates running at once never pick the same one.
static IN_FLIGHT: std::sync::Mutex<Vec<Ipv4Addr>> = std::sync::Mutex::new(Vec::new());

/// An address picked for one create, in [`IN_FLIGHT`] until dropped.
struct Picked {
    res: Reservation,
}

impl Drop for Picked {
    fn drop(&mut self) {
        let mut f = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        f.retain(|ip| *ip != self.res.ip);
    }
}

/// Picks a free address of the network's DHCP range: not the gateway, not
/// reserved, not leased, not picked by another create of this process.
fn pick(s: &Session, cfg: &LibvirtConfig) -> Result<Picked, Error> {
    let (_, v4) = network(s, cfg)?;
    let mut taken = leased(s);
    let mut f = IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
    taken.extend(f.iter().copied());
    let ip = xml::pick_address(&v4, &taken).ok_or_else(|| {
        Error::Exhausted(format!(
            "network {} has no free address in its DHCP range {}-{}",
            cfg.network, v4.range.0, v4.range.1
        ))
    })?;
    f.push(ip);
    Ok(Picked {
        res: Reservation {
            ip,
            prefix: v4.prefix,
            gateway: v4.gateway,
        },
    })
}

/// Reserves `ip` for `mac` in the network's DHCP section. libvirt refuses
/// an address, MAC or name reserved already (another adaptor on this
/// network).
fn reserve(cfg: &LibvirtConfig, name: &str, mac: &str, ip: Ipv4Addr) -> Result<(), Error> {
    let s = Session::open(&cfg.uri)?;
    let net = Network::lookup_by_name(s.conn(), &cfg.network)
        .step(format!("look up network {}", cfg.network))?;
    net.update(
        virt::sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        virt::sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        &xml::dhcp_host_xml(mac, name, ip),
        update_flags(&net),
    )
    .step(format!(
        "reserve {ip} for {name} on network {}",
        cfg.network
    ))
}

/// Destroys and undefines a domain this create just started.
fn discard(dom: &Domain, name: &str) {
    if let Err(e) = dom.destroy().step(format!("destroy domain {name}")) {
        tracing::debug!(instance = %name, error = %e, "discarding a domain");
    }
    if let Err(e) = dom.undefine().step(format!("undefine domain {name}")) {
        tracing::debug!(instance = %name, error = %e, "discarding a domain");
    }
}

/// Drops the reservations made for `name`. A missing network has none.
fn release(s: &Session, cfg: &LibvirtConfig, name: &str) -> Result<(), Error> {
    let (net, v4) = match network(s, cfg) {
        Ok(n) => n,
        Err(e) if e.is_not_found() || matches!(e, Error::Config(_)) => return Ok(()),
        Err(Error::Libvirt {
            code: ErrorNumber::NoNetwork,
            ..
        }) => return Ok(()),
        Err(e) => return Err(e),
    };
    for h in v4.hosts.iter().filter(|h| h.name.as_deref() == Some(name)) {
        let mac = h.mac.clone().unwrap_or_default();
        net.update(
            virt::sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
            virt::sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
            -1,
            &xml::dhcp_host_xml(&mac, name, h.ip),
            update_flags(&net),
        )
        .step(format!(
            "release {} of {name} on network {}",
            h.ip, cfg.network
        ))?;
    }
    Ok(())
}

/// The reserved address of each instance name on the network.
pub fn reserved(s: &Session, cfg: &LibvirtConfig) -> BTreeMap<String, Ipv4Addr> {
    network(s, cfg)
        .map(|(_, v4)| {
            v4.hosts
                .into_iter()
                .filter_map(|h| h.name.map(|n| (n, h.ip)))
                .collect()
        })
        .unwrap_or_default()
}

/// Uploads the config drive, makes the root overlay (disk boot), reserves
/// the VM's address, defines and starts the domain. On error the caller
/// deletes by name, which removes whatever was made.
pub fn create(cfg: &LibvirtConfig, spec: &CreateSpec) -> Result<Reservation, Error> {
    let t0 = std::time::Instant::now();
    let s = Session::open(&cfg.uri)?;
    let pool = s.pool(&cfg.pool)?;
    let name = &spec.name;

    let iso_name = iso_volume(name);
    let iso = StorageVol::create_xml(
        &pool,
        &xml::raw_volume_xml(&iso_name, spec.iso.len() as u64),
        0,
    )
    .step(format!("create volume {iso_name} in pool {}", cfg.pool))?;
    let stream = Stream::new(s.conn(), 0).step("open an upload stream")?;
    iso.upload(&stream, 0, spec.iso.len() as u64, 0)
        .step(format!("upload config drive {iso_name}"))?;
    let mut sent = 0;
    while sent < spec.iso.len() {
        let n = stream
            .send(&spec.iso[sent..])
            .step(format!("upload config drive {iso_name}"))?;
        if n == 0 {
            return Err(Error::Tool {
                step: format!("upload config drive {iso_name}"),
                why: "libvirt accepted no more bytes".into(),
            });
        }
        sent += n;
    }
    stream
        .finish()
        .step(format!("finish the upload of {iso_name}"))?;
    let iso_path = PathBuf::from(iso.get_path().step(format!("path of volume {iso_name}"))?);

    let base_volume = match &cfg.boot {
        Boot::Disk { base_volume } => Some(base_volume),
        Boot::Kernel { .. } => cfg.kernel_root_volume.as_ref(),
    };
    let root_disk = match base_volume {
        None => None,
        Some(base_volume) => {
            let base = StorageVol::lookup_by_name(&pool, base_volume).step(format!(
                "look up base image {base_volume} in pool {}",
                cfg.pool
            ))?;
            let info = base.get_info().step(format!("size of {base_volume}"))?;
            let base_path = base.get_path().step(format!("path of {base_volume}"))?;
            let base_xml = base
                .get_xml_desc(0)
                .step(format!("describe {base_volume}"))?;
            let fmt = volume_format(&base_xml).unwrap_or_else(|| "qcow2".into());
            let root = root_volume(name);
            let vol = StorageVol::create_xml(
                &pool,
                &xml::overlay_volume_xml(&root, info.capacity, &base_path, &fmt),
                0,
            )
            .step(format!("create volume {root} backed by {base_volume}"))?;
            Some(PathBuf::from(
                vol.get_path().step(format!("path of volume {root}"))?,
            ))
        }
    };

    let volumes_done = t0.elapsed();
    let mac = xml::random_mac();
    // The address is picked first and put on the kernel command line; its
    // DHCP reservation (~0.3 s: libvirt rewrites dnsmasq's hosts file)
    // runs on its own connection while the domain is defined and started.
    // Should libvirt refuse it (another adaptor reserved that address just
    // now), the domain is discarded and the next address tried.
    let mut last = None;
    for _ in 0..8 {
        let picked = pick(&s, cfg)?;
        let res = picked.res;
        let dom_xml = domain_xml(cfg, spec, root_disk.clone(), iso_path.clone(), &mac, res);
        let (reserved, started) = std::thread::scope(|sc| {
            let r = sc.spawn(|| reserve(cfg, name, &mac, res.ip));
            let started = Domain::define_xml(s.conn(), &dom_xml)
                .step(format!("define domain {name}"))
                .and_then(|dom| {
                    dom.create()
                        .step(format!("start domain {name}"))
                        .map(|_| dom)
                });
            let reserved = r.join().unwrap_or_else(|_| {
                Err(Error::Tool {
                    step: format!("reserve {} for {name}", res.ip),
                    why: "the reservation thread panicked".into(),
                })
            });
            (reserved, started)
        });
        // A failed start is the create's error; the caller's delete also
        // drops a reservation that did land.
        let dom = started?;
        match reserved {
            Ok(()) => {
                tracing::debug!(
                    instance = %name,
                    volumes = ?volumes_done,
                    reserve_define_start = ?(t0.elapsed() - volumes_done),
                    "libvirt create steps"
                );
                return Ok(res);
            }
            Err(e) => {
                tracing::debug!(instance = %name, ip = %res.ip, error = %e, "address reservation refused; trying another");
                discard(&dom, name);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Exhausted("no address could be reserved".into())))
}

/// The domain XML of one create, its address on the kernel command line.
fn domain_xml(
    cfg: &LibvirtConfig,
    spec: &CreateSpec,
    root_disk: Option<PathBuf>,
    config_drive: PathBuf,
    mac: &str,
    res: Reservation,
) -> String {
    let boot = match &cfg.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => Boot::Kernel {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: format!(
                "{cmdline} peerpod.ip={}/{},{}",
                res.ip, res.prefix, res.gateway
            ),
        },
        other => other.clone(),
    };
    xml::domain_xml(&DomainSpec {
        name: spec.name.clone(),
        domain_type: cfg.domain_type,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        machine: spec.machine.clone(),
        boot,
        root_disk,
        config_drive,
        network: cfg.network.clone(),
        mac: mac.to_string(),
        console_log: console_log(cfg, &spec.name),
        tags: spec.tags.clone(),
    })
}

fn volume_format(vol_xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(vol_xml).ok()?;
    doc.descendants()
        .find(|n| n.has_tag_name("format") && n.parent().is_some_and(|p| p.has_tag_name("target")))
        .and_then(|n| n.attribute("type"))
        .map(str::to_string)
}

/// Destroys and undefines the domain and removes its volumes, address
/// reservation and console log. What does not exist counts as removed. Returns whether a domain
/// was found.
pub fn delete(cfg: &LibvirtConfig, name: &str) -> Result<bool, Error> {
    let s = Session::open(&cfg.uri)?;
    let found = match Domain::lookup_by_name(s.conn(), name).step(format!("look up domain {name}"))
    {
        Ok(dom) => {
            if dom.is_active().step(format!("state of domain {name}"))? {
                if let Err(e) = dom.destroy().step(format!("destroy domain {name}")) {
                    // It may have stopped between the two calls.
                    if dom.is_active().step(format!("state of domain {name}"))? {
                        return Err(e);
                    }
                }
            }
            match dom.undefine().step(format!("undefine domain {name}")) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            true
        }
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e),
    };
    release(&s, cfg, name)?;
    let pool = s.pool(&cfg.pool)?;
    for vol in [iso_volume(name), root_volume(name)] {
        match StorageVol::lookup_by_name(&pool, &vol).step(format!("look up volume {vol}")) {
            Ok(v) => match v.delete(0).step(format!("delete volume {vol}")) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    // libvirt keeps QEMU's own log of every domain it ever ran and never
    // removes it: one file per pod VM, for ever, on a busy node.
    if cfg.uri == "qemu:///system" {
        let qemu_log = PathBuf::from(QEMU_LOG_DIR).join(format!("{name}.log"));
        if let Err(e) = std::fs::remove_file(&qemu_log) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %qemu_log.display(), error = %e, "removing libvirt's QEMU log");
            }
        }
    }
    let log = console_log(cfg, name);
    match std::fs::remove_file(&log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                step: format!("remove console log {}", log.display()),
                source: e,
            })
        }
        _ => {}
    }
    Ok(found)
}

/// One domain of ours.
pub struct Listed {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub tags: BTreeMap<String, String>,
}

/// Every domain carrying our metadata element (running or not).
pub fn list(cfg: &LibvirtConfig) -> Result<Vec<Listed>, Error> {
    let s = Session::open(&cfg.uri)?;
    let doms = s.conn().list_all_domains(0).step("list domains")?;
    let ips = reserved(&s, cfg);
    let mut out = Vec::new();
    for dom in doms {
        let Ok(name) = dom.get_name() else { continue };
        let meta = match dom
            .get_metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(METADATA_NS),
                0,
            )
            .step(format!("metadata of domain {name}"))
        {
            Ok(m) => m,
            // Not ours (no element in our namespace), or gone meanwhile.
            Err(Error::Libvirt {
                code: ErrorNumber::NoDomainMetadata | ErrorNumber::NoDomain,
                ..
            }) => continue,
            Err(e) => return Err(e),
        };
        let Some(tags) = xml::parse_tags(&meta)? else {
            continue;
        };
        let ips = ips
            .get(&name)
            .map(|ip| vec![IpAddr::V4(*ip)])
            .unwrap_or_default();
        out.push(Listed { name, ips, tags });
    }
    Ok(out)
}

/// Checks the connection, pool, network and boot image; one line each.
pub fn verify(cfg: &LibvirtConfig) -> Result<Vec<String>, Error> {
    let s = Session::open(&cfg.uri)?;
    let mut lines = Vec::new();
    let v = s.conn().get_lib_version().step("libvirt version")?;
    lines.push(format!(
        "connected to {} (libvirt {}.{}.{}), domain type {}",
        cfg.uri,
        v / 1_000_000,
        v / 1000 % 1000,
        v % 1000,
        cfg.domain_type.as_str()
    ));
    let pool = s.pool(&cfg.pool)?;
    lines.push(format!("storage pool {} is active", cfg.pool));
    let net = Network::lookup_by_name(s.conn(), &cfg.network)
        .step(format!("look up network {}", cfg.network))?;
    if !net
        .is_active()
        .step(format!("state of network {}", cfg.network))?
    {
        return Err(Error::Config(format!(
            "network {} is not active (virsh net-start {})",
            cfg.network, cfg.network
        )));
    }
    lines.push(format!("network {} is active", cfg.network));
    match &cfg.boot {
        Boot::Kernel { kernel, initrd, .. } => {
            if let Some(v) = &cfg.kernel_root_volume {
                StorageVol::lookup_by_name(&pool, v)
                    .step(format!("look up root image {v} in pool {}", cfg.pool))?;
                lines.push(format!("root image {v} (overlay per VM)"));
            }
            for p in std::iter::once(kernel).chain(initrd) {
                let m = std::fs::metadata(p).step(format!("boot file {}", p.display()))?;
                if !m.is_file() || m.len() == 0 {
                    return Err(Error::Config(format!(
                        "boot file {} is not a non-empty file",
                        p.display()
                    )));
                }
            }
            lines.push(format!(
                "direct kernel boot: {}{}",
                kernel.display(),
                initrd
                    .as_ref()
                    .map(|i| format!(" + {}", i.display()))
                    .unwrap_or_default()
            ));
        }
        Boot::Disk { base_volume } => {
            let v = StorageVol::lookup_by_name(&pool, base_volume).step(format!(
                "look up base image {base_volume} in pool {}",
                cfg.pool
            ))?;
            let path = v.get_path().step(format!("path of {base_volume}"))?;
            lines.push(format!("base image {base_volume} at {path}"));
        }
    }
    std::fs::create_dir_all(&cfg.console_dir).step(format!(
        "console log directory {}",
        cfg.console_dir.display()
    ))?;
    lines.push(format!("console logs in {}", cfg.console_dir.display()));
    Ok(lines)
}

/// Starts the KVM probe domain `name` (see [`xml::probe_xml`]).
pub fn start_probe(cfg: &LibvirtConfig, name: &str, log: &std::path::Path) -> Result<(), Error> {
    let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &cfg.boot
    else {
        return Err(Error::Config(
            "the KVM probe needs direct kernel boot".into(),
        ));
    };
    std::fs::create_dir_all(&cfg.console_dir).step(format!(
        "console log directory {}",
        cfg.console_dir.display()
    ))?;
    let s = Session::open(&cfg.uri)?;
    Domain::create_xml(
        s.conn(),
        &xml::probe_xml(name, kernel, initrd.as_deref(), cmdline, log),
        0,
    )
    .step(format!("start the KVM probe domain {name}"))?;
    Ok(())
}

/// Destroys the (transient) probe domain if it still runs.
pub fn stop_probe(cfg: &LibvirtConfig, name: &str) -> Result<(), Error> {
    let s = Session::open(&cfg.uri)?;
    match Domain::lookup_by_name(s.conn(), name).step(format!("look up {name}")) {
        Ok(d) => {
            if d.is_active().unwrap_or(false) {
                if let Err(e) = d.destroy().step(format!("destroy {name}")) {
                    if d.is_active().unwrap_or(false) {
                        return Err(e);
                    }
                }
            }
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_format_reads_the_target_format() {
        let x =
            "<volume><name>b</name><source/><target><path>/p/b</path><format type='raw'/></target>\
                 <backingStore><format type='qcow2'/></backingStore></volume>";
        assert_eq!(volume_format(x).as_deref(), Some("raw"));
        assert_eq!(volume_format("<volume/>"), None);
    }
}
