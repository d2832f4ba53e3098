//! The AWS provider: each pod VM is an EC2 instance (AMD SEV-SNP unless
//! `DISABLECVM`), created with the official SDK (`aws-sdk-ec2`), with
//! credentials from the SDK's standard chain (env, profile, IRSA web
//! identity, instance role). `AWS_ENDPOINT_URL` points it elsewhere (tests
//! use a local moto server).
//!
//! - [`config`]: the Go adaptor's settings (`PODVM_AMI_ID`, `TAGS`, …);
//! - [`errors`]: EC2 error codes as provider errors;
//! - [`provider`]: create / delete / list / verify.

pub mod cli;
pub mod config;
pub mod errors;
pub mod provider;

pub use config::{AwsConfig, RawAwsConfig, REQUIRED_ENV, SDK_ENV};
pub use provider::AwsProvider;
