//! Worker end, first step: read what the CNI configured in the pod's
//! network namespace — the interface carrying the default route, its MAC,
//! MTU, addresses and routes — so the VM end can rebuild it.

use crate::error::PodnetError;
use crate::nl::{err, Netns};
use crate::spec::{IpNet, PodInterface, PodRoute};
use crate::worker::WORKER_DEVICE;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion};
use std::net::IpAddr;

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn oif_of(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Main-table unicast routes of both families, minus the ones the kernel
/// makes by itself for an address (those come back when the VM end adds
/// the address).
async fn routes(h: &Handle) -> Result<Vec<RouteMessage>, PodnetError> {
    let mut out = Vec::new();
    for v in [IpVersion::V4, IpVersion::V6] {
        let fam = format!("{v:?}");
        let msg = match v {
            IpVersion::V4 => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let mut s = h.route().get(msg).execute();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(err(format!("list {fam} routes")))?
        {
            if table_of(&r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && r.header.kind == RouteType::Unicast
                && r.header.protocol != RouteProtocol::Kernel
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Reads the pod interface of the namespace `pod`. The interface is the
/// one carrying a default route; a namespace with no default route, no
/// such interface or no usable address is an error that says so.
pub async fn inspect(pod: &Netns) -> Result<PodInterface, PodnetError> {
    let h = pod.connect()?;
    let ns = pod.describe();
    let all_routes = routes(&h).await?;
    let default = all_routes
        .iter()
        .find(|r| r.header.destination_prefix_length == 0 && oif_of(r).is_some())
        .ok_or_else(|| {
            PodnetError::Unsupported(format!(
                "{ns} has no default route: cannot tell which interface is the pod's"
            ))
        })?;
    let index = oif_of(default).unwrap_or_default();

    let mut links = h.link().get().match_index(index).execute();
    let link = links
        .try_next()
        .await
        .map_err(err(format!("read link {index} in {ns}")))?
        .ok_or_else(|| PodnetError::Unsupported(format!("{ns}: link {index} vanished")))?;
    let name = link_name(&link).unwrap_or_default().to_string();
    if link.header.flags.contains(LinkFlags::Loopback) || name == WORKER_DEVICE {
        return Err(PodnetError::Unsupported(format!(
            "{ns}: the default route points at {name}, not at a pod interface"
        )));
    }
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(m);
                Some(mac)
            }
            _ => None,
        })
        .ok_or_else(|| {
            PodnetError::Unsupported(format!("{ns}: interface {name} has no Ethernet address"))
        })?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);

    let mut addresses = Vec::new();
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(err(format!("list addresses of {name} in {ns}")))?
    {
        // Link-local addresses belong to the link, not to the pod: the VM
        // end's interface makes its own.
        if a.header.scope != AddressScope::Universe {
            continue;
        }
        let ip = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            addresses.push(IpNet::new(ip, a.header.prefix_len));
        }
    }
    if addresses.is_empty() {
        return Err(PodnetError::Unsupported(format!(
            "{ns}: interface {name} has no IPv4 or IPv6 address"
        )));
    }

    let routes = all_routes
        .iter()
        .filter(|r| oif_of(r) == Some(index))
        .map(|r| {
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => ip_of(d),
                _ => None,
            });
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => ip_of(g),
                _ => None,
            });
            // A default route is written out as 0.0.0.0/0 or ::/0 so its
            // family is known even without a gateway.
            let unspecified = if r.header.address_family == AddressFamily::Inet6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let dst = IpNet::new(
                dst.unwrap_or(unspecified),
                r.header.destination_prefix_length,
            );
            PodRoute {
                dst: Some(dst),
                gateway,
            }
        })
        .collect();
    Ok(PodInterface {
        name,
        mac,
        mtu,
        addresses,
        routes,
    })
}
