//! `CLOUD_PROVIDER`: the Go adaptor's deployments name the provider in
//! peer-pods-cm rather than on the command line. When the binary is run
//! without a provider subcommand, the one this variable names is put in
//! front of the other arguments (global flags may follow a subcommand, so
//! nothing else changes).

use std::ffi::OsString;

/// The environment variable naming the provider.
pub const ENV: &str = "CLOUD_PROVIDER";

/// `args` (program name first) with `provider` inserted as the
/// subcommand when `args` has none. Help and version requests and argument
/// errors are left for the real parse to report. Errors: no subcommand and
/// no (or an empty) `provider`, or one this build does not have.
pub fn with_provider(
    cmd: clap::Command,
    args: Vec<OsString>,
    provider: Option<String>,
) -> Result<Vec<OsString>, String> {
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let probe = cmd.subcommand_required(false).arg_required_else_help(false);
    match probe.try_get_matches_from(&args) {
        Ok(m) if m.subcommand_name().is_none() => {}
        // A subcommand, --help, --version or an error: parse as given.
        _ => return Ok(args),
    }
    let provider = provider.map(|p| p.trim().to_string()).unwrap_or_default();
    if provider.is_empty() {
        return Err(format!(
            "no provider: name one as the subcommand or in {ENV} (this build has: {})",
            names.join(", ")
        ));
    }
    if !names.contains(&provider) {
        return Err(format!(
            "{ENV}={provider:?} is not a provider of this build (it has: {}); \
             the cloud providers are cargo features of cloud-api-adaptor",
            names.join(", ")
        ));
    }
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut it = args.into_iter();
    out.extend(it.next());
    out.push(provider.into());
    out.extend(it);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    #[command(version)]
    struct Cli {
        #[arg(long, global = true, default_value_t = 10)]
        limit: i64,
        #[arg(long, global = true)]
        check: bool,
        #[command(subcommand)]
        p: P,
    }
    #[derive(Subcommand, Debug, PartialEq)]
    enum P {
        Local,
        Aws {
            #[arg(long)]
            ami: Option<String>,
        },
    }

    fn run(args: &[&str], env: Option<&str>) -> Result<Vec<String>, String> {
        let args = args.iter().map(OsString::from).collect();
        with_provider(Cli::command(), args, env.map(String::from))
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn the_env_names_the_subcommand_when_none_is_given() {
        let a = run(&["caa", "--limit", "5", "--check"], Some("aws")).unwrap();
        assert_eq!(a, ["caa", "aws", "--limit", "5", "--check"]);
        let cli = Cli::try_parse_from(&a).unwrap();
        assert_eq!(cli.p, P::Aws { ami: None });
        assert_eq!(cli.limit, 5);
        assert!(cli.check);
        assert_eq!(run(&["caa"], Some(" local ")).unwrap(), ["caa", "local"]);
    }

    #[test]
    fn a_given_subcommand_wins_and_help_passes_through() {
        assert_eq!(
            run(&["caa", "local", "--limit", "3"], Some("aws")).unwrap(),
            ["caa", "local", "--limit", "3"]
        );
        assert_eq!(
            run(&["caa", "--help"], Some("aws")).unwrap(),
            ["caa", "--help"]
        );
        assert_eq!(
            run(&["caa", "--version"], None).unwrap(),
            ["caa", "--version"]
        );
        assert_eq!(
            run(&["caa", "--bogus"], Some("aws")).unwrap(),
            ["caa", "--bogus"]
        );
    }

    #[test]
    fn missing_or_unknown_provider_is_a_clear_error() {
        let e = run(&["caa"], None).unwrap_err();
        assert!(
            e.contains("CLOUD_PROVIDER") && e.contains("local, aws"),
            "{e}"
        );
        assert!(run(&["caa"], Some("  "))
            .unwrap_err()
            .contains("no provider"));
        let e = run(&["caa", "--check"], Some("gcp")).unwrap_err();
        assert!(e.contains("\"gcp\"") && e.contains("local, aws"), "{e}");
    }
}
