//! `cloud-api-adaptor local`: the flags and env vars of the local provider
//! and how they become a [`LocalProvider`](crate::LocalProvider).

use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the local provider keeps its instances (default: <state dir>/local).
    #[arg(long, env = "LOCAL_STATE_DIR")]
    pub local_state_dir: Option<PathBuf>,
    /// The forwarder binary (default: agent-protocol-forwarder next to this binary).
    #[arg(long, env = "LOCAL_FORWARDER_BIN")]
    pub forwarder_bin: Option<PathBuf>,
    /// The kata-agent binary (default: the kata-agent-double test agent next to this binary).
    #[arg(long, env = "LOCAL_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// The pod VM's user-data step (default: process-user-data next to this binary).
    #[arg(long, env = "LOCAL_USER_DATA_BIN")]
    pub user_data_bin: Option<PathBuf>,
    /// Host bridge joining the instances' network namespaces.
    #[arg(long, env = "LOCAL_BRIDGE", default_value = "pplocal0")]
    pub bridge: String,
    /// The instances' network, address/prefix (16-30; a bare address is a /24); the bridge takes the first address.
    #[arg(long, env = "LOCAL_SUBNET", default_value = "10.213.0.0/20")]
    pub subnet: String,
}

impl Args {
    /// Checks the settings and builds the provider.
    pub async fn build(self, ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        let a = self;
        let mut cfg = crate::LocalConfig::with_defaults(
            a.local_state_dir
                .unwrap_or_else(|| ctx.state_dir.join("local")),
        );
        if let Some(f) = a.forwarder_bin {
            cfg.forwarder_bin = f;
        }
        if let Some(b) = a.agent_bin {
            cfg.agent_bin = b;
        }
        if let Some(b) = a.user_data_bin {
            cfg.user_data_bin = b;
        }
        cfg.bridge = a.bridge;
        (cfg.subnet, cfg.prefix_len) = crate::parse_subnet(&a.subnet)
            .map_err(|e| BuildError::config("local", format!("--subnet / LOCAL_SUBNET: {e}")))?;
        Ok(Arc::new(
            crate::LocalProvider::new(cfg).map_err(|e| BuildError::init("local", e))?,
        ))
    }
}
