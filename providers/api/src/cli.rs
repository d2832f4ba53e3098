//! What every provider's command-line module (`providers/<p>/src/cli.rs`)
//! shares: the context the adaptor hands it when it builds the provider,
//! and the one error type the adaptor reports. Each provider owns its own
//! flags (clap `Args`, with the Go adaptor's env names) next to its code,
//! so the adaptor binary only lists them and a new provider is one line
//! there.

use std::path::PathBuf;

/// What a provider may need from the adaptor when it is built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The adaptor's state directory (a provider keeping records on disk
    /// puts them below it).
    pub state_dir: PathBuf,
}

/// Why a provider could not be built from its flags.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A flag or env var is missing or malformed (the message names it).
    #[error("{provider} provider configuration: {message}")]
    Config {
        provider: &'static str,
        message: String,
    },
    /// The configuration is fine but the provider could not start
    /// (credentials, client set-up).
    #[error("{provider} provider: {message}")]
    Init {
        provider: &'static str,
        message: String,
    },
}

impl BuildError {
    pub fn config(provider: &'static str, e: impl std::fmt::Display) -> Self {
        BuildError::Config {
            provider,
            message: e.to_string(),
        }
    }

    pub fn init(provider: &'static str, e: impl std::fmt::Display) -> Self {
        BuildError::Init {
            provider,
            message: e.to_string(),
        }
    }
}
