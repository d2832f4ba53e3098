//! The pod network tunnel. A peer pod keeps the address the cluster's CNI
//! gave it on the worker node while its containers run in the VM: a VXLAN
//! tunnel carries the pod interface's frames between the two.
//!
//! - [`spec`]: the data both ends share (through the VM's user data);
//! - [`inspect`]: reads the pod's interface in its namespace (worker);
//! - [`worker`]: the worker end (adaptor), VXLAN + tc redirects;
//! - [`vm`]: the VM end (forwarder), the pod namespace in the VM;
//! - [`vni`]: per-node VXLAN id allocation;
//! - [`netns`], [`nl`]: named namespaces and netlink plumbing.

pub mod error;
pub mod inspect;
pub mod netns;
pub mod nl;
pub mod spec;
pub mod vm;
pub mod vni;
pub mod worker;

pub use error::PodnetError;
pub use inspect::inspect;
pub use nl::Netns;
pub use spec::{IpNet, PodInterface, PodNetwork, PodRoute};
pub use vni::VniPool;
pub use worker::{SetupReport, WorkerTunnel};
