//! Test fixtures shared by the end-to-end tests and the benchmark: the
//! kata-agent double, a provider that runs real forwarder processes on
//! loopback addresses, helpers to find the workspace binaries, and the
//! cloud pod VM disk fixtures (build, metadata stand-in, UEFI VM).

pub mod adaptor_process;
pub mod agent_double;
pub mod bins;
pub mod cloud_disk;
pub mod containerd;
pub mod fake_vm;
pub mod faulty_provider;
pub mod harness;
pub mod host_net;
pub mod kube_apiserver;
#[cfg(feature = "libvirt")]
pub mod libvirt_env;
pub mod local_world;
pub mod plugin_env;
pub mod podvm_build;
pub mod process_provider;
