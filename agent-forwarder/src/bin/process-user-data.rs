//! `process-user-data`: the pod VM's user-data step (flags and wiring; the
//! logic is in `agent_forwarder::userdata_source`).

use agent_forwarder::userdata_source::{fetch, write_out, Source, METADATA_ENDPOINT};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Config drive, then AWS, Azure and GCP metadata services.
    Auto,
    ConfigDrive,
    File,
    Aws,
    Azure,
    Gcp,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reads the pod VM's user data and writes the forwarder config, initdata and registry credentials"
)]
struct Args {
    #[arg(
        long,
        value_enum,
        env = "PEERPOD_USERDATA_SOURCE",
        default_value = "auto"
    )]
    source: Kind,
    /// Where the NoCloud / config-drive ISO is mounted.
    #[arg(
        long,
        env = "PEERPOD_CONFIG_DRIVE_DIR",
        default_value = "/media/cidata"
    )]
    config_drive_dir: PathBuf,
    /// The document, for `--source file`.
    #[arg(long, env = "PEERPOD_USERDATA_FILE")]
    file: Option<PathBuf>,
    /// Output directory (daemon.json, initdata, auth.json).
    #[arg(long, env = "PEERPOD_USERDATA_OUT", default_value = "/run/peerpod")]
    out_dir: PathBuf,
    /// Seconds allowed per metadata source.
    #[arg(long, env = "PEERPOD_USERDATA_TIMEOUT", default_value_t = 10)]
    timeout: u64,
    #[arg(long, env = "PEERPOD_AWS_METADATA", default_value = METADATA_ENDPOINT)]
    aws_endpoint: String,
    #[arg(long, env = "PEERPOD_AZURE_METADATA", default_value = METADATA_ENDPOINT)]
    azure_endpoint: String,
    #[arg(long, env = "PEERPOD_GCP_METADATA", default_value = METADATA_ENDPOINT)]
    gcp_endpoint: String,
}

fn main() -> anyhow::Result<()> {
    peerpod_logging::init(peerpod_logging::Colour::Never);
    let a = Args::parse();
    let drive = Source::ConfigDrive(a.config_drive_dir.clone());
    let sources = match a.source {
        Kind::Auto => vec![
            drive,
            Source::Aws(a.aws_endpoint.clone()),
            Source::Azure(a.azure_endpoint.clone()),
            Source::Gcp(a.gcp_endpoint.clone()),
        ],
        Kind::ConfigDrive => vec![drive],
        Kind::File => {
            vec![Source::File(a.file.clone().ok_or_else(|| {
                anyhow::anyhow!("--source file needs --file <path>")
            })?)]
        }
        Kind::Aws => vec![Source::Aws(a.aws_endpoint.clone())],
        Kind::Azure => vec![Source::Azure(a.azure_endpoint.clone())],
        Kind::Gcp => vec![Source::Gcp(a.gcp_endpoint.clone())],
    };
    let (source, ud) = fetch(&sources, Duration::from_secs(a.timeout))?;
    let written = write_out(&ud, &a.out_dir)?;
    tracing::info!(
        source = %source.describe(),
        files = ?written,
        initdata = ud.initdata.is_some(),
        registry_auth = ud.registry_auth.is_some(),
        "user data written"
    );
    Ok(())
}
