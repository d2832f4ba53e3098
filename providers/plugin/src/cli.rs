//! The `plugin` subcommand's flags (`cloud-api-adaptor plugin …`), with
//! environment fallbacks for the peer-pods ConfigMap.

use crate::{PluginConfig, PluginMetrics, PluginProvider};
use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::Provider;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A provider served out of process over the plugin protocol.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The plugin's unix socket. (Not `--socket`: that global flag is the
    /// adaptor's own hypervisor socket.)
    #[arg(
        long,
        env = "PEERPOD_PROVIDER_SOCKET",
        default_value = "/run/peerpod/provider.sock"
    )]
    pub provider_socket: PathBuf,
    /// Seconds each plugin call may take (0: no limit besides PEERPOD_PROVIDER_TIMEOUT).
    #[arg(
        long = "plugin-timeout",
        env = "PEERPOD_PLUGIN_TIMEOUT",
        default_value_t = 600
    )]
    pub call_timeout: u64,
    /// Seconds connecting to the plugin and its handshake may take.
    #[arg(
        long = "plugin-connect-timeout",
        env = "PEERPOD_PLUGIN_CONNECT_TIMEOUT",
        default_value_t = 5
    )]
    pub connect_timeout: u64,
    /// Seconds to wait at start-up for the plugin's socket to answer (a sidecar may start later).
    #[arg(
        long = "plugin-start-wait",
        env = "PEERPOD_PLUGIN_START_WAIT",
        default_value_t = 30
    )]
    pub start_wait: u64,
}

impl Args {
    /// The client configuration these flags describe.
    pub fn config(&self) -> PluginConfig {
        let mut c = PluginConfig::new(&self.provider_socket);
        c.call_timeout = if self.call_timeout == 0 {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            Duration::from_secs(self.call_timeout)
        };
        c.connect_timeout = Duration::from_secs(self.connect_timeout.max(1));
        c
    }

    /// The client, connected and handshaken (waiting up to
    /// `--plugin-start-wait` for the plugin to come up): a plugin that is
    /// absent, hangs or speaks another protocol version stops the adaptor
    /// at start-up with a message naming the socket.
    pub async fn build(self, ctx: &BuildContext) -> Result<Arc<dyn Provider>, BuildError> {
        Ok(self.build_with_metrics(ctx).await?.0)
    }

    /// [`Args::build`], plus the per-call metrics for `/metrics`.
    pub async fn build_with_metrics(
        self,
        _ctx: &BuildContext,
    ) -> Result<(Arc<dyn Provider>, PluginMetrics), BuildError> {
        let p = PluginProvider::new(self.config());
        p.wait_ready(Duration::from_secs(self.start_wait))
            .await
            .map_err(|e| BuildError::init("plugin", e))?;
        let m = p.metrics().clone();
        Ok((Arc::new(p), m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn defaults_and_zero_timeout() {
        let c = Cli::parse_from(["x"]);
        assert_eq!(
            c.a.provider_socket,
            PathBuf::from("/run/peerpod/provider.sock")
        );
        let cfg = c.a.config();
        assert_eq!(cfg.call_timeout, Duration::from_secs(600));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        let c = Cli::parse_from([
            "x",
            "--provider-socket",
            "/tmp/p.sock",
            "--plugin-timeout",
            "0",
        ]);
        assert!(c.a.config().call_timeout > Duration::from_secs(3600 * 24 * 365));
    }

    #[tokio::test]
    async fn no_plugin_is_a_start_up_error_naming_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("none.sock");
        let c = Cli::parse_from([
            "x",
            "--provider-socket",
            sock.to_str().unwrap(),
            "--plugin-start-wait",
            "0",
        ]);
        let ctx = BuildContext {
            state_dir: d.path().to_path_buf(),
        };
        let e = c.a.build(&ctx).await.err().expect("no plugin");
        let s = e.to_string();
        assert!(
            s.contains("plugin") && s.contains("none.sock") && s.contains("cannot connect"),
            "{s}"
        );
    }
}
