//! The provider subcommands `cloud-api-adaptor` and `peerpod-ctrl` both
//! take (`<binary> <provider> [provider flags]`), so the two daemons accept
//! the same providers, flags and environment (one `peer-pods-cm` for both)
//! and the controller can delete what any adaptor made, plugin providers
//! included. Each provider's flags live in its own crate
//! (`providers/<p>/src/cli.rs`); the cloud SDK ones are behind features.

use clap::Subcommand;
use peerpod_provider_api::cli::{BuildContext, BuildError};
use peerpod_provider_api::{Provider, ProviderError};
use peerpod_provider_plugin::metrics::PluginMetrics;
use std::sync::Arc;

/// One subcommand per provider built in.
#[derive(Subcommand)]
pub enum ProviderCmd {
    /// Instances are processes in network namespaces on this host (no cloud needed).
    Local(peerpod_provider_local::cli::Args),
    /// Pod VMs are EC2 instances (AMD SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "aws")]
    Aws(Box<peerpod_provider_aws::cli::Args>),
    /// Pod VMs are Compute Engine confidential instances (SEV-SNP unless configured otherwise).
    #[cfg(feature = "gcp")]
    Gcp(Box<peerpod_provider_gcp::cli::Args>),
    /// Pod VMs are libvirt domains (QEMU/TCG by default, KVM when configured).
    #[cfg(feature = "libvirt")]
    Libvirt(Box<peerpod_provider_libvirt::cli::Args>),
    /// Pod VMs are Azure confidential VMs (SEV-SNP unless DISABLECVM=true).
    #[cfg(feature = "azure")]
    Azure(Box<peerpod_provider_azure::cli::Args>),
    /// An out-of-process provider (any language) serving the provider plugin protocol on a unix socket.
    Plugin(peerpod_provider_plugin::cli::Args),
}

/// A provider made from its subcommand.
pub struct Built {
    pub provider: Arc<dyn Provider>,
    /// The plugin client's per-call metrics (plugin provider only).
    pub plugin_metrics: Option<PluginMetrics>,
}

impl ProviderCmd {
    /// Makes the provider (reading its configuration; the plugin provider
    /// also waits for its plugin to answer).
    pub async fn build(self, ctx: &BuildContext) -> Result<Built, BuildError> {
        let provider = match self {
            ProviderCmd::Plugin(a) => {
                let (provider, m) = a.build_with_metrics(ctx).await?;
                return Ok(Built {
                    provider,
                    plugin_metrics: Some(m),
                });
            }
            ProviderCmd::Local(a) => a.build(ctx).await?,
            #[cfg(feature = "aws")]
            ProviderCmd::Aws(a) => a.build(ctx).await?,
            #[cfg(feature = "gcp")]
            ProviderCmd::Gcp(a) => a.build(ctx).await?,
            #[cfg(feature = "libvirt")]
            ProviderCmd::Libvirt(a) => a.build(ctx).await?,
            #[cfg(feature = "azure")]
            ProviderCmd::Azure(a) => a.build(ctx).await?,
        };
        Ok(Built {
            provider,
            plugin_metrics: None,
        })
    }
}

/// The provider's preflight failed: the daemon must not serve.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider} configuration check failed")]
pub struct VerifyFailed {
    pub provider: String,
    #[source]
    pub source: ProviderError,
}

impl Built {
    /// Runs the provider's preflight (`verify`, what `--check` runs) and
    /// logs each check it passed, as both daemons do before they serve;
    /// returns the checks.
    pub async fn verify_logged(&self) -> Result<Vec<String>, VerifyFailed> {
        let p = &self.provider;
        let checks = p.verify().await.map_err(|source| VerifyFailed {
            provider: p.name().to_string(),
            source,
        })?;
        for line in &checks {
            tracing::info!(provider = p.name(), "checked: {line}");
        }
        Ok(checks)
    }
}

/// What a cloud provider crate declares beside its flags: the settings its
/// check cannot do without, and the credentials its SDK reads from the
/// environment as (name, help).
pub struct ProviderSettings {
    pub required: &'static [&'static str],
    pub sdk_env: &'static [(&'static str, &'static str)],
}

/// The chart's providers built in, by subcommand name.
#[allow(clippy::vec_init_then_push)] // each push is behind its feature
pub fn chart_providers() -> Vec<(&'static str, ProviderSettings)> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(feature = "aws")]
    v.push((
        "aws",
        ProviderSettings {
            required: peerpod_provider_aws::REQUIRED_ENV,
            sdk_env: peerpod_provider_aws::SDK_ENV,
        },
    ));
    #[cfg(feature = "azure")]
    v.push((
        "azure",
        ProviderSettings {
            required: peerpod_provider_azure::REQUIRED_ENV,
            sdk_env: &[],
        },
    ));
    #[cfg(feature = "gcp")]
    v.push((
        "gcp",
        ProviderSettings {
            required: peerpod_provider_gcp::REQUIRED_ENV,
            sdk_env: &[],
        },
    ));
    #[cfg(feature = "libvirt")]
    v.push((
        "libvirt",
        ProviderSettings {
            required: peerpod_provider_libvirt::REQUIRED_ENV,
            sdk_env: &[],
        },
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        provider: ProviderCmd,
    }

    #[tokio::test]
    async fn the_local_subcommand_builds_the_local_provider() {
        let d = std::env::temp_dir().join(format!("pp-select-{}", std::process::id()));
        let cli = Cli::try_parse_from(["x", "local"]).unwrap();
        let built = cli
            .provider
            .build(&BuildContext {
                state_dir: d.clone(),
            })
            .await
            .unwrap();
        assert_eq!(built.provider.name(), "local");
        assert!(built.plugin_metrics.is_none());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn an_unknown_provider_is_refused_by_name() {
        let e = Cli::try_parse_from(["x", "nosuchcloud"]).err().unwrap();
        assert!(e.to_string().contains("nosuchcloud"), "{e}");
    }
}
