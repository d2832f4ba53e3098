//! The `plugin` provider: the adaptor's side of the provider plugin
//! protocol (`peerpod.provider.v1`, gRPC over a unix socket, defined in
//! `libs/protocols/protos/provider.proto`). A provider for a new cloud is
//! then a separate program in any language that serves that protocol; the
//! adaptor needs no rebuild (`cloud-api-adaptor plugin --socket …`).
//!
//! - [`client`]: [`PluginProvider`], a `Provider` whose calls go to the
//!   plugin (deadlines, reconnect + handshake, typed errors).
//! - [`wire`]: conversions between the provider API types and the
//!   protocol's messages, shared with the server helper
//!   (`peerpod-provider-plugin-server`).
//! - [`metrics`]: per-call counters and latency.
//! - [`cli`]: the subcommand's flags.

pub mod cli;
pub mod client;
pub mod metrics;
pub mod wire;

pub use client::{PluginConfig, PluginInfo, PluginProvider, MIN_PROTOCOL_VERSION};
pub use metrics::PluginMetrics;
pub use peerpod_protocols::provider_v1 as proto;
pub use peerpod_protocols::provider_v1::PROTOCOL_VERSION;
