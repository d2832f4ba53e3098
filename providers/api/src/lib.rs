//! The contract between the adaptor and a cloud backend.
//!
//! A provider creates, deletes and lists instances. It knows nothing about
//! pods, tunnels or ttrpc: the adaptor hands it an [`InstanceRequest`]
//! (name, size, image, owner tags, the user data the VM reads at boot) and
//! gets back an [`Instance`] with the addresses it can reach the VM on.
//! Errors are [`ProviderError`]s that keep the cloud's own code and message
//! and say whether a retry can help.

pub mod cli;
mod error;
mod naming;
pub mod settings;
pub mod sizing;
mod types;

pub use error::{ErrorKind, ProviderError};
pub use naming::{instance_name, short_sandbox_id};
pub use types::{Instance, InstanceRequest, OwnerTags, TAG_CLUSTER, TAG_NODE, TAG_SANDBOX};

use async_trait::async_trait;

/// A cloud backend. Implementations must be safe to call concurrently.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name as given on the command line (`local`, `aws`, …).
    fn name(&self) -> &str;

    /// Creates one instance and returns once its address is known. On error
    /// the provider removes whatever it created for this request.
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError>;

    /// Deletes an instance and what it owns (disks, NICs, ISOs).
    /// Idempotent: an instance that does not exist counts as deleted.
    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError>;

    /// Lists the instances whose tags include every tag in `owner`.
    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError>;

    /// Checks that credentials and configuration work; returns one line per
    /// thing it checked.
    async fn verify(&self) -> Result<Vec<String>, ProviderError>;

    /// Adds (or overwrites) `tags` on an existing instance, keeping its
    /// other tags, and renames it to `name` where the cloud's names can
    /// change. The warm pool gives a pool VM its sandbox's owner tags (and
    /// `podvm-<pod>-<id>` name) this way when it binds it, so tools that
    /// find VMs by tag or name find it. Returns `false` where the cloud
    /// cannot retag (the default): the VM then keeps its pool tags and
    /// name, and the adaptor's records say whose it is.
    async fn retag(
        &self,
        _instance_id: &str,
        _name: &str,
        _tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        Ok(false)
    }

    /// The tail of the instance's serial console, where the cloud offers it.
    async fn console_tail(&self, _instance_id: &str) -> Option<String> {
        None
    }
}

/// Rejects an empty or blank instance id before it reaches a cloud API
/// (deleting with an empty id has matched *every* instance on some clouds).
pub fn check_instance_id(instance_id: &str) -> Result<(), ProviderError> {
    if instance_id.trim().is_empty() {
        return Err(ProviderError::new(
            ErrorKind::InvalidRequest,
            "refusing to act on an empty instance id",
        ));
    }
    Ok(())
}
