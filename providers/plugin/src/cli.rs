//! The `plugin` subcommand's flags (`cloud-api-adaptor plugin …`), with
//! environment fallbacks for the peer-pods ConfigMap.

use crate::{PluginConfig, PluginProvider};
use std::path::PathBuf;
use std::time::Duration;

/// A provider served out of process over the plugin protocol.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The plugin's unix socket.
    #[arg(
        long,
        env = "PEERPOD_PROVIDER_SOCKET",
        default_value = "/run/peerpod/provider.sock"
    )]
    pub socket: PathBuf,
    /// Seconds each plugin call may take (0: no limit besides PEERPOD_PROVIDER_TIMEOUT).
    #[arg(long = "plugin-timeout", env = "PEERPOD_PLUGIN_TIMEOUT", default_value_t = 600)]
    pub call_timeout: u64,
    /// Seconds connecting to the plugin and its handshake may take.
    #[arg(
        long = "plugin-connect-timeout",
        env = "PEERPOD_PLUGIN_CONNECT_TIMEOUT",
        default_value_t = 5
    )]
    pub connect_timeout: u64,
    /// Seconds to wait at start-up for the plugin's socket to answer (a sidecar may start later).
    #[arg(long = "plugin-start-wait", env = "PEERPOD_PLUGIN_START_WAIT", default_value_t = 30)]
    pub start_wait: u64,
}

impl Args {
    /// The client configuration these flags describe.
    pub fn config(&self) -> PluginConfig {
        let mut c = PluginConfig::new(&self.socket);
        c.call_timeout = if self.call_timeout == 0 {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            Duration::from_secs(self.call_timeout)
        };
        c.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        c
    }

    /// The client, connected and handshaken (waiting up to
    /// `--plugin-start-wait` for the plugin to come up).
    pub async fn connect(
        &self,
    ) -> Result<PluginProvider, peerpod_provider_api::ProviderError> {
        let p = PluginProvider::new(self.config());
        p.wait_ready(Duration::from_secs(self.start_wait)).await?;
        Ok(p)
    }
}
