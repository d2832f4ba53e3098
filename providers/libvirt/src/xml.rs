//! The libvirt XML documents the provider writes (domain, volumes) and the
//! few facts it reads back from a domain (owner tags in its `<metadata>`,
//! the MAC of its interface). Pure functions: unit-tested without libvirt.

use crate::config::{Boot, DomainType};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Namespace URI of our element in a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://peerpods.dev/libvirt/instance/1";
/// The namespace prefix libvirt stores our element under.
pub const METADATA_PREFIX: &str = "peerpod";

/// Escapes text for an XML element body or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 forbids most control characters outright.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// Everything one domain definition needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub domain_type: DomainType,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Machine type (`q35`, `pc`…).
    pub machine: String,
    pub boot: Boot,
    /// The per-instance qcow2 root volume (disk boot), by path.
    pub root_disk: Option<PathBuf>,
    /// The config-drive ISO volume, by path.
    pub config_drive: PathBuf,
    pub network: String,
    pub mac: String,
    /// The serial console log file.
    pub console_log: PathBuf,
    pub tags: BTreeMap<String, String>,
}

/// The `<peerpod:instance>` metadata element holding the owner tags.
pub fn metadata_element(tags: &BTreeMap<String, String>) -> String {
    let mut s = format!("<{METADATA_PREFIX}:instance xmlns:{METADATA_PREFIX}=\"{METADATA_NS}\">");
    for (k, v) in tags {
        s.push_str(&format!(
            "<{METADATA_PREFIX}:tag key=\"{}\">{}</{METADATA_PREFIX}:tag>",
            escape(k),
            escape(v)
        ));
    }
    s.push_str(&format!("</{METADATA_PREFIX}:instance>"));
    s
}

/// The domain XML.
pub fn domain_xml(d: &DomainSpec) -> String {
    let path = |p: &PathBuf| escape(&p.to_string_lossy());
    let mut os = format!(
        "<type arch='x86_64' machine='{}'>hvm</type>",
        escape(&d.machine)
    );
    match &d.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            os.push_str(&format!("<kernel>{}</kernel>", path(kernel)));
            if let Some(i) = initrd {
                os.push_str(&format!("<initrd>{}</initrd>", path(i)));
            }
            os.push_str(&format!("<cmdline>{}</cmdline>", escape(cmdline)));
        }
        Boot::Disk { .. } => os.push_str("<boot dev='hd'/>"),
    }
    let cpu = match d.domain_type {
        // The guest sees the host CPU under KVM; TCG's default model is
        // the fastest to emulate.
        DomainType::Kvm => "<cpu mode='host-passthrough'/>",
        DomainType::Qemu => "",
    };
    let mut disks = String::new();
    if let Some(root) = &d.root_disk {
        disks.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            path(root)
        ));
    }
    // The config drive is a read-only virtio disk carrying an ISO 9660 file
    // system labelled cidata: cloud-init's NoCloud finds it by label on any
    // block device, and virtio-blk needs one small driver in the minimal
    // image where a CD-ROM would need SATA/SCSI plus sr_mod and cdrom.
    disks.push_str(&format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vdb' bus='virtio'/><readonly/></disk>",
        path(&d.config_drive)
    ));
    format!(
        "<domain type='{dtype}'>\
<name>{name}</name>\
<metadata>{meta}</metadata>\
<memory unit='MiB'>{mem}</memory>\
<vcpu>{vcpus}</vcpu>\
<os>{os}</os>\
<features><acpi/></features>{cpu}\
<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
<devices>{disks}\
<interface type='network'><source network='{net}'/><mac address='{mac}'/><model type='virtio'/></interface>\
<serial type='file'><source path='{console}' append='off'/><target port='0'/></serial>\
<console type='file'><source path='{console}' append='off'/><target type='serial' port='0'/></console>\
<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
<controller type='usb' model='none'/>\
<memballoon model='none'/>\
</devices></domain>",
        dtype = d.domain_type.as_str(),
        name = escape(&d.name),
        meta = metadata_element(&d.tags),
        mem = d.memory_mib,
        vcpus = d.vcpus,
        net = escape(&d.network),
        mac = escape(&d.mac),
        console = path(&d.console_log),
    )
}

/// The KVM probe: a transient KVM domain booting the kernel and initramfs
/// with `peerpod.probe=1` (the minimal image's init then reports
/// "init started" on the serial console and powers off), no disk, no NIC.
pub fn probe_xml(
    name: &str,
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    cmdline: &str,
    console_log: &std::path::Path,
) -> String {
    let path = |p: &std::path::Path| escape(&p.to_string_lossy());
    format!(
        "<domain type='kvm'><name>{}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{}</kernel>{}\
         <cmdline>{} peerpod.probe=1</cmdline></os><features><acpi/></features>\
         <cpu mode='host-passthrough'/><on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>\
         <devices><serial type='file'><source path='{}' append='off'/><target port='0'/></serial>\
         <controller type='usb' model='none'/><memballoon model='none'/></devices></domain>",
        escape(name),
        path(kernel),
        initrd
            .map(|i| format!("<initrd>{}</initrd>", path(i)))
            .unwrap_or_default(),
        escape(cmdline),
        path(console_log)
    )
}

/// A raw volume of `bytes` (the config-drive ISO, uploaded after creation),
/// readable by its owner only: it carries the VM's TLS key.
pub fn raw_volume_xml(name: &str, bytes: u64) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{bytes}</capacity>\
         <allocation unit='bytes'>0</allocation>\
         <target><format type='raw'/><permissions><mode>0600</mode></permissions></target></volume>",
        escape(name)
    )
}

/// A qcow2 volume backed by the base image at `backing` (format `fmt`), of
/// the base's virtual size.
pub fn overlay_volume_xml(name: &str, capacity: u64, backing: &str, fmt: &str) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
         <target><format type='qcow2'/></target>\
         <backingStore><path>{}</path><format type='{}'/></backingStore></volume>",
        escape(name),
        escape(backing),
        escape(fmt)
    )
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ParseError {
    pub what: &'static str,
    pub why: String,
}

fn parse_doc<'a>(text: &'a str, what: &'static str) -> Result<roxmltree::Document<'a>, ParseError> {
    roxmltree::Document::parse(text).map_err(|e| ParseError {
        what,
        why: e.to_string(),
    })
}

/// Whether `n` is our element `local`: in our namespace, or in none —
/// `virDomainGetMetadata`, asked for our namespace, hands the element back
/// with the namespace stripped.
fn ours(n: &roxmltree::Node, local: &str) -> bool {
    n.is_element()
        && n.tag_name().name() == local
        && matches!(n.tag_name().namespace(), None | Some(METADATA_NS))
}

/// The owner tags of a `<peerpod:instance>` element, as
/// `virDomainGetMetadata` returns it (or embedded anywhere in a domain
/// XML). `None` when the document holds no element of ours: the domain is
/// not ours.
pub fn parse_tags(xml: &str) -> Result<Option<BTreeMap<String, String>>, ParseError> {
    let doc = parse_doc(xml, "instance metadata")?;
    let Some(inst) = doc.descendants().find(|n| ours(n, "instance")) else {
        return Ok(None);
    };
    let mut tags = BTreeMap::new();
    for t in inst.children().filter(|n| ours(n, "tag")) {
        let key = t.attribute("key").ok_or_else(|| ParseError {
            what: "instance metadata",
            why: "a tag without a key".into(),
        })?;
        tags.insert(key.to_string(), t.text().unwrap_or_default().to_string());
    }
    Ok(Some(tags))
}

/// The MAC of the domain's first network interface.
pub fn parse_mac(domain_xml: &str) -> Result<Option<String>, ParseError> {
    let doc = parse_doc(domain_xml, "domain XML")?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("interface"))
        .flat_map(|i| i.children())
        .find(|n| n.has_tag_name("mac"))
        .and_then(|m| m.attribute("address"))
        .map(str::to_ascii_lowercase))
}

/// A locally administered unicast MAC in QEMU's 52:54:00 prefix.
pub fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(boot: Boot) -> DomainSpec {
        let mut tags = BTreeMap::new();
        tags.insert("peerpod-node".to_string(), "node<1>".to_string());
        tags.insert("peerpod-sandbox".to_string(), "abc&def".to_string());
        DomainSpec {
            name: "podvm-web-01234567".into(),
            domain_type: DomainType::Qemu,
            vcpus: 2,
            memory_mib: 768,
            machine: "q35".into(),
            boot,
            root_disk: None,
            config_drive: "/pool/podvm-web-01234567-cidata.iso".into(),
            network: "default".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            console_log: "/var/log/pp/podvm-web-01234567.log".into(),
            tags,
        }
    }

    fn kernel() -> Boot {
        Boot::Kernel {
            kernel: "/img/vmlinuz".into(),
            initrd: Some("/img/initrd.img".into()),
            cmdline: "console=ttyS0 quiet".into(),
        }
    }

    #[test]
    fn domain_xml_is_well_formed_and_carries_the_request() {
        let xml = domain_xml(&spec(kernel()));
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.attribute("type"), Some("qemu"));
        let text = |tag: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(tag))
                .and_then(|n| n.text())
                .map(str::to_string)
        };
        assert_eq!(text("name").as_deref(), Some("podvm-web-01234567"));
        assert_eq!(text("vcpu").as_deref(), Some("2"));
        assert_eq!(text("memory").as_deref(), Some("768"));
        assert_eq!(text("kernel").as_deref(), Some("/img/vmlinuz"));
        assert_eq!(text("initrd").as_deref(), Some("/img/initrd.img"));
        assert_eq!(text("cmdline").as_deref(), Some("console=ttyS0 quiet"));
        let mem = doc
            .descendants()
            .find(|n| n.has_tag_name("memory"))
            .unwrap();
        assert_eq!(mem.attribute("unit"), Some("MiB"));
        let sources: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("source"))
            .filter_map(|n| n.attribute("file").or(n.attribute("network")))
            .collect();
        assert_eq!(sources, ["/pool/podvm-web-01234567-cidata.iso", "default"]);
        assert!(doc.descendants().any(|n| n.has_tag_name("readonly")));
        assert_eq!(
            parse_mac(&xml).unwrap().as_deref(),
            Some("52:54:00:aa:bb:cc")
        );
        // No CPU passthrough under TCG, no boot-from-disk with a kernel.
        assert!(!xml.contains("host-passthrough"));
        assert!(!xml.contains("<boot dev"));
    }

    #[test]
    fn disk_boot_has_the_overlay_first_and_kvm_passes_the_cpu() {
        let mut s = spec(Boot::Disk {
            base_volume: "podvm-base.qcow2".into(),
        });
        s.root_disk = Some(Path::new("/pool/podvm-web-01234567-root.qcow2").into());
        s.domain_type = DomainType::Kvm;
        let xml = domain_xml(&s);
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        assert_eq!(doc.root_element().attribute("type"), Some("kvm"));
        let targets: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("target"))
            .filter_map(|n| n.attribute("dev"))
            .collect();
        assert_eq!(targets, ["vda", "vdb"]);
        assert!(xml.contains("<boot dev='hd'/>"));
        assert!(xml.contains("host-passthrough"));
        assert!(!xml.contains("<kernel>"));
    }

    #[test]
    fn tags_survive_a_round_trip_through_the_domain_xml() {
        let s = spec(kernel());
        let xml = domain_xml(&s);
        assert_eq!(parse_tags(&xml).unwrap(), Some(s.tags.clone()));
        // As virDomainGetMetadata hands the element back (libvirt may pick
        // another prefix; the namespace is what counts).
        let back = format!(
            "<pp:instance xmlns:pp=\"{METADATA_NS}\"><pp:tag key=\"peerpod-node\">n1</pp:tag>\
             <pp:tag key=\"empty\"/></pp:instance>"
        );
        let tags = parse_tags(&back).unwrap().unwrap();
        assert_eq!(tags.get("peerpod-node").map(String::as_str), Some("n1"));
        assert_eq!(tags.get("empty").map(String::as_str), Some(""));
        // What libvirt 11 actually returns: the namespace stripped.
        let stripped = "<instance>\n  <tag key=\"peerpod-node\">n1</tag>\n</instance>\n";
        let tags = parse_tags(stripped).unwrap().unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(tags.get("peerpod-node").map(String::as_str), Some("n1"));
    }

    #[test]
    fn foreign_metadata_is_not_ours_and_garbage_is_an_error() {
        let other = "<domain><metadata><x:i xmlns:x=\"urn:other\"><x:tag key=\"peerpod-node\">n</x:tag></x:i></metadata></domain>";
        assert_eq!(parse_tags(other).unwrap(), None);
        assert!(parse_tags("<unclosed").is_err());
        let keyless =
            format!("<p:instance xmlns:p=\"{METADATA_NS}\"><p:tag>v</p:tag></p:instance>");
        assert!(parse_tags(&keyless).is_err());
    }

    #[test]
    fn hostile_names_are_escaped() {
        let mut s = spec(kernel());
        s.network = "net'/><evil/>".into();
        s.tags.insert("k\"".into(), "</peerpod:instance>".into());
        let xml = domain_xml(&s);
        let doc = roxmltree::Document::parse(&xml).expect("still well-formed");
        assert!(!doc.descendants().any(|n| n.has_tag_name("evil")));
        assert_eq!(parse_tags(&xml).unwrap(), Some(s.tags));
    }

    #[test]
    fn volume_documents_are_well_formed() {
        let v = raw_volume_xml("a-cidata.iso", 374784);
        let doc = roxmltree::Document::parse(&v).unwrap();
        assert!(doc
            .descendants()
            .any(|n| n.has_tag_name("mode") && n.text() == Some("0600")));
        let o = overlay_volume_xml("a-root.qcow2", 2 << 30, "/pool/base.qcow2", "qcow2");
        let doc = roxmltree::Document::parse(&o).unwrap();
        assert!(doc
            .descendants()
            .any(|n| n.has_tag_name("path") && n.text() == Some("/pool/base.qcow2")));
    }

    #[test]
    fn probe_is_a_diskless_kvm_domain_with_the_probe_flag() {
        let x = probe_xml(
            "peerpod-kvm-probe-1",
            Path::new("/img/vmlinuz"),
            Some(Path::new("/img/initrd.img")),
            "console=ttyS0",
            Path::new("/log/p.log"),
        );
        let doc = roxmltree::Document::parse(&x).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("kvm"));
        assert!(x.contains("<cmdline>console=ttyS0 peerpod.probe=1</cmdline>"));
        assert!(!doc
            .descendants()
            .any(|n| n.has_tag_name("disk") || n.has_tag_name("interface")));
    }

    #[test]
    fn macs_are_qemu_local_unicast() {
        let m = random_mac();
        assert!(m.starts_with("52:54:00:"), "{m}");
        assert_eq!(m.len(), 17);
    }
}

/// A network's IPv4 subnet and DHCP set-up, as its XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkIpv4 {
    /// The host's address on the network: the VMs' gateway.
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
    /// The DHCP range, inclusive.
    pub range: (std::net::Ipv4Addr, std::net::Ipv4Addr),
    /// Reserved addresses: (MAC, name, IP).
    pub hosts: Vec<DhcpHost>,
}

/// One `<host>` entry of a network's DHCP section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ip: std::net::Ipv4Addr,
}

/// The network's first IPv4 `<ip>` with a DHCP range, if any.
pub fn parse_network(net_xml: &str) -> Result<Option<NetworkIpv4>, ParseError> {
    let doc = parse_doc(net_xml, "network XML")?;
    let bad = |why: String| ParseError {
        what: "network XML",
        why,
    };
    for ip in doc.descendants().filter(|n| n.has_tag_name("ip")) {
        if ip.attribute("family").is_some_and(|f| f != "ipv4") {
            continue;
        }
        let Some(dhcp) = ip.children().find(|n| n.has_tag_name("dhcp")) else {
            continue;
        };
        let Some(range) = dhcp.children().find(|n| n.has_tag_name("range")) else {
            continue;
        };
        let addr = |n: &roxmltree::Node, a: &str| -> Result<std::net::Ipv4Addr, ParseError> {
            n.attribute(a)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("<{}> has no IPv4 {a}", n.tag_name().name())))
        };
        let gateway = addr(&ip, "address")?;
        let prefix = match (ip.attribute("prefix"), ip.attribute("netmask")) {
            (Some(p), _) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| bad(format!("prefix {p:?}")))?,
            (None, Some(m)) => {
                let m: std::net::Ipv4Addr = m.parse().map_err(|_| bad(format!("netmask {m:?}")))?;
                u32::from(m).count_ones() as u8
            }
            (None, None) => 24,
        };
        let mut hosts = Vec::new();
        for h in dhcp.children().filter(|n| n.has_tag_name("host")) {
            if let Some(ip) = h.attribute("ip").and_then(|v| v.parse().ok()) {
                hosts.push(DhcpHost {
                    mac: h.attribute("mac").map(str::to_ascii_lowercase),
                    name: h.attribute("name").map(str::to_string),
                    ip,
                });
            }
        }
        return Ok(Some(NetworkIpv4 {
            gateway,
            prefix,
            range: (addr(&range, "start")?, addr(&range, "end")?),
            hosts,
        }));
    }
    Ok(None)
}

/// The `<host>` element reserving `ip` for `mac` under `name`.
pub fn dhcp_host_xml(mac: &str, name: &str, ip: std::net::Ipv4Addr) -> String {
    format!(
        "<host mac='{}' name='{}' ip='{ip}'/>",
        escape(mac),
        escape(name)
    )
}

/// A random address of the DHCP range that is neither reserved nor in
/// `taken` (nor the gateway).
pub fn pick_address(net: &NetworkIpv4, taken: &[std::net::Ipv4Addr]) -> Option<std::net::Ipv4Addr> {
    let (lo, hi) = (u32::from(net.range.0), u32::from(net.range.1));
    if hi < lo {
        return None;
    }
    let free: Vec<u32> = (lo..=hi)
        .filter(|a| {
            let ip = std::net::Ipv4Addr::from(*a);
            ip != net.gateway && !taken.contains(&ip) && !net.hosts.iter().any(|h| h.ip == ip)
        })
        .collect();
    if free.is_empty() {
        return None;
    }
    Some(std::net::Ipv4Addr::from(
        free[rand::random_range(0..free.len())],
    ))
}

#[cfg(test)]
mod network_tests {
    use super::*;

    const NET: &str = "<network><name>default</name><bridge name='virbr0'/>\
        <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
        <range start='192.168.122.2' end='192.168.122.254'/>\
        <host mac='52:54:00:AA:BB:CC' name='podvm-a-1' ip='192.168.122.7'/>\
        </dhcp></ip><ip family='ipv6' address='fd00::1' prefix='64'/></network>";

    #[test]
    fn network_subnet_range_and_reservations_are_read() {
        let n = parse_network(NET).unwrap().unwrap();
        assert_eq!(n.gateway, std::net::Ipv4Addr::new(192, 168, 122, 1));
        assert_eq!(n.prefix, 24);
        assert_eq!(n.range.1, std::net::Ipv4Addr::new(192, 168, 122, 254));
        assert_eq!(
            n.hosts,
            vec![DhcpHost {
                mac: Some("52:54:00:aa:bb:cc".into()),
                name: Some("podvm-a-1".into()),
                ip: std::net::Ipv4Addr::new(192, 168, 122, 7),
            }]
        );
        assert_eq!(
            parse_network("<network><ip address='10.0.0.1' prefix='16'/></network>").unwrap(),
            None
        );
    }

    #[test]
    fn picked_addresses_avoid_reserved_taken_and_gateway() {
        let mut n = parse_network(NET).unwrap().unwrap();
        n.range = (
            std::net::Ipv4Addr::new(192, 168, 122, 1),
            std::net::Ipv4Addr::new(192, 168, 122, 9),
        );
        let taken: Vec<_> = (2..=8)
            .filter(|i| *i != 7)
            .map(|i| std::net::Ipv4Addr::new(192, 168, 122, i))
            .collect();
        for _ in 0..20 {
            assert_eq!(
                pick_address(&n, &taken),
                Some(std::net::Ipv4Addr::new(192, 168, 122, 9))
            );
        }
        let mut all = taken.clone();
        all.push(std::net::Ipv4Addr::new(192, 168, 122, 9));
        assert_eq!(pick_address(&n, &all), None);
        let h = dhcp_host_xml(
            "52:54:00:01:02:03",
            "podvm-x",
            std::net::Ipv4Addr::new(10, 0, 0, 5),
        );
        assert!(roxmltree::Document::parse(&h).is_ok());
    }
}
