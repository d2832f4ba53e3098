//! `agent-protocol-forwarder`: flags and wiring; the logic is in the library.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Relays the adaptor's ttrpc connections to the kata-agent inside the pod VM"
)]
struct Args {
    /// The forwarder config document written by the user-data step.
    #[arg(
        long,
        env = "FORWARDER_CONFIG",
        default_value = "/run/peerpod/daemon.json"
    )]
    config: PathBuf,
    /// Overrides the config's kata-agent socket path.
    #[arg(long, env = "FORWARDER_AGENT_SOCKET")]
    agent_socket: Option<PathBuf>,
    /// Overrides the config's listen address.
    #[arg(long, env = "FORWARDER_LISTEN")]
    listen: Option<String>,
    /// Name (under /run/netns) of the pod network namespace built from the
    /// config's pod network; containers join it.
    #[arg(long, env = "FORWARDER_POD_NETNS", default_value = peerpod_podnet::vm::POD_NETNS)]
    pod_netns: String,
}

fn main() -> anyhow::Result<()> {
    peerpod_logging::init(peerpod_logging::Colour::WhenTerminal);
    let args = Args::parse();
    let mut cfg = agent_forwarder::load_config(&args.config)?;
    if let Some(s) = args.agent_socket {
        cfg.agent_socket = s;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // A pool VM gets its pod network with its Bind.
        let netns = match cfg.bootstrap {
            None => agent_forwarder::setup_pod_network(&cfg, &args.pod_netns).await?,
            Some(_) => None,
        };
        let fwd = agent_forwarder::Forwarder::bind(&cfg)
            .await?
            .with_pod_netns(netns)
            .with_bind_target(Some(args.config.clone()), &args.pod_netns);
        match &cfg.bootstrap {
            None => tracing::info!(
                addr = %fwd.local_addr()?,
                agent = %cfg.agent_socket.display(),
                tls = cfg.tls.is_some(),
                sandbox = %cfg.sandbox_id,
                "forwarder listening"
            ),
            Some(b) => tracing::info!(
                addr = %fwd.local_addr()?,
                agent = %cfg.agent_socket.display(),
                pool_vm = %b.pool_vm,
                "forwarder listening (warm pool: bootstrap service only, until bound to a sandbox)"
            ),
        }
        fwd.serve().await;
        Ok(())
    })
}
