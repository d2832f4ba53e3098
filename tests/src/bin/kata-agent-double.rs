//! `kata-agent-double`: the test kata-agent. Listens on `--socket` (or the
//! address in `KATA_AGENT_SERVER_ADDR`, `unix://<path>`, as the real agent
//! reads it) and optionally records requests to `--record`. Takes the real
//! agent's `--config FILE` too, so one systemd unit starts either (the
//! double only checks that the file is readable: its socket comes from the
//! environment, which the real agent also applies over its config file).
//! Like the real agent it exits after answering `DestroySandbox`.

use anyhow::{bail, Context};
use clap::Parser;
use peerpod_tests::agent_double::{AgentDouble, Recorder, SERVER_ADDR_ENV};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "kata-agent test double (a fixture, not the real agent)"
)]
struct Args {
    /// Unix socket to listen on; defaults to the path in KATA_AGENT_SERVER_ADDR.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The real agent's TOML config file; must be readable, not otherwise used.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Append one JSON line per received request to this file.
    #[arg(long, env = "AGENT_DOUBLE_RECORD")]
    record: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(c) = &args.config {
        std::fs::metadata(c).with_context(|| format!("--config {}", c.display()))?;
    }
    let socket = match args.socket {
        Some(s) => s,
        None => match std::env::var(SERVER_ADDR_ENV) {
            Ok(addr) => match addr.strip_prefix("unix://") {
                Some(p) => PathBuf::from(p),
                None => {
                    bail!("{SERVER_ADDR_ENV}={addr}: only unix://<path> is supported by the double")
                }
            },
            Err(_) => bail!("give --socket or set {SERVER_ADDR_ENV}=unix://<path>"),
        },
    };
    let recorder = match &args.record {
        Some(p) => {
            Recorder::to_file(p).with_context(|| format!("open record file {}", p.display()))?
        }
        None => Recorder::default(),
    };
    let double = AgentDouble::start(&socket, recorder)
        .await
        .with_context(|| format!("listen on {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "kata-agent double listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = double.destroyed() => {
            tracing::info!("sandbox destroyed; exiting as the kata-agent does");
        }
    }
    double.stop().await;
    Ok(())
}
