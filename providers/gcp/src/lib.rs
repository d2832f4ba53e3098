//! The GCP provider: pod VMs as Compute Engine confidential instances,
//! through the official google-cloud-rust client (`google-cloud-compute-v1`)
//! with application default credentials (workload identity on GKE) or a
//! service account key.

pub mod cli;
mod config;
mod errors;
mod provider;

pub use config::{
    ConfidentialType, ConfigError, GcpConfig, RawGcpConfig, DEFAULT_MACHINE_TYPE, REQUIRED_ENV,
};
pub use errors::kind_of;
pub use provider::{label_value, ClientOptions, GcpProvider, OWNER_METADATA_KEY, USER_DATA_KEY};
