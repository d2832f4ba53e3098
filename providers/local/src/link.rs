//! The links of the local provider, through rtnetlink (no `ip` commands):
//! the host bridge, one veth pair per instance (host end on the bridge,
//! peer moved into the instance's namespace, renamed `eth0` and given its
//! address, a default route via the bridge and `lo` up).

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// A netlink failure, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct LinkError {
    pub step: String,
    pub detail: String,
    /// The kernel's errno, when the kernel refused.
    pub errno: Option<i32>,
}

impl LinkError {
    fn new(step: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            detail: detail.into(),
            errno: None,
        }
    }
}

fn err(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let step = step.into();
    move |e| match &e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            LinkError {
                step,
                errno: io.raw_os_error(),
                detail: io.to_string(),
            }
        }
        other => LinkError::new(step, other.to_string()),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A netlink connection in the calling thread's network namespace. Must be
/// called inside a tokio runtime (the connection runs as a task on it).
pub fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = new_connection().map_err(|e| LinkError {
        step: "open netlink socket".into(),
        errno: e.raw_os_error(),
        detail: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn get(h: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(err(format!("look up link {name}"))(e)),
    }
}

/// The index of link `name`, if it exists.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    Ok(get(h, name).await?.map(|l| l.header.index))
}

fn is_bridge(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))))
    })
}

/// How many links have the link `index` as their controller (bridge ports).
pub async fn port_count(h: &Handle, index: u32) -> Result<usize, LinkError> {
    let mut links = h.link().get().execute();
    let mut n = 0;
    while let Some(l) = links.try_next().await.map_err(err("list links"))? {
        if l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index))
        {
            n += 1;
        }
    }
    Ok(n)
}

async fn add_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
    what: &str,
) -> Result<(), LinkError> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(e) => Err(err(format!("add address {ip}/{prefix_len} to {what}"))(e)),
    }
}

async fn up(h: &Handle, index: u32, what: &str) -> Result<(), LinkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(err(format!("bring {what} up")))
}

/// Makes sure the bridge exists, is up and carries `ip`/`prefix_len`;
/// returns its index. A link of that name that is not a bridge is an
/// error (and is left alone).
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<u32, LinkError> {
    let index = match get(h, name).await? {
        Some(l) if is_bridge(&l) => l.header.index,
        Some(_) => {
            return Err(LinkError::new(
                format!("create bridge {name}"),
                "a link of that name exists and is not a bridge",
            ))
        }
        None => {
            // A fixed address: a bridge otherwise takes the lowest MAC
            // of its ports, so it changes whenever an instance comes or
            // goes — and every instance's cached gateway MAC goes stale,
            // stalling its replies to the adaptor for seconds.
            let msg = LinkBridge::new(name)
                .address(bridge_mac(name).to_vec())
                .build();
            match h.link().add(msg).execute().await {
                Ok(()) => tracing::info!(bridge = name, "created host bridge"),
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(err(format!("create bridge {name}"))(e)),
            }
            index_of(h, name).await?.ok_or_else(|| {
                LinkError::new(format!("create bridge {name}"), "created but not found")
            })?
        }
    };
    add_address(h, index, ip, prefix_len, name).await?;
    up(h, index, &format!("bridge {name}")).await?;
    Ok(index)
}

/// A locally administered unicast MAC derived from the bridge name.
pub fn bridge_mac(name: &str) -> [u8; 6] {
    // FNV-1a: stable across runs and versions (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// Deletes the bridge `name` if it is a bridge without ports; returns
/// whether it did. An absent link is not an error.
pub async fn delete_bridge_if_unused(h: &Handle, name: &str) -> Result<bool, LinkError> {
    let Some(l) = get(h, name).await? else {
        return Ok(false);
    };
    if !is_bridge(&l) || port_count(h, l.header.index).await? > 0 {
        return Ok(false);
    }
    match h.link().del(l.header.index).execute().await {
        Ok(()) => {
            tracing::info!(bridge = name, "removed host bridge (no instances left)");
            Ok(true)
        }
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(err(format!("delete bridge {name}"))(e)),
    }
}

/// Creates the veth pair `host`/`peer`. Separate from [`attach_veth`] so
/// the caller knows, should a later step fail, that the pair is its own.
pub async fn create_veth(h: &Handle, host: &str, peer: &str) -> Result<(), LinkError> {
    h.link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(err(format!("create veth {host}")))
}

/// Moves `peer` into the namespace behind `netns`, puts `host` on the
/// bridge and brings it up.
pub async fn attach_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    bridge_index: u32,
    netns: &std::fs::File,
) -> Result<(), LinkError> {
    let peer_index = index_of(h, peer).await?.ok_or_else(|| {
        LinkError::new(
            format!("create veth {host}"),
            format!("peer {peer} not found"),
        )
    })?;
    h.link()
        .set(
            LinkUnspec::new_with_index(peer_index)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(err(format!("move {peer} into the instance namespace")))?;
    let host_index = index_of(h, host)
        .await?
        .ok_or_else(|| LinkError::new(format!("attach veth {host}"), "host end vanished"))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(err(format!("attach {host} to the bridge")))?;
    Ok(())
}

/// Inside the instance namespace (call on a thread that entered it; it
/// runs its own single-threaded runtime): renames `peer` to `eth0`, gives
/// it `ip`/`prefix_len`, brings it and `lo` up and routes everything else
/// via `gateway` (the bridge), as a cloud VM's network is set up.
pub fn configure_inside(
    peer: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<(), LinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LinkError::new("start netlink runtime", e.to_string()))?;
    rt.block_on(async move {
        let h = connect()?;
        let idx = index_of(&h, peer).await?.ok_or_else(|| {
            LinkError::new("configure eth0", format!("{peer} not in the namespace"))
        })?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).name("eth0").build())
            .execute()
            .await
            .map_err(err("rename the instance's interface to eth0"))?;
        add_address(&h, idx, ip, prefix_len, "eth0").await?;
        up(&h, idx, "eth0").await?;
        if let Some(lo) = index_of(&h, "lo").await? {
            up(&h, lo, "lo").await?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(idx)
            .build();
        match h.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(err(format!("add default route via {gateway}"))(e)),
        }
    })
}

/// Deletes link `name`; an absent link is not an error.
pub async fn delete(h: &Handle, name: &str) -> Result<(), LinkError> {
    let Some(index) = index_of(h, name).await? else {
        return Ok(());
    };
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
        Err(e) => Err(err(format!("delete link {name}"))(e)),
    }
}

#[cfg(test)]
mod mac_tests {
    use super::bridge_mac;

    #[test]
    fn bridge_mac_is_stable_unicast_and_local() {
        let m = bridge_mac("pplocal0");
        assert_eq!(m, bridge_mac("pplocal0"));
        assert_ne!(m, bridge_mac("pplocal1"));
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
    }
}
