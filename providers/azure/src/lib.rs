//! The Azure provider: each pod VM is an Azure confidential VM (AMD SEV-SNP,
//! `securityType: ConfidentialVM`) unless `DISABLECVM`, with its own NIC in
//! the configured subnet.
//!
//! **Why our own ARM client, not `azure_mgmt_compute`.** The generated
//! `azure_mgmt_compute` crate is the frozen 0.21 line (tied to `azure_core`
//! 0.21; its successor is an empty placeholder) and re-sends the create
//! PUT while it polls a long-running operation. We need five resource
//! types and a handful of calls, each of which must be sent exactly once
//! and followed through `Azure-AsyncOperation`, so [`arm`] is a small REST
//! client on `reqwest` (the HTTP client `azure_core` itself uses, so one
//! build) that speaks the documented ARM JSON. Tokens come from the
//! official, maintained `azure_identity` 1.x ([`credential`]): workload
//! identity federation, client secret or managed identity.
//!
//! - [`config`]: the Go adaptor's settings (`AZURE_SUBSCRIPTION_ID`,
//!   `AZURE_IMAGE_ID`, `TAGS`, …);
//! - [`credential`]: which Entra ID credential, from the standard env;
//! - [`arm`]: the REST client (throttling, long-running operations);
//! - [`errors`]: ARM error codes as provider errors;
//! - [`provider`]: create / delete / list / verify.

pub mod arm;
pub mod cli;
pub mod config;
pub mod credential;
pub mod errors;
pub mod provider;

pub use arm::ArmTiming;
pub use config::{AzureConfig, RawAzureConfig, REQUIRED_ENV};
pub use credential::{CredentialKind, RawCredentials, StaticToken};
pub use provider::AzureProvider;
