//! The pod network spec: what the worker end learns from the pod's network
//! namespace and hands to the VM end through user data. Plain data, so the
//! adaptor, the forwarder and the user-data document share one definition.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Default UDP port of the tunnel (IANA VXLAN).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default first VXLAN network identifier; a node adds its per-sandbox index.
pub const DEFAULT_VNI_BASE: u32 = 555_000;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Bytes VXLAN adds on an IPv4 underlay (outer IP 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Same on an IPv6 underlay (outer IP header is 40 bytes).
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// An address with its prefix length, e.g. `10.244.1.7/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }

    /// Whether the prefix length fits the address family.
    pub fn is_valid(&self) -> bool {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        self.prefix_len <= max
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One route of the pod. `dst: None` is a default route of the gateway's
/// family; `gateway: None` is an on-link route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoute {
    pub dst: Option<IpNet>,
    pub gateway: Option<IpAddr>,
}

/// The pod's interface as the CNI configured it on the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInterface {
    /// Interface name in the pod netns (`eth0`); the VM end uses it too.
    pub name: String,
    /// MAC the CNI gave the pod; kept in the VM (OVS/OVN CNIs need it).
    pub mac: [u8; 6],
    /// The pod interface's MTU: the MTU the pod sees inside the VM.
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<PodRoute>,
}

/// Everything the VM end needs to rebuild the pod's network: the pod's
/// interface and the tunnel parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub interface: PodInterface,
    /// VXLAN network identifier of this sandbox's tunnel.
    pub vni: u32,
    /// UDP destination port of the tunnel on both ends.
    pub port: u16,
    /// The worker node's underlay address: the VM end's VXLAN remote.
    pub worker_ip: IpAddr,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl PodNetwork {
    /// Checks the values a hand-edited or corrupted document could get
    /// wrong; names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vni == 0 || self.vni > MAX_VNI {
            return Err(format!("vni {} is outside 1..={MAX_VNI}", self.vni));
        }
        if self.port == 0 {
            return Err("port 0 is not a UDP port".into());
        }
        let i = &self.interface;
        if i.name.is_empty() || i.name.len() > 15 || i.name.contains('/') {
            return Err(format!(
                "interface name {:?} is not a Linux interface name",
                i.name
            ));
        }
        if !(68..=65_535).contains(&i.mtu) {
            return Err(format!("mtu {} is outside 68..=65535", i.mtu));
        }
        if i.mac[0] & 1 == 1 || i.mac == [0; 6] {
            return Err(format!(
                "mac {} is not a unicast address",
                format_mac(&i.mac)
            ));
        }
        if i.addresses.is_empty() {
            return Err("the pod interface has no IP address".into());
        }
        if let Some(bad) = i.addresses.iter().find(|a| !a.is_valid()) {
            return Err(format!("address {bad} has an invalid prefix length"));
        }
        for r in &i.routes {
            if let Some(d) = r.dst {
                if !d.is_valid() {
                    return Err(format!(
                        "route destination {d} has an invalid prefix length"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PodNetwork {
        PodNetwork {
            interface: PodInterface {
                name: "eth0".into(),
                mac: [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07],
                mtu: 1450,
                addresses: vec![IpNet::new("10.244.1.7".parse().unwrap(), 24)],
                routes: vec![PodRoute {
                    dst: None,
                    gateway: Some("10.244.1.1".parse().unwrap()),
                }],
            },
            vni: DEFAULT_VNI_BASE + 3,
            port: DEFAULT_VXLAN_PORT,
            worker_ip: "192.168.122.1".parse().unwrap(),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let n = sample();
        let s = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<PodNetwork>(&s).unwrap(), n);
        assert!(n.validate().is_ok());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut n = sample();
        n.vni = MAX_VNI + 1;
        assert!(n.validate().unwrap_err().contains("vni"));
        let mut n = sample();
        n.interface.mac[0] = 0x01;
        assert!(n.validate().unwrap_err().contains("unicast"));
        let mut n = sample();
        n.interface.addresses.clear();
        assert!(n.validate().unwrap_err().contains("no IP address"));
        let mut n = sample();
        n.interface.addresses[0].prefix_len = 33;
        assert!(n.validate().unwrap_err().contains("prefix length"));
        let mut n = sample();
        n.interface.mtu = 10;
        assert!(n.validate().unwrap_err().contains("mtu"));
    }

    #[test]
    fn formats_mac() {
        assert_eq!(
            format_mac(&[0xa, 0xb, 0xc, 0xd, 0xe, 0xff]),
            "0a:0b:0c:0d:0e:ff"
        );
    }
}
