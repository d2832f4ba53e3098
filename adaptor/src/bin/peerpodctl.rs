//! `peerpodctl`: the operator CLI. Talks to the daemon's sockets only
//! (and reads its persisted state for `list`).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::config::{AdaptorConfig, PathArgs};
use cloud_api_adaptor::state::Store;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Operate a cloud-api-adaptor: create, check, list and stop peer pod sandboxes"
)]
struct Cli {
    #[command(flatten)]
    paths: PathArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the daemon's remote hypervisor API version.
    Version,
    /// CreateVM + StartVM with the annotations a Kata shim sends; prints the agent socket.
    Create {
        /// Pod name (io.kubernetes.cri.sandbox-name).
        #[arg(long)]
        pod: String,
        /// Pod namespace (io.kubernetes.cri.sandbox-namespace).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Sandbox id (default: random, 64 hex characters like containerd's).
        #[arg(long)]
        id: Option<String>,
        /// Pod network namespace path.
        #[arg(long, default_value = "")]
        netns: String,
        /// vCPUs (fractions round up).
        #[arg(long)]
        vcpus: Option<String>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<String>,
        /// More annotations, key=value (repeatable).
        #[arg(long = "annotation", value_name = "KEY=VALUE")]
        annotations: Vec<String>,
        /// How long StartVM may take, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Health check through a sandbox's agent socket (adaptor → forwarder → kata-agent).
    Check { sandbox: String },
    /// Sandboxes from the daemon's persisted state: phase, instance, IP, age.
    List,
    /// StopVM (returns at once; teardown continues in the daemon).
    Stop { sandbox: String },
}

fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..64)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

fn age(created: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(created);
    let s = now.saturating_sub(created);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            let v = Hypervisor::connect(&cli.paths.socket)
                .await?
                .version()
                .await?;
            println!("{v}");
        }
        Cmd::Create {
            pod,
            namespace,
            id,
            netns,
            vcpus,
            memory,
            annotations,
            timeout,
        } => {
            let id = id.unwrap_or_else(random_id);
            let mut a = shim_annotations(&pod, &namespace);
            use cloud_api_adaptor::annotations::{DEFAULT_MEMORY, DEFAULT_VCPUS};
            if let Some(v) = vcpus {
                a.insert(DEFAULT_VCPUS.into(), v);
            }
            if let Some(m) = memory {
                a.insert(DEFAULT_MEMORY.into(), m);
            }
            for kv in annotations {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--annotation {kv:?}: expected KEY=VALUE");
                };
                a.insert(k.into(), v.into());
            }
            let h = Hypervisor::connect(&cli.paths.socket).await?;
            let socket = h.create_vm(&id, a, &netns).await?;
            eprintln!("created sandbox {id}; starting its VM");
            let started = std::time::Instant::now();
            h.start_vm(&id, Duration::from_secs(timeout)).await?;
            eprintln!("sandbox {id} running after {:?}", started.elapsed());
            println!("{id} {socket}");
        }
        Cmd::Check { sandbox } => {
            let cfg = AdaptorConfig {
                pods_dir: cli.paths.pods_dir,
                ..AdaptorConfig::new("")
            };
            let path = cfg.agent_socket(&sandbox);
            if !path.exists() {
                bail!("no agent socket for sandbox {sandbox} at {} (unknown sandbox, or the daemon is not running)", path.display());
            }
            let status = agent_health(&path, Duration::from_secs(10))
                .await
                .with_context(|| format!("Health check of sandbox {sandbox}"))?;
            println!("sandbox {sandbox}: grpc.Health/Check = {status:?}");
        }
        Cmd::List => {
            let store = Store::open(&cli.paths.state_dir)
                .with_context(|| format!("reading {}", cli.paths.state_dir.display()))?;
            let (records, bad) = store.load_all()?;
            println!(
                "{:<20} {:<24} {:<12} {:<14} {:<16} {:>5}",
                "SANDBOX", "POD", "PHASE", "INSTANCE", "IP", "AGE"
            );
            for r in records {
                let short: String = r.id.chars().take(20).collect();
                println!(
                    "{:<20} {:<24} {:<12} {:<14} {:<16} {:>5}",
                    short,
                    format!("{}/{}", r.spec.pod_namespace, r.spec.pod_name),
                    r.phase.as_str(),
                    r.instance_id.as_deref().unwrap_or("-"),
                    r.instance_ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    age(r.created_at)
                );
            }
            for e in bad {
                eprintln!("warning: {e}");
            }
        }
        Cmd::Stop { sandbox } => {
            Hypervisor::connect(&cli.paths.socket)
                .await?
                .stop_vm(&sandbox)
                .await?;
            println!("sandbox {sandbox}: stop accepted; teardown continues in the daemon");
        }
    }
    Ok(())
}
