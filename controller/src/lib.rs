//! `peerpod-ctrl`, the PeerPod cleanup controller. The node-local orphan
//! collector of each adaptor cannot run on a node that is gone; this
//! controller, one leader-elected Deployment for the cluster, deletes
//! the cloud instance of
//!
//! - a PeerPod being deleted that still holds the instance finalizer (its
//!   pod was deleted and the node's adaptor did not release it), unless
//!   the node and the pod both still exist (then the node's adaptor owns
//!   the instance and only the finalizer is dropped);
//! - a PeerPod whose node no longer exists (the PeerPod is deleted, which
//!   brings it to the first case).
//!
//! It builds the same providers as the adaptor, from the same settings.

pub mod cli;
pub mod error;
pub mod lease;
pub mod probes;
pub mod reconcile;
pub mod run;

pub use error::CtrlError;
pub use run::{run, ControllerOptions};
