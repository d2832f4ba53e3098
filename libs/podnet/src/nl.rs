//! Netlink plumbing shared by both tunnel ends: a connection in the
//! caller's or in another network namespace, and mapping of rtnetlink
//! errors to [`PodnetError`]s that name the step.

use crate::error::PodnetError;
use futures::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use rtnetlink::{new_connection, Handle, LinkUnspec};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Maps an rtnetlink error to a [`PodnetError`] naming `step`.
pub fn err(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodnetError {
    let step = step.into();
    move |e| match &e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            PodnetError::Netlink {
                step,
                errno: io.raw_os_error(),
                detail: io.to_string(),
            }
        }
        other => PodnetError::Netlink {
            step,
            errno: None,
            detail: other.to_string(),
        },
    }
}

/// Whether the kernel answered with `errno`.
pub fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A network namespace to work in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The calling process's own namespace.
    Current,
    /// A namespace file: `/run/netns/<name>`, `/proc/<pid>/ns/net`, or the
    /// path the container runtime gave (`/var/run/netns/cni-…`).
    Path(PathBuf),
}

impl Netns {
    /// The namespace named `name` under `/run/netns`.
    pub fn named(name: &str) -> Self {
        Netns::Path(crate::netns::path(name))
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Netns::Current => "the current network namespace".into(),
            Netns::Path(p) => p.display().to_string(),
        }
    }

    /// Opens the namespace file (`/proc/self/ns/net` for [`Netns::Current`]).
    pub fn open(&self) -> Result<File, PodnetError> {
        let p: &Path = match self {
            Netns::Current => Path::new("/proc/self/ns/net"),
            Netns::Path(p) => p,
        };
        File::open(p).map_err(|e| PodnetError::netns(p.display(), e))
    }

    /// A netlink connection whose socket lives in this namespace. Must be
    /// called inside a tokio runtime (the connection runs as a task on it).
    pub fn connect(&self) -> Result<Handle, PodnetError> {
        match self {
            Netns::Current => connect_here(),
            Netns::Path(_) => {
                let ns = self.open()?;
                connect_in(ns, self.describe())
            }
        }
    }
}

fn connect_here() -> Result<Handle, PodnetError> {
    let (conn, handle, _) = new_connection().map_err(|e| PodnetError::Netlink {
        step: "open netlink socket".into(),
        errno: e.raw_os_error(),
        detail: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink socket stays in the namespace it was created in, whichever
/// thread uses it later: create it on a short-lived thread that entered
/// `ns` (never on a tokio worker, whose namespace must not change).
fn connect_in(ns: File, what: String) -> Result<Handle, PodnetError> {
    let rt = tokio::runtime::Handle::current();
    let w = what.clone();
    let made = std::thread::Builder::new()
        .name("podnet-ns".into())
        .spawn(move || {
            let _enter = rt.enter();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| PodnetError::netns(&w, format!("enter: {e}")))?;
            connect_here()
        })
        .map_err(|e| PodnetError::netns(&what, format!("spawn thread: {e}")))?
        .join()
        .map_err(|_| PodnetError::netns(&what, "netlink thread panicked"))?;
    made
}

/// The link called `name`, if it exists.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, PodnetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(err(format!("look up link {name}"))(e)),
    }
}

/// The index of the link called `name`; absent is an error naming `ns`.
pub async fn index_of(h: &Handle, name: &str, ns: &Netns) -> Result<u32, PodnetError> {
    link_by_name(h, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| PodnetError::Netlink {
            step: format!("look up link {name} in {}", ns.describe()),
            detail: "no such device".into(),
            errno: Some(libc::ENODEV),
        })
}

/// Brings link `index` up.
pub async fn set_up(h: &Handle, index: u32, what: &str) -> Result<(), PodnetError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(err(format!("bring {what} up")))
}

/// Deletes the link called `name`; an absent one is not an error.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, PodnetError> {
    let Some(l) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(err(format!("delete link {name}"))(e)),
    }
}

/// The address this host would send from toward `dst` (the kernel's
/// route lookup, `ip route get`), in the current namespace.
pub async fn source_toward(dst: std::net::IpAddr) -> Result<std::net::IpAddr, PodnetError> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let h = Netns::Current.connect()?;
    let msg = match dst {
        std::net::IpAddr::V4(a) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        std::net::IpAddr::V6(a) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let step = format!("find the route toward {dst}");
    let r = h
        .route()
        .get(msg)
        .execute()
        .try_next()
        .await
        .map_err(err(step.clone()))?
        .ok_or_else(|| PodnetError::Unsupported(format!("{step}: the kernel returned none")))?;
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => Some(std::net::IpAddr::V4(*v4)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => Some(std::net::IpAddr::V6(*v6)),
            _ => None,
        })
        .ok_or_else(|| PodnetError::Unsupported(format!("{step}: no source address on that route")))
}
