//! The adaptor's settings as data, read from its own clap definitions, and
//! the install files made from them: the Helm chart's
//! `providers/<provider>.yaml` and `generated/reference.json` (which the
//! chart's templates read to refuse unknown or missing settings). One
//! source of truth: a flag added to the binary appears in every file, and
//! the chart test fails until they are regenerated
//! (`scripts/gen-install.sh`).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Environment variables the chart sets itself, with where their value
/// comes from; they are refused in `config` (peer-pods-cm).
pub const CHART_MANAGED: &[(&str, &str)] = &[
    ("CLOUD_PROVIDER", "the value provider"),
    ("NODE_NAME", "the pod's spec.nodeName"),
    ("PEERPOD_PROBE_LISTEN", "probes.address and probes.port"),
    (
        "PEERPOD_SOCKET",
        "the host path /run/peerpod the chart mounts",
    ),
    (
        "PEERPOD_PODS_DIR",
        "the host path /run/peerpod the chart mounts",
    ),
    (
        "PEERPOD_STATE_DIR",
        "the host path /var/lib/peerpod the chart mounts",
    ),
    (
        "PEERPOD_REGISTRY_AUTH_FILE",
        "registryAuth.secretName, mounted at the default path",
    ),
    ("PEERPOD_CLUSTER_ID", "the value clusterId"),
    ("RUST_LOG", "the value logLevel"),
];

/// Read by the binary but not a clap argument: documented here so the
/// reference is complete.
pub const EXTRA_GLOBAL_ENV: &[(&str, &str)] = &[
    (
        "CLOUD_PROVIDER",
        "The provider to run when no provider subcommand is given (aws, azure, gcp, libvirt, local).",
    ),
    ("RUST_LOG", "Log filter (tracing syntax), default info."),
];

/// One setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// Environment variable name.
    pub env: String,
    /// The long flag, when it has one (`--limit-per-node`).
    pub flag: String,
    /// The default clap applies; empty when the code decides (the help
    /// text then says it).
    pub default: String,
    /// The help text, one line.
    pub help: String,
    /// Kept out of the ConfigMap and logs (clap `hide_env_values`, or a
    /// credential read by a cloud SDK).
    pub secret: bool,
    /// Set by the chart itself: where from (empty: the operator sets it).
    pub chart_managed: String,
}

/// One provider's settings.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderReference {
    /// Settings without which the provider does not start.
    pub required: Vec<String>,
    pub settings: Vec<Setting>,
}

/// One RBAC rule as the chart renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RbacRule {
    #[serde(rename = "apiGroups")]
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    /// Restricts the rule to these objects (the fixed names the chart gives them).
    #[serde(
        rename = "resourceNames",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

impl RbacRule {
    /// The chart's form of one rule of the code's tables.
    pub fn from_code(r: &peerpod_kube::rbac::Rule) -> Self {
        Self {
            api_groups: vec![r.group.to_string()],
            resources: vec![r.resource.to_string()],
            resource_names: r.names.iter().map(|n| n.to_string()).collect(),
            verbs: r.verbs.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// The rule sets the chart renders, by key (`<component>`: a ClusterRole,
/// `<component>-namespace`: a Role in the release namespace), from the
/// tables in `peerpod_kube::rbac`.
pub fn rbac_tables() -> BTreeMap<String, Vec<RbacRule>> {
    peerpod_kube::rbac::COMPONENTS
        .iter()
        .map(|(key, rules)| {
            (
                key.to_string(),
                rules.iter().map(RbacRule::from_code).collect(),
            )
        })
        .collect()
}

/// Everything the chart needs to know about the binaries.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub generated_by: String,
    pub global: Vec<Setting>,
    pub providers: BTreeMap<String, ProviderReference>,
    /// Per component (adaptor, …): the API calls its code makes.
    pub rbac: BTreeMap<String, Vec<RbacRule>>,
}

/// What a provider crate adds besides its clap arguments.
pub use peerpod_providers::ProviderSettings as ProviderExtras;

fn chart_managed(env: &str) -> String {
    CHART_MANAGED
        .iter()
        .find(|(e, _)| *e == env)
        .map(|(_, why)| why.to_string())
        .unwrap_or_default()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The settings of one command level (not its subcommands): every
/// argument with an environment variable.
pub fn settings_of(cmd: &clap::Command) -> Vec<Setting> {
    let mut out: Vec<Setting> = cmd
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some(Setting {
                flag: a.get_long().map(|l| format!("--{l}")).unwrap_or_default(),
                default: a
                    .get_default_values()
                    .iter()
                    .filter_map(|v| v.to_str())
                    .collect::<Vec<_>>()
                    .join(","),
                help: a
                    .get_help()
                    .map(|h| one_line(&h.to_string()))
                    .unwrap_or_default(),
                secret: a.is_hide_env_values_set(),
                chart_managed: chart_managed(&env),
                env,
            })
        })
        .collect();
    out.sort_by(|a, b| a.env.cmp(&b.env));
    out
}

/// Builds the reference from the binary's command (its global arguments
/// and its provider subcommands), each provider's extras and the RBAC
/// rules per component.
pub fn reference(
    cli: &clap::Command,
    providers: &BTreeMap<&str, ProviderExtras>,
    rbac: BTreeMap<String, Vec<RbacRule>>,
) -> Result<Reference, String> {
    let mut global = settings_of(cli);
    for (env, help) in EXTRA_GLOBAL_ENV {
        if !global.iter().any(|s| s.env == *env) {
            global.push(Setting {
                env: env.to_string(),
                flag: String::new(),
                default: String::new(),
                help: help.to_string(),
                secret: false,
                chart_managed: chart_managed(env),
            });
        }
    }
    global.sort_by(|a, b| a.env.cmp(&b.env));
    let mut out = BTreeMap::new();
    for (name, extras) in providers {
        let sub = cli
            .find_subcommand(name)
            .ok_or_else(|| format!("the binary has no provider subcommand {name}"))?;
        let mut settings = settings_of(sub);
        for (env, help) in extras.sdk_env {
            settings.push(Setting {
                env: env.to_string(),
                flag: String::new(),
                default: String::new(),
                help: help.to_string(),
                secret: true,
                chart_managed: String::new(),
            });
        }
        settings.sort_by(|a, b| a.env.cmp(&b.env));
        for r in extras.required {
            if !settings.iter().any(|s| s.env == *r) {
                return Err(format!(
                    "{name}: required {r} is no setting of the subcommand"
                ));
            }
        }
        out.insert(
            name.to_string(),
            ProviderReference {
                required: extras.required.iter().map(|s| s.to_string()).collect(),
                settings,
            },
        );
    }
    Ok(Reference {
        generated_by: "cloud-api-adaptor config-reference --format chart-json".into(),
        global,
        providers: out,
        rbac,
    })
}

/// `generated/reference.json`: pretty JSON, one trailing newline.
pub fn chart_json(r: &Reference) -> String {
    let mut s = serde_json::to_string_pretty(r).unwrap_or_default();
    s.push('\n');
    s
}

/// Wraps `text` into `# ` comment lines of at most ~78 columns.
fn comment(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + 2 + line.len() + 1 + word.len() > 78 {
            let _ = writeln!(out, "{indent}# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}# {line}");
    }
}

fn setting_block(out: &mut String, s: &Setting, required: bool) {
    let head = match (s.flag.is_empty(), s.help.is_empty()) {
        (true, _) => s.help.clone(),
        (false, true) => s.flag.clone(),
        (false, false) => format!("{}: {}", s.flag, s.help),
    };
    comment(out, "  ", &head);
    let value = serde_json::to_string(&s.default).unwrap_or_default();
    if required {
        let _ = writeln!(out, "  {}: {value}", s.env);
    } else {
        let _ = writeln!(out, "  # {}: {value}", s.env);
    }
    out.push('\n');
}

/// `providers/<provider>.yaml`: `provider`, then `config` with the
/// required settings uncommented (empty: fill them in) and every other
/// one commented with its default, then the credentials as comments.
pub fn helm_values(r: &Reference, provider: &str) -> Result<String, String> {
    let p = r
        .providers
        .get(provider)
        .ok_or_else(|| format!("unknown provider {provider}"))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The {provider} provider's values for the peerpods chart. Generated from the\n\
         # adaptor's flag definitions by\n\
         #   cloud-api-adaptor config-reference --format helm-values --provider {provider}\n\
         # Do not edit: run scripts/gen-install.sh (the chart test fails when this\n\
         # file and the binary disagree). Copy it, fill in the required settings,\n\
         # uncomment what you change, and install with -f <your copy>.\n"
    );
    let _ = writeln!(out, "provider: {provider}\n");
    if provider == "libvirt" {
        let _ = writeln!(
            out,
            "# The adaptor built with libvirt, and libvirt's client library.\nimage:\n  flavor: libvirt\n"
        );
    }
    let _ = writeln!(
        out,
        "# peer-pods-cm: the settings by their environment names. Required ones are\n\
         # uncommented; the others are commented out with their default (empty:\n\
         # the default the help text names, or none).\n\
         config:"
    );
    let plain = |s: &&Setting| !s.secret && s.chart_managed.is_empty();
    let required: Vec<&Setting> = p
        .settings
        .iter()
        .filter(|s| p.required.contains(&s.env))
        .collect();
    for s in &required {
        setting_block(&mut out, s, true);
    }
    for s in p.settings.iter().filter(plain) {
        if !p.required.contains(&s.env) {
            setting_block(&mut out, s, false);
        }
    }
    let _ = writeln!(out, "  # --- settings of every provider ---\n");
    for s in r.global.iter().filter(plain) {
        setting_block(&mut out, s, false);
    }
    let secrets: Vec<&Setting> = p
        .settings
        .iter()
        .chain(r.global.iter())
        .filter(|s| s.secret && s.chart_managed.is_empty())
        .collect();
    if secrets.is_empty() {
        let _ = writeln!(
            out,
            "# The {provider} provider reads no credentials from the environment."
        );
    } else {
        let _ = writeln!(
            out,
            "# Credentials: the keys of peer-pods-secret (secrets.mode reference: your\n\
             # Secret; secrets.mode create: secrets.values). Prefer workload identity\n\
             # (workloadIdentity) where the cloud has it.\n\
             # secrets:\n\
             #   values:"
        );
        for s in secrets {
            let mut block = String::new();
            comment(&mut block, "", &s.help);
            for line in block.lines() {
                let _ = writeln!(out, "#     {line}");
            }
            let _ = writeln!(out, "#     {}: \"\"", s.env);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        /// Most pods.
        #[arg(long, env = "LIMIT", default_value_t = 10, global = true)]
        limit: i64,
        /// Where.
        #[arg(long, env = "NODE_NAME", global = true)]
        node: Option<String>,
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(Subcommand)]
    enum Cmd {
        Aws(A),
    }
    #[derive(Args)]
    struct A {
        /// The image (required).
        #[arg(long, env = "IMAGE")]
        image: Option<String>,
        /// A key.
        #[arg(long, env = "KEY", hide_env_values = true)]
        key: Option<String>,
    }

    fn r() -> Reference {
        use clap::CommandFactory;
        let mut p = BTreeMap::new();
        p.insert(
            "aws",
            ProviderExtras {
                required: &["IMAGE"],
                sdk_env: &[("SDK_SECRET", "An SDK credential.")],
            },
        );
        reference(&Cli::command(), &p, BTreeMap::new()).unwrap()
    }

    #[test]
    fn settings_come_from_the_clap_definitions() {
        let r = r();
        let limit = r.global.iter().find(|s| s.env == "LIMIT").unwrap();
        assert_eq!(
            (limit.flag.as_str(), limit.default.as_str()),
            ("--limit", "10")
        );
        assert_eq!(limit.help, "Most pods");
        let node = r.global.iter().find(|s| s.env == "NODE_NAME").unwrap();
        assert_eq!(node.chart_managed, "the pod's spec.nodeName");
        let aws = &r.providers["aws"];
        assert_eq!(aws.required, ["IMAGE"]);
        let envs: Vec<_> = aws
            .settings
            .iter()
            .map(|s| (s.env.as_str(), s.secret))
            .collect();
        assert_eq!(
            envs,
            [("IMAGE", false), ("KEY", true), ("SDK_SECRET", true)]
        );
    }

    #[test]
    fn a_required_key_the_command_lacks_is_an_error() {
        use clap::CommandFactory;
        let mut p = BTreeMap::new();
        p.insert(
            "aws",
            ProviderExtras {
                required: &["NOPE"],
                sdk_env: &[],
            },
        );
        let e = reference(&Cli::command(), &p, BTreeMap::new()).unwrap_err();
        assert!(e.contains("NOPE"), "{e}");
    }

    #[test]
    fn values_file_uncomments_required_and_keeps_secrets_out_of_config() {
        let v = helm_values(&r(), "aws").unwrap();
        assert!(v.contains("\n  IMAGE: \"\"\n"), "{v}");
        assert!(v.contains("\n  # LIMIT: \"10\"\n"), "{v}");
        assert!(
            !v.contains("NODE_NAME"),
            "chart-managed settings stay out: {v}"
        );
        let config = v.split("# Credentials").next().unwrap();
        assert!(
            !config.contains("KEY") && !config.contains("SDK_SECRET"),
            "{v}"
        );
        assert!(v.contains("\n#     KEY: \"\"\n"), "{v}");
        assert!(v.contains("\n#     SDK_SECRET: \"\"\n"), "{v}");
        let doc: serde_json::Value = yaml_serde::from_str(&v).unwrap();
        assert_eq!(doc["provider"], "aws");
        assert_eq!(doc["config"]["IMAGE"], "");
        assert_eq!(doc["config"].as_object().unwrap().len(), 1);
    }
}
