//! The GCP provider's settings. The names follow the issue and the Go
//! adaptor's GCP provider where it has one; values arrive as text (flags
//! or env) and are checked here, a malformed one being an error that
//! names its key.

pub use peerpod_provider_api::settings::ConfigError;
use peerpod_provider_api::settings::{bad, non_empty, parse_bool, parse_list, parse_tags};
use std::collections::BTreeMap;

/// The settings without which `check` fails (env names). The chart's
/// providers/gcp.yaml and its render-time check are generated from it.
pub const REQUIRED_ENV: &[&str] = &["GCP_PROJECT_ID", "GCP_ZONE", "PODVM_IMAGE_NAME"];

/// Default machine type: an AMD machine that can run SEV and SEV-SNP.
pub const DEFAULT_MACHINE_TYPE: &str = "n2d-standard-2";
/// Largest value of one GCE metadata entry (`user-data`).
pub const MAX_USER_DATA_BYTES: usize = 256 * 1024;

/// Which confidential computing technology the instances use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidentialType {
    Sev,
    SevSnp,
    Tdx,
}

impl ConfidentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfidentialType::Sev => "SEV",
            ConfidentialType::SevSnp => "SEV_SNP",
            ConfidentialType::Tdx => "TDX",
        }
    }
}

/// The checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpConfig {
    /// `GCP_PROJECT_ID` (required).
    pub project: String,
    /// `GCP_ZONE` (required).
    pub zone: String,
    /// `GCP_MACHINE_TYPE`.
    pub machine_type: String,
    /// `GCP_MACHINE_TYPES`: the types a pod may get (comma list).
    pub machine_types: Vec<String>,
    /// `GCP_NETWORK`: a network name or path (`global/networks/default`).
    pub network: String,
    /// `GCP_SUBNETWORK`: a subnetwork path, when the network has several.
    pub subnetwork: Option<String>,
    /// `PODVM_IMAGE_NAME` (required): an image name of the project, or a
    /// path (`projects/p/global/images/i`).
    pub image: String,
    /// `GCP_CONFIDENTIAL_TYPE`; `None` with `DISABLECVM=true`.
    pub confidential: Option<ConfidentialType>,
    /// `GCP_DISK_TYPE`.
    pub disk_type: String,
    /// `ROOT_VOLUME_SIZE` in GiB.
    pub disk_size_gib: Option<i64>,
    /// `USE_PUBLIC_IP`: give the VM an external address and reach it there.
    pub use_public_ip: bool,
    /// `TAGS`: extra labels `k=v,…`.
    pub labels: BTreeMap<String, String>,
    /// `GCP_ENDPOINT`: another Compute endpoint (private endpoint, tests).
    pub endpoint: Option<String>,
    /// `GCP_CREDENTIALS`: a service account key (JSON text); else the
    /// application default credentials (workload identity on GKE).
    pub credentials_json: Option<String>,
}

/// The raw settings, each as given.
#[derive(Debug, Clone, Default)]
pub struct RawGcpConfig {
    pub project: Option<String>,
    pub zone: Option<String>,
    pub machine_type: Option<String>,
    pub machine_types: Option<String>,
    pub network: Option<String>,
    pub subnetwork: Option<String>,
    pub image: Option<String>,
    pub disable_cvm: Option<String>,
    pub confidential_type: Option<String>,
    pub disk_type: Option<String>,
    pub disk_size: Option<String>,
    pub use_public_ip: Option<String>,
    pub tags: Option<String>,
    pub endpoint: Option<String>,
    pub credentials_json: Option<String>,
}

/// A GCE label key or value: lowercase letters, digits, `_` and `-`, at
/// most 63 characters (keys start with a letter).
pub fn valid_label(s: &str, key: bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && (!key || s.starts_with(|c: char| c.is_ascii_lowercase()))
}

impl RawGcpConfig {
    /// Checks every value.
    pub fn check(&self) -> Result<GcpConfig, ConfigError> {
        let project = non_empty(&self.project).ok_or_else(|| bad("GCP_PROJECT_ID", "required"))?;
        let zone = non_empty(&self.zone).ok_or_else(|| bad("GCP_ZONE", "required"))?;
        let image = non_empty(&self.image).ok_or_else(|| bad("PODVM_IMAGE_NAME", "required"))?;
        let machine_types = parse_list(&self.machine_types);
        let confidential = if parse_bool("DISABLECVM", &self.disable_cvm)? {
            None
        } else {
            Some(
                match non_empty(&self.confidential_type)
                    .map(|s| s.to_ascii_uppercase())
                    .as_deref()
                {
                    None | Some("SEV_SNP") | Some("SEV-SNP") => ConfidentialType::SevSnp,
                    Some("SEV") => ConfidentialType::Sev,
                    Some("TDX") => ConfidentialType::Tdx,
                    Some(other) => {
                        return Err(bad(
                            "GCP_CONFIDENTIAL_TYPE",
                            format!("{other:?}: expected SEV, SEV_SNP or TDX"),
                        ))
                    }
                },
            )
        };
        let disk_size_gib = match non_empty(&self.disk_size) {
            None => None,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (10..=65536).contains(&n) => Some(n),
                _ => {
                    return Err(bad(
                        "ROOT_VOLUME_SIZE",
                        format!("{s:?} is not a size in GiB between 10 and 65536"),
                    ))
                }
            },
        };
        let labels = parse_tags("TAGS", &self.tags, |k, v| {
            if valid_label(k, true) && (v.is_empty() || valid_label(v, false)) {
                Ok(())
            } else {
                Err(
                    "GCE labels are lowercase letters, digits, '_' and '-', at most 63 \
                     characters, keys starting with a letter"
                        .to_string(),
                )
            }
        })?;
        if let Some(e) = non_empty(&self.endpoint) {
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(bad("GCP_ENDPOINT", format!("{e:?} is not an http(s) URL")));
            }
        }
        if let Some(c) = non_empty(&self.credentials_json) {
            if !c.starts_with('{') {
                return Err(bad(
                    "GCP_CREDENTIALS",
                    "expected the JSON text of a service account key",
                ));
            }
        }
        Ok(GcpConfig {
            project,
            zone,
            machine_type: non_empty(&self.machine_type)
                .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string()),
            machine_types,
            network: non_empty(&self.network).unwrap_or_else(|| "default".to_string()),
            subnetwork: non_empty(&self.subnetwork),
            image,
            confidential,
            disk_type: non_empty(&self.disk_type).unwrap_or_else(|| "pd-balanced".to_string()),
            disk_size_gib,
            use_public_ip: parse_bool("USE_PUBLIC_IP", &self.use_public_ip)?,
            labels,
            endpoint: non_empty(&self.endpoint),
            credentials_json: non_empty(&self.credentials_json),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// REQUIRED_ENV is exactly what `check` requires: with only those set
    /// it passes, and without any one of them it fails naming that key.
    #[test]
    fn required_env_is_what_check_requires() {
        let set = |r: &mut RawGcpConfig, key: &str| match key {
            "GCP_PROJECT_ID" => r.project = Some("proj".into()),
            "GCP_ZONE" => r.zone = Some("us-central1-a".into()),
            "PODVM_IMAGE_NAME" => r.image = Some("podvm".into()),
            other => panic!("{other} in REQUIRED_ENV has no field here"),
        };
        let mut all = RawGcpConfig::default();
        REQUIRED_ENV.iter().for_each(|k| set(&mut all, k));
        all.check().expect("the required keys alone suffice");
        for missing in REQUIRED_ENV {
            let mut r = RawGcpConfig::default();
            REQUIRED_ENV
                .iter()
                .filter(|k| *k != missing)
                .for_each(|k| set(&mut r, k));
            assert_eq!(r.check().unwrap_err().key, *missing);
        }
    }

    fn base() -> RawGcpConfig {
        RawGcpConfig {
            project: Some("proj".into()),
            zone: Some("us-central1-a".into()),
            image: Some("podvm".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = base().check().unwrap();
        assert_eq!(c.machine_type, "n2d-standard-2");
        assert_eq!(c.confidential, Some(ConfidentialType::SevSnp));
        assert_eq!(c.network, "default");
        assert!(!c.use_public_ip);
    }

    type Mutation = Box<dyn Fn(&mut RawGcpConfig)>;

    #[test]
    fn every_bad_value_names_its_key() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("GCP_PROJECT_ID", Box::new(|r| r.project = None)),
            ("GCP_ZONE", Box::new(|r| r.zone = Some(" ".into()))),
            ("PODVM_IMAGE_NAME", Box::new(|r| r.image = None)),
            (
                "DISABLECVM",
                Box::new(|r| r.disable_cvm = Some("maybe".into())),
            ),
            (
                "GCP_CONFIDENTIAL_TYPE",
                Box::new(|r| r.confidential_type = Some("SGX".into())),
            ),
            (
                "ROOT_VOLUME_SIZE",
                Box::new(|r| r.disk_size = Some("5".into())),
            ),
            ("TAGS", Box::new(|r| r.tags = Some("Team=QA".into()))),
            ("TAGS", Box::new(|r| r.tags = Some("novalue".into()))),
            (
                "USE_PUBLIC_IP",
                Box::new(|r| r.use_public_ip = Some("y3s".into())),
            ),
            (
                "GCP_ENDPOINT",
                Box::new(|r| r.endpoint = Some("ftp://x".into())),
            ),
            (
                "GCP_CREDENTIALS",
                Box::new(|r| r.credentials_json = Some("/path".into())),
            ),
        ];
        for (key, mutate) in cases {
            let mut r = base();
            mutate(&mut r);
            let e = r.check().unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn values_parse() {
        let mut r = base();
        r.disable_cvm = Some("true".into());
        r.tags = Some("team=qa, cost-center=42".into());
        r.machine_types = Some("n2d-standard-2, n2d-standard-4".into());
        r.disk_size = Some("30".into());
        let c = r.check().unwrap();
        assert_eq!(c.confidential, None);
        assert_eq!(c.labels.get("cost-center").map(String::as_str), Some("42"));
        assert_eq!(c.machine_types, vec!["n2d-standard-2", "n2d-standard-4"]);
        assert_eq!(c.disk_size_gib, Some(30));
        let mut r = base();
        r.confidential_type = Some("tdx".into());
        assert_eq!(r.check().unwrap().confidential, Some(ConfidentialType::Tdx));
    }
}
