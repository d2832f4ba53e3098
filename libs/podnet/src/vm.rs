//! VM end of the tunnel, run by the forwarder at start: a network
//! namespace for the pod (`/run/netns/podns` in a pod VM) holding a VXLAN
//! device toward the worker that carries the pod's name, MAC, MTU,
//! addresses and routes, and loopback up. The kata-agent's containers
//! join that namespace, so they see the network the CNI gave the pod.

use crate::error::PodnetError;
use crate::netns;
use crate::nl::{self, err, is_errno, Netns};
use crate::spec::{IpNet, PodNetwork, PodRoute};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// The pod namespace's name in a pod VM.
pub const POD_NETNS: &str = "podns";

/// Builds the pod namespace `pod_ns` and its tunnel device, whose UDP
/// socket lives in `underlay` (the VM's own namespace). An existing
/// namespace of that name is reused after removing a stale device.
pub async fn setup(spec: &PodNetwork, underlay: &Netns, pod_ns: &str) -> Result<(), PodnetError> {
    spec.validate().map_err(PodnetError::Unsupported)?;
    if netns::identity(pod_ns).is_none() {
        let name = pod_ns.to_string();
        tokio::task::spawn_blocking(move || netns::create(&name))
            .await
            .map_err(|e| PodnetError::netns(pod_ns, e))?
            .map_err(|e| {
                PodnetError::netns(netns::path(pod_ns).display(), format!("create: {e}"))
            })?;
    }
    let pod = Netns::named(pod_ns);
    let pod_file = pod.open()?;
    let uh = underlay.connect()?;
    let ph = pod.connect()?;
    let iface = &spec.interface;
    nl::delete_link(&ph, &iface.name).await?;

    // Made under a temporary name, renamed once inside the pod namespace:
    // kernels before 6.14 look a new link's name up in the namespace the
    // request comes from, so creating `eth0` from a VM whose own NIC is
    // `eth0` fails with EEXIST even though the link lands elsewhere.
    let tmp_name = format!("ppvx{}", std::process::id() % 100_000_000);
    nl::delete_link(&ph, &tmp_name).await?;
    let vx = LinkVxlan::new(&tmp_name, spec.vni)
        .port(spec.port)
        .learning(false);
    let vx = match spec.worker_ip {
        IpAddr::V4(a) => vx.remote(a),
        IpAddr::V6(a) => vx.remote6(a),
    };
    let msg = vx
        .mtu(iface.mtu)
        .address(iface.mac.to_vec())
        .setns_by_fd(pod_file.as_raw_fd())
        .build();
    uh.link().add(msg).execute().await.map_err(err(format!(
        "create VXLAN device {} (id {}, port {}) toward {} in {}",
        iface.name,
        spec.vni,
        spec.port,
        spec.worker_ip,
        pod.describe()
    )))?;
    let tmp_index = nl::index_of(&ph, &tmp_name, &pod).await?;
    ph.link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(tmp_index)
                .name(iface.name.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(err(format!(
            "rename VXLAN device {tmp_name} to {} in {}",
            iface.name,
            pod.describe()
        )))?;

    let lo = nl::index_of(&ph, "lo", &pod).await?;
    nl::set_up(&ph, lo, "lo").await?;
    let index = nl::index_of(&ph, &iface.name, &pod).await?;
    for a in &iface.addresses {
        add_address(&ph, index, a).await?;
    }
    nl::set_up(&ph, index, &iface.name).await?;
    // On-link routes first: a gateway may only be reachable through one
    // (e.g. a /32 pod address with a link-scope route to its gateway).
    let (onlink, via): (Vec<&PodRoute>, Vec<&PodRoute>) =
        iface.routes.iter().partition(|r| r.gateway.is_none());
    for r in onlink.into_iter().chain(via) {
        add_route(&ph, index, r).await?;
    }
    Ok(())
}

async fn add_address(h: &Handle, index: u32, a: &IpNet) -> Result<(), PodnetError> {
    let mut req = h.address().add(index, a.addr, a.prefix_len);
    if a.addr.is_ipv6() {
        // The address moved here from the worker, where it already passed
        // duplicate detection; waiting again would delay the pod ~2 s.
        let m = req.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(e) => Err(err(format!("add address {a}"))(e)),
    }
}

async fn add_route(h: &Handle, index: u32, r: &PodRoute) -> Result<(), PodnetError> {
    let family_of = |ip: &IpAddr| ip.is_ipv6();
    let v6 = match (r.dst, r.gateway) {
        (Some(d), _) => family_of(&d.addr),
        (None, Some(g)) => family_of(&g),
        (None, None) => {
            return Err(PodnetError::Unsupported(
                "a route with neither destination nor gateway".into(),
            ))
        }
    };
    let what = format!(
        "add route {} via {}",
        r.dst.map_or("default".into(), |d| d.to_string()),
        r.gateway.map_or("link".into(), |g| g.to_string())
    );
    let msg = match (v6, r.dst, r.gateway) {
        (false, dst, gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new().output_interface(index);
            if let Some(IpNet {
                addr: IpAddr::V4(d),
                prefix_len,
            }) = dst
            {
                b = b.destination_prefix(d, prefix_len);
            }
            match gw {
                Some(IpAddr::V4(g)) => b.gateway(g).build(),
                Some(IpAddr::V6(g)) => b.via(g).build(),
                None => b
                    .scope(netlink_packet_route::route::RouteScope::Link)
                    .build(),
            }
        }
        (true, dst, gw) => {
            let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new().output_interface(index);
            if let Some(IpNet {
                addr: IpAddr::V6(d),
                prefix_len,
            }) = dst
            {
                b = b.destination_prefix(d, prefix_len);
            }
            match gw {
                Some(IpAddr::V6(g)) => b.gateway(g).build(),
                Some(IpAddr::V4(_)) => {
                    return Err(PodnetError::Unsupported(format!(
                        "{what}: an IPv6 route through an IPv4 gateway"
                    )))
                }
                None => b.build(),
            }
        }
    };
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(e) => Err(err(what)(e)),
    }
}

/// Removes the pod namespace (and with it the tunnel device). Idempotent.
pub async fn teardown(pod_ns: &str) -> Result<(), PodnetError> {
    let name = pod_ns.to_string();
    tokio::task::spawn_blocking(move || netns::remove(&name))
        .await
        .map_err(|e| PodnetError::netns(pod_ns, e))?
        .map_err(|e| PodnetError::netns(netns::path(pod_ns).display(), format!("remove: {e}")))
}
