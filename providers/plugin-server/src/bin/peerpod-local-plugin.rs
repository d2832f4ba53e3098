//! Example: the `local` provider served out of process as a provider
//! plugin — the whole program is its flags and the few lines of
//! `peerpod-provider-plugin-server` below. Run it, then
//! `cloud-api-adaptor plugin --socket <same socket>`.

use anyhow::Context;
use clap::Parser;
use peerpod_provider_api::cli::BuildContext;
use peerpod_provider_plugin_server::PluginServer;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "The local provider as a provider plugin (example)")]
struct Cli {
    /// The unix socket to serve on.
    #[arg(
        long,
        env = "PEERPOD_PROVIDER_SOCKET",
        default_value = "/run/peerpod/provider.sock"
    )]
    socket: PathBuf,
    /// State directory (the local provider keeps its instances in <state dir>/local).
    #[arg(
        long,
        env = "PEERPOD_STATE_DIR",
        default_value = "/var/lib/peerpod-local-plugin"
    )]
    state_dir: PathBuf,
    #[command(flatten)]
    local: peerpod_provider_local::cli::Args,
}

fn main() -> anyhow::Result<()> {
    peerpod_logging::init(peerpod_logging::Colour::WhenTerminal);
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let ctx = BuildContext {
            state_dir: cli.state_dir,
        };
        let provider = cli.local.build(&ctx).await?;
        PluginServer::new(provider)
            .bind(&cli.socket)?
            .serve_until_signal()
            .await?;
        Ok(())
    })
}
