//! Test fixtures shared by the end-to-end tests and the benchmark: the
//! kata-agent double, a provider that runs real forwarder processes on
//! loopback addresses, and helpers to find the workspace binaries.

pub mod adaptor_process;
pub mod agent_double;
pub mod bins;
pub mod containerd;
pub mod faulty_provider;
pub mod harness;
#[cfg(feature = "libvirt")]
pub mod libvirt_env;
pub mod process_provider;
