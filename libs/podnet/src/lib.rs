//! The pod network tunnel. A peer pod keeps the address the cluster's CNI
//! gave it on the worker node while its containers run in the VM: a VXLAN
//! tunnel carries the pod interface's frames between the two.
//!
//! - [`spec`]: the data both ends share (through the VM's user data).

pub mod spec;

pub use spec::{IpNet, PodInterface, PodNetwork, PodRoute};
