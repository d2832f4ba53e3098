//! Shared by the webhook's cross-process tests: the Kubernetes API
//! stand-in and a running `peerpods-webhook` process with an HTTPS client.

#![allow(dead_code)]

pub mod apiserver;
pub mod process;
