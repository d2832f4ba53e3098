//! The log set-up every peer pods binary shares (node daemon, forwarder,
//! user-data step, controller, webhook, plugin servers), so they read
//! `RUST_LOG` the same way, log to stderr, and a bad filter is reported
//! instead of silently dropped.

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset or unusable.
pub const DEFAULT_FILTER: &str = "info";

/// Whether log lines carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// Only when stderr is a terminal (not in a journal or a pod's log).
    WhenTerminal,
    /// Never: for output that lands on a serial console log, where escape
    /// codes garble what a reader sees.
    Never,
}

/// The filter `rust_log` (the value of `RUST_LOG`) asks for, or the default
/// with the reason `rust_log` could not be used.
pub fn filter_for(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(v) => match EnvFilter::try_new(v) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new(DEFAULT_FILTER),
                Some(format!(
                    "RUST_LOG={v:?} is not a valid filter ({e}); logging at {DEFAULT_FILTER}"
                )),
            ),
        },
    }
}

/// Installs the process's logger: stderr, the `RUST_LOG` filter (default
/// `info`), colour as asked. A bad `RUST_LOG` is named in a warning. A
/// second call keeps the first logger.
pub fn init(colour: Colour) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, problem) = filter_for(rust_log.as_deref());
    let ansi = match colour {
        Colour::WhenTerminal => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        Colour::Never => false,
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init()
        .is_ok();
    if let (true, Some(problem)) = (installed, problem) {
        tracing::warn!("{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_blank_means_info() {
        for v in [None, Some(""), Some("  ")] {
            let (f, problem) = filter_for(v);
            assert_eq!(f.to_string(), DEFAULT_FILTER);
            assert_eq!(problem, None);
        }
    }

    #[test]
    fn a_valid_filter_is_taken_as_given() {
        let (f, problem) = filter_for(Some("warn,cloud_api_adaptor=debug"));
        assert_eq!(problem, None);
        let s = f.to_string();
        assert!(s.contains("cloud_api_adaptor=debug"), "{s}");
        assert!(s.contains("warn"), "{s}");
    }

    #[test]
    fn a_bad_filter_falls_back_and_is_named() {
        let (f, problem) = filter_for(Some("cloud_api_adaptor=loud"));
        assert_eq!(f.to_string(), DEFAULT_FILTER);
        let problem = problem.expect("the bad filter is reported");
        assert!(problem.contains("cloud_api_adaptor=loud"), "{problem}");
    }
}
