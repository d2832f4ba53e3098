//! `peerpod-plugin-bench`: the latency the provider plugin hop adds to
//! CreateInstance and DeleteInstance. One run measures the same trivial
//! in-memory provider called in process and through a plugin (this binary
//! run again as a separate process serving it on a unix socket),
//! alternating blocks of calls so both see the same machine noise, and
//! prints p50/p99 of each and the added latency.
//!
//! `cargo build --release -p peerpod-plugin-bench &&
//!  $CARGO_TARGET_DIR/release/peerpod-plugin-bench`
//!
//! A crate of its own so its release build compiles only the plugin
//! protocol, not the adaptor.

use anyhow::Context;
use clap::Parser;
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_provider_conformance::basic_request;
use peerpod_provider_conformance::memory::MemoryProvider;
use peerpod_provider_plugin::{PluginConfig, PluginProvider};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Added latency of the provider plugin hop")]
struct Args {
    /// Create+delete pairs per provider.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Pairs per block (the two providers alternate blocks).
    #[arg(long, default_value_t = 250)]
    block: usize,
    /// Internal: serve the memory provider as a plugin on this socket.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Default)]
struct Series {
    create: Vec<Duration>,
    delete: Vec<Duration>,
}

async fn block(p: &dyn Provider, n: usize, s: &mut Series) -> anyhow::Result<()> {
    for i in 0..n {
        let req = basic_request(
            &format!("podvm-bench-{i:08}"),
            OwnerTags {
                cluster: "bench".into(),
                node: "bench".into(),
                sandbox_id: format!("sb{i}"),
            },
        );
        let t = Instant::now();
        let inst = p.create_instance(req).await?;
        s.create.push(t.elapsed());
        let t = Instant::now();
        p.delete_instance(&inst.id).await?;
        s.delete.push(t.elapsed());
    }
    Ok(())
}

fn report(what: &str, direct: &mut [Duration], plugin: &mut [Duration]) {
    direct.sort();
    plugin.sort();
    let (d50, d99, p50, p99) = (
        pct(direct, 0.5),
        pct(direct, 0.99),
        pct(plugin, 0.5),
        pct(plugin, 0.99),
    );
    println!(
        "{what:<15} in process p50 {:>8.1} µs p99 {:>8.1} µs | plugin p50 {:>8.1} µs p99 {:>8.1} µs | added p50 {:>8.1} µs p99 {:>8.1} µs ({} calls each)",
        us(d50),
        us(d99),
        us(p50),
        us(p99),
        us(p50.saturating_sub(d50)),
        us(p99.saturating_sub(d99)),
        direct.len()
    );
}

async fn serve(sock: PathBuf) -> anyhow::Result<()> {
    peerpod_provider_plugin_server::PluginServer::new(Arc::new(MemoryProvider::new()))
        .bind(&sock)?
        .serve_until_signal()
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(sock) = args.serve {
        return rt.block_on(serve(sock));
    }
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("provider.sock");
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("--serve")
            .arg(&sock)
            .spawn()
            .context("start the plugin process")?;
        let plugin = PluginProvider::new(PluginConfig::new(&sock));
        let r = async {
            let info = plugin.wait_ready(Duration::from_secs(10)).await?;
            println!(
                "plugin {} (protocol v{}) in its own process on {}",
                info.name,
                info.protocol_version,
                sock.display()
            );
            let direct = MemoryProvider::new();
            let (mut d, mut p) = (Series::default(), Series::default());
            // Warm-up: connection, allocations, page faults.
            block(&direct, 200, &mut Series::default()).await?;
            block(&plugin, 200, &mut Series::default()).await?;
            let mut left = args.calls;
            while left > 0 {
                let n = left.min(args.block.max(1));
                block(&direct, n, &mut d).await?;
                block(&plugin, n, &mut p).await?;
                left -= n;
            }
            report("CreateInstance", &mut d.create, &mut p.create);
            report("DeleteInstance", &mut d.delete, &mut p.delete);
            anyhow::Ok(())
        }
        .await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        r
    })
}
