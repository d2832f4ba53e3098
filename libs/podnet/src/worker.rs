//! Worker end of the tunnel. A VXLAN device is created in the node's
//! namespace (its UDP socket stays there, on the underlay) but placed in
//! the pod's namespace, then joined to the pod interface both ways with tc
//! ingress redirects: every frame the CNI delivers to the pod interface
//! leaves through the tunnel to the VM, and every frame from the VM leaves
//! through the pod interface to the CNI. The pod's own stack on the worker
//! never sees its traffic again.

use crate::error::PodnetError;
use crate::nl::{self, err, is_errno, Netns};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Name of the tunnel device inside the pod namespace on the worker.
pub const WORKER_DEVICE: &str = "ppvxlan0";
/// Priority of our two tc filters, so teardown removes exactly ours.
pub const FILTER_PRIORITY: u16 = 0x5050;

/// The worker end's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTunnel {
    pub vni: u32,
    pub port: u16,
    /// The VM's underlay address: the tunnel's remote.
    pub vm_ip: IpAddr,
    /// The pod interface's MTU; the tunnel device carries frames this big.
    pub mtu: u32,
}

/// What setup learned about the underlay, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupReport {
    /// MTU of the node's link toward the VM, if the route lookup told.
    pub underlay_mtu: Option<u32>,
    /// Whether pod-sized frames fit the underlay once encapsulated.
    pub fits: bool,
}

fn eth_p_all() -> u16 {
    // tc carries the protocol in network byte order.
    (libc::ETH_P_ALL as u16).to_be()
}

/// Sets the tunnel up: VXLAN device toward `t.vm_ip` created in `host`
/// and placed in `pod`, redirects between it and the pod interface
/// `iface`. Leftovers of an earlier setup in `pod` are removed first; on
/// failure, what this call made is removed again.
pub async fn setup(
    host: &Netns,
    pod: &Netns,
    iface: &str,
    t: &WorkerTunnel,
) -> Result<SetupReport, PodnetError> {
    let pod_file = pod.open()?;
    let hh = host.connect()?;
    let ph = pod.connect()?;
    remove_ours(&ph, iface).await?;
    let made = build(&hh, &ph, pod_file.as_raw_fd(), pod, iface, t).await;
    if made.is_err() {
        if let Err(e) = remove_ours(&ph, iface).await {
            tracing::warn!(error = %e, "cleaning up a failed tunnel setup");
        }
    }
    made
}

async fn build(
    hh: &Handle,
    ph: &Handle,
    pod_fd: i32,
    pod: &Netns,
    iface: &str,
    t: &WorkerTunnel,
) -> Result<SetupReport, PodnetError> {
    let vx = LinkVxlan::new(WORKER_DEVICE, t.vni)
        .port(t.port)
        .learning(false);
    let vx = match t.vm_ip {
        IpAddr::V4(a) => vx.remote(a),
        IpAddr::V6(a) => vx.remote6(a),
    };
    let msg = vx.mtu(t.mtu).setns_by_fd(pod_fd).build();
    hh.link().add(msg).execute().await.map_err(err(format!(
        "create VXLAN device {WORKER_DEVICE} (id {}, port {}) toward {} in {}",
        t.vni,
        t.port,
        t.vm_ip,
        pod.describe()
    )))?;
    let vx_index = nl::index_of(ph, WORKER_DEVICE, pod).await?;
    let if_index = nl::index_of(ph, iface, pod).await?;
    nl::set_up(ph, vx_index, WORKER_DEVICE).await?;
    for (from, from_name, to) in [
        (if_index, iface, vx_index),
        (vx_index, WORKER_DEVICE, if_index),
    ] {
        match ph.qdisc().add(from as i32).ingress().execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(err(format!("add ingress qdisc to {from_name}"))(e)),
        }
        ph.traffic_filter(from as i32)
            .add()
            .ingress()
            .priority(FILTER_PRIORITY)
            .protocol(eth_p_all())
            .redirect(to)
            .map_err(err(format!("build redirect filter on {from_name}")))?
            .execute()
            .await
            .map_err(err(format!("add redirect filter on {from_name}")))?;
    }
    let underlay_mtu = underlay_mtu(hh, t.vm_ip).await;
    let overhead = match t.vm_ip {
        IpAddr::V4(_) => crate::spec::VXLAN_OVERHEAD_V4,
        IpAddr::V6(_) => crate::spec::VXLAN_OVERHEAD_V6,
    };
    let fits = underlay_mtu.is_none_or(|m| m >= t.mtu + overhead);
    if !fits {
        tracing::warn!(
            pod_mtu = t.mtu,
            underlay_mtu = ?underlay_mtu,
            overhead,
            "the underlay toward the VM cannot carry pod-sized frames once encapsulated: \
             large packets will be fragmented; lower the CNI's MTU or raise the underlay's"
        );
    }
    Ok(SetupReport { underlay_mtu, fits })
}

/// MTU of the link the node would use toward `dst` (best effort).
async fn underlay_mtu(h: &Handle, dst: IpAddr) -> Option<u32> {
    let msg = match dst {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let r = h.route().get(msg).execute().try_next().await.ok()??;
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })?;
    let l = h
        .link()
        .get()
        .match_index(oif)
        .execute()
        .try_next()
        .await
        .ok()??;
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// Removes the tunnel from `pod`: the VXLAN device (its qdisc and filter
/// go with it) and our filter on the pod interface (and the ingress qdisc
/// when no other filter is left on it). Idempotent; a pod namespace that
/// is already gone is not an error.
pub async fn teardown(pod: &Netns, iface: &str) -> Result<(), PodnetError> {
    if let Netns::Path(p) = pod {
        if !p.exists() {
            return Ok(());
        }
    }
    let ph = match pod.connect() {
        Ok(h) => h,
        // Gone between the check and the open: nothing left to remove.
        Err(PodnetError::Netns { .. }) if matches!(pod, Netns::Path(p) if !p.exists()) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    remove_ours(&ph, iface).await
}

async fn remove_ours(ph: &Handle, iface: &str) -> Result<(), PodnetError> {
    nl::delete_link(ph, WORKER_DEVICE).await?;
    let Some(link) = nl::link_by_name(ph, iface).await? else {
        return Ok(());
    };
    let index = link.header.index as i32;
    delete_filter(ph, index, FILTER_PRIORITY, iface).await?;
    let remaining = ph
        .traffic_filter(index)
        .get()
        .ingress()
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map(|v| v.len())
        .unwrap_or(1);
    if remaining == 0 {
        let mut del = ph.qdisc().del(index);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(0xffff_0000);
        match del.execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENOENT) || is_errno(&e, libc::EINVAL) => {}
            Err(e) => return Err(err(format!("remove ingress qdisc of {iface}"))(e)),
        }
    }
    Ok(())
}

/// Deletes the ingress filters of priority `prio` on link `index`
/// (rtnetlink's delete request cannot name a priority, so the message is
/// built here). Absent filters are not an error.
async fn delete_filter(ph: &Handle, index: i32, prio: u16, what: &str) -> Result<(), PodnetError> {
    let mut m = TcMessage::with_index(index);
    m.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    };
    m.header.info = u32::from(TcHandle {
        major: prio,
        minor: eth_p_all(),
    });
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = ph.clone();
    let mut resp = h
        .request(req)
        .map_err(err(format!("remove redirect filter of {what}")))?;
    while let Some(msg) = resp.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            let code = e.raw_code();
            if code == 0 || code == -libc::ENOENT || code == -libc::EINVAL {
                continue;
            }
            return Err(PodnetError::Netlink {
                step: format!("remove redirect filter of {what}"),
                errno: Some(-code),
                detail: e.to_io().to_string(),
            });
        }
    }
    Ok(())
}
