//! The ttrpc relay both daemons run: the adaptor between the shim's unix
//! socket and the pod VM's TLS connection, the forwarder between that TLS
//! connection and the kata-agent's unix socket.
//!
//! It moves whole ttrpc *frames* and decodes only the requests a
//! [`RequestRewriter`] asks for, so methods it has never heard of pass
//! through byte for byte.

pub mod bootstrap;
pub mod frame;
pub mod relay;
pub mod rewrite;
pub mod status;
pub mod tls;

pub use frame::{FrameHeader, MessageType, HEADER_LEN};
pub use relay::{relay_connection, relay_connection_until, RelayOptions, RelayOutcome};
pub use rewrite::{CreateContainerRewriter, NoRewrite, RequestRewriter, RewriteError};
