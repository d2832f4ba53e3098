//! The links of the local provider, through rtnetlink: the host bridge,
//! one veth pair per instance (host end on the bridge, peer moved into the
//! instance's namespace as `eth0` with its address).

use futures::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec, LinkVeth};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// A netlink failure, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct LinkError {
    pub step: String,
    pub detail: String,
}

fn err(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let step = step.into();
    move |e| LinkError {
        step,
        detail: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let step = step.into();
    move |e| LinkError {
        step,
        detail: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A netlink connection in the calling thread's namespace.
pub fn connect() -> Result<Handle, LinkError> {
    let (conn, handle, _) = new_connection().map_err(io_err("open netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, if it exists.
pub async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(err(format!("look up link {name}"))(e)),
    }
}

async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, what: &str) -> Result<(), LinkError> {
    match h.address().add(index, IpAddr::V4(ip), 24).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        Err(e) => Err(err(format!("add address {ip}/24 to {what}"))(e)),
    }
}

/// Makes sure the bridge exists, is up and carries `ip`/24.
pub async fn ensure_bridge(h: &Handle, name: &str, ip: Ipv4Addr) -> Result<u32, LinkError> {
    let index = match index_of(h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(err(format!("create bridge {name}"))(e)),
            }
            index_of(h, name).await?.ok_or_else(|| LinkError {
                step: format!("create bridge {name}"),
                detail: "created but not found".into(),
            })?
        }
    };
    add_address(h, index, ip, name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(err(format!("bring bridge {name} up")))?;
    Ok(index)
}

/// Creates the veth pair, puts `host` on the bridge (up) and moves `peer`
/// into the namespace behind `netns`.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    bridge_index: u32,
    netns: &std::fs::File,
) -> Result<(), LinkError> {
    h.link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(err(format!("create veth {host}")))?;
    let peer_index = index_of(h, peer).await?.ok_or_else(|| LinkError {
        step: format!("create veth {host}"),
        detail: format!("peer {peer} not found"),
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
    let host_index = index_of(h, host).await?.ok_or_else(|| LinkError {
        step: format!("create veth {host}"),
        detail: "host end vanished".into(),
    })?;
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

/// Inside the instance namespace (call on a thread that entered it):
/// renames `peer` to `eth0`, gives it `ip`/24, brings it and `lo` up.
pub fn configure_inside(peer: &str, ip: Ipv4Addr) -> Result<(), LinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start netlink runtime"))?;
    let peer = peer.to_string();
    rt.block_on(async move {
        let h = connect()?;
        let idx = index_of(&h, &peer).await?.ok_or_else(|| LinkError {
            step: "configure eth0".into(),
            detail: format!("{peer} not in the namespace"),
        })?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name("eth0".to_string())
                    .build(),
            )
            .execute()
            .await
            .map_err(err("rename the instance's interface to eth0"))?;
        add_address(&h, idx, ip, "eth0").await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(err("bring eth0 up"))?;
        if let Some(lo) = index_of(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(err("bring lo up"))?;
        }
        Ok(())
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
