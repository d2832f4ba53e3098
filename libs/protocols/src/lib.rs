//! Wire types for the two ttrpc APIs the system speaks: the remote
//! hypervisor API (shim → adaptor) and the part of the kata-agent API
//! (shim → agent) that we decode or serve in tests. Generated at build time
//! from `protos/` by ttrpc-codegen (rust-protobuf 3, which keeps unknown
//! fields across decode/encode — the relay's rewrites rely on that).
//!
//! Feature `provider-grpc` adds the provider plugin protocol (gRPC via
//! tonic + prost: nothing there is rewritten, so prost's dropping of
//! unknown fields does not matter); the pod VM's forwarder leaves it off.
#![allow(clippy::all, unused_qualifications, missing_docs)]

macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            non_camel_case_types,
            non_snake_case,
            non_upper_case_globals,
            unused
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(hypervisor, "hypervisor.rs");
generated!(hypervisor_ttrpc, "hypervisor_ttrpc.rs");
generated!(health, "health.rs");
generated!(health_ttrpc, "health_ttrpc.rs");
generated!(oci, "oci.rs");
generated!(agent, "agent.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");

/// Fully-qualified ttrpc service names as they appear in `Request.service`.
pub mod services {
    pub const HYPERVISOR: &str = "hypervisor.Hypervisor";
    pub const AGENT: &str = "grpc.AgentService";
    pub const HEALTH: &str = "grpc.Health";
}

/// The provider plugin protocol `peerpod.provider.v1` (gRPC: prost
/// messages, tonic client and server), see `protos/provider.proto`.
#[cfg(feature = "provider-grpc")]
#[allow(clippy::all, missing_docs)]
pub mod provider_v1 {
    include!(concat!(env!("OUT_DIR"), "/grpc/peerpod.provider.v1.rs"));

    /// The version this build speaks; a plugin answering another one in
    /// its Handshake is refused.
    pub const PROTOCOL_VERSION: u32 = 1;
}

#[cfg(feature = "provider-grpc")]
pub use prost;
pub use protobuf;
#[cfg(feature = "provider-grpc")]
pub use tonic;
pub use ttrpc;
