//! The peer pods node daemon (`cloud-api-adaptor`): the Kata *remote
//! hypervisor*. It creates one VM per pod through a provider, serves the
//! pod's agent socket and relays it over mutual TLS to the VM's forwarder,
//! and keeps every sandbox on disk so nothing is lost on restart.

pub mod agent_socket;
pub mod annotations;
pub mod ca;
pub mod cli;
pub mod client;
pub mod cluster_vms;
pub mod config;
pub mod config_reference;
pub mod daemon;
pub mod drain;
pub mod framing_guard;
pub mod keepalive;
pub mod kube;
pub mod lifecycle;
pub mod liveness;
pub mod manager;
pub mod metrics;
pub mod orphans;
pub mod pod_network;
pub mod pool;
pub mod probes;
pub mod provider_env;
pub mod provider_timeout;
pub mod readiness;
pub mod record_dir;
pub mod service;
pub mod state;
pub mod upstream;

pub use config::AdaptorConfig;
pub use daemon::Daemon;
pub use manager::Manager;
