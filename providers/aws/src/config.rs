//! The AWS provider's settings, under the names the Go adaptor and its
//! `peer-pods-cm` ConfigMap use, so an existing deployment's ConfigMap
//! works unchanged. Values arrive as text (flags or env) and are checked
//! here; a malformed one is an error naming its key.

pub use peerpod_provider_api::settings::ConfigError;
use peerpod_provider_api::settings::{bad, non_empty, parse_bool, parse_list};
use std::collections::BTreeMap;
use std::time::Duration;

/// The settings without which `check` fails (env names). The chart's
/// providers/aws.yaml and its render-time check are generated from it.
pub const REQUIRED_ENV: &[&str] = &["PODVM_AMI_ID"];

/// Credentials the AWS SDK's default chain reads from the environment
/// (besides IRSA's, which EKS injects): (name, what it is). Listed in the
/// chart's providers/aws.yaml as keys of peer-pods-secret.
pub const SDK_ENV: &[(&str, &str)] = &[
    (
        "AWS_ACCESS_KEY_ID",
        "Access key id of static credentials (prefer IRSA: workloadIdentity.awsRoleArn).",
    ),
    (
        "AWS_SECRET_ACCESS_KEY",
        "Secret access key of static credentials.",
    ),
    (
        "AWS_SESSION_TOKEN",
        "Session token, with temporary static credentials.",
    ),
];

/// Default instance type (the Go adaptor's).
pub const DEFAULT_INSTANCE_TYPE: &str = "m6a.large";
/// Largest user data EC2 accepts (raw, before base64).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// The checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// `PODVM_AMI_ID` (required).
    pub ami_id: String,
    /// `PODVM_INSTANCE_TYPE`.
    pub instance_type: String,
    /// `PODVM_INSTANCE_TYPES`: the types a pod may get.
    pub instance_types: Vec<String>,
    /// `AWS_REGION` (else the SDK's chain: profile, IMDS).
    pub region: Option<String>,
    /// `AWS_SUBNET_ID`.
    pub subnet_id: Option<String>,
    /// `AWS_SG_IDS`.
    pub security_group_ids: Vec<String>,
    /// `SSH_KP_NAME`.
    pub key_name: Option<String>,
    /// `TAGS`: extra tags on every instance.
    pub tags: BTreeMap<String, String>,
    /// `USE_PUBLIC_IP`: reach the VM on its public address.
    pub use_public_ip: bool,
    /// `ROOT_VOLUME_SIZE` in GiB.
    pub root_volume_gib: Option<i32>,
    /// `DISABLECVM`: plain VMs (no SEV-SNP), for testing.
    pub disable_cvm: bool,
    /// `PODVM_LAUNCHTEMPLATE_NAME` when `USE_PODVM_LAUNCHTEMPLATE=true`.
    pub launch_template: Option<String>,
    /// `AWS_ENDPOINT_URL`: another EC2 endpoint (tests, private endpoints).
    pub endpoint: Option<String>,
    /// Longest wait for the new instance's address.
    pub ip_wait: Duration,
}

/// The settings as given (flags or env), unchecked.
#[derive(Debug, Clone, Default)]
pub struct RawAwsConfig {
    pub ami_id: Option<String>,
    pub instance_type: Option<String>,
    pub instance_types: Option<String>,
    pub region: Option<String>,
    pub subnet_id: Option<String>,
    pub security_group_ids: Option<String>,
    pub key_name: Option<String>,
    pub tags: Option<String>,
    pub use_public_ip: Option<String>,
    pub root_volume_size: Option<String>,
    pub disable_cvm: Option<String>,
    pub use_launch_template: Option<String>,
    pub launch_template_name: Option<String>,
    pub endpoint: Option<String>,
    pub ip_wait_secs: Option<String>,
}

/// `k=v,k2=v2`; the `aws:` prefix is AWS's own.
pub fn parse_tags(
    key: &'static str,
    v: &Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    peerpod_provider_api::settings::parse_tags(key, v, |k, _| {
        if k.starts_with("aws:") {
            Err("the aws: prefix is reserved by AWS".to_string())
        } else {
            Ok(())
        }
    })
}

impl RawAwsConfig {
    /// Checks every value; the first bad one is the error.
    pub fn check(&self) -> Result<AwsConfig, ConfigError> {
        let ami_id = non_empty(&self.ami_id)
            .ok_or_else(|| bad("PODVM_AMI_ID", "required: the pod VM image (ami-…)"))?;
        if !ami_id.starts_with("ami-") {
            return Err(bad(
                "PODVM_AMI_ID",
                format!("{ami_id:?} is not an AMI id (ami-…)"),
            ));
        }
        let instance_type =
            non_empty(&self.instance_type).unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
        let instance_types = parse_list(&self.instance_types);
        let security_group_ids = parse_list(&self.security_group_ids);
        if let Some(bad_sg) = security_group_ids.iter().find(|s| !s.starts_with("sg-")) {
            return Err(bad(
                "AWS_SG_IDS",
                format!("{bad_sg:?} is not a security group id (sg-…)"),
            ));
        }
        let subnet_id = non_empty(&self.subnet_id);
        if let Some(s) = subnet_id.as_ref().filter(|s| !s.starts_with("subnet-")) {
            return Err(bad(
                "AWS_SUBNET_ID",
                format!("{s:?} is not a subnet id (subnet-…)"),
            ));
        }
        let root_volume_gib = match non_empty(&self.root_volume_size) {
            None => None,
            Some(v) => match v.parse::<i32>() {
                Ok(0) => None,
                Ok(n) if (1..=16384).contains(&n) => Some(n),
                _ => {
                    return Err(bad(
                        "ROOT_VOLUME_SIZE",
                        format!("{v:?} is not a size in GiB (1–16384)"),
                    ))
                }
            },
        };
        let use_lt = parse_bool("USE_PODVM_LAUNCHTEMPLATE", &self.use_launch_template)?;
        let launch_template = if use_lt {
            Some(non_empty(&self.launch_template_name).ok_or_else(|| {
                bad(
                    "PODVM_LAUNCHTEMPLATE_NAME",
                    "required when USE_PODVM_LAUNCHTEMPLATE=true",
                )
            })?)
        } else {
            None
        };
        let ip_wait = match non_empty(&self.ip_wait_secs) {
            None => Duration::from_secs(180),
            Some(v) => Duration::from_secs(v.parse::<u64>().map_err(|_| {
                bad(
                    "AWS_IP_WAIT_SECONDS",
                    format!("{v:?} is not a number of seconds"),
                )
            })?),
        };
        Ok(AwsConfig {
            ami_id,
            instance_type,
            instance_types,
            region: non_empty(&self.region),
            subnet_id,
            security_group_ids,
            key_name: non_empty(&self.key_name),
            tags: parse_tags("TAGS", &self.tags)?,
            use_public_ip: parse_bool("USE_PUBLIC_IP", &self.use_public_ip)?,
            root_volume_gib,
            disable_cvm: parse_bool("DISABLECVM", &self.disable_cvm)?,
            launch_template,
            endpoint: non_empty(&self.endpoint),
            ip_wait,
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
        let set = |r: &mut RawAwsConfig, key: &str| match key {
            "PODVM_AMI_ID" => r.ami_id = Some("ami-0123".into()),
            other => panic!("{other} in REQUIRED_ENV has no field here"),
        };
        let mut all = RawAwsConfig::default();
        REQUIRED_ENV.iter().for_each(|k| set(&mut all, k));
        all.check().expect("the required keys alone suffice");
        for missing in REQUIRED_ENV {
            let mut r = RawAwsConfig::default();
            REQUIRED_ENV
                .iter()
                .filter(|k| *k != missing)
                .for_each(|k| set(&mut r, k));
            assert_eq!(r.check().unwrap_err().key, *missing);
        }
    }

    fn raw() -> RawAwsConfig {
        RawAwsConfig {
            ami_id: Some("ami-0123".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = raw().check().unwrap();
        assert_eq!(c.instance_type, "m6a.large");
        assert!(!c.disable_cvm && !c.use_public_ip);
        assert!(c.tags.is_empty() && c.instance_types.is_empty());
        assert_eq!(c.launch_template, None);
    }

    #[test]
    fn every_bad_value_names_its_key() {
        type Set = fn(&mut RawAwsConfig);
        let cases: Vec<(&str, Set)> = vec![
            ("PODVM_AMI_ID", |r| r.ami_id = None),
            ("PODVM_AMI_ID", |r| r.ami_id = Some("img-1".into())),
            ("AWS_SG_IDS", |r| {
                r.security_group_ids = Some("sg-1,default".into())
            }),
            ("AWS_SUBNET_ID", |r| r.subnet_id = Some("net-1".into())),
            ("ROOT_VOLUME_SIZE", |r| {
                r.root_volume_size = Some("30G".into())
            }),
            ("TAGS", |r| r.tags = Some("team=qa,oops".into())),
            ("TAGS", |r| r.tags = Some("aws:x=1".into())),
            ("USE_PUBLIC_IP", |r| r.use_public_ip = Some("maybe".into())),
            ("DISABLECVM", |r| r.disable_cvm = Some("2".into())),
            ("PODVM_LAUNCHTEMPLATE_NAME", |r| {
                r.use_launch_template = Some("true".into())
            }),
            ("AWS_IP_WAIT_SECONDS", |r| {
                r.ip_wait_secs = Some("soon".into())
            }),
        ];
        for (key, set) in cases {
            let mut r = raw();
            set(&mut r);
            let e = r.check().unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn values_parse() {
        let mut r = raw();
        r.tags = Some("team=qa, cost = 42 ,".into());
        r.instance_types = Some("m6a.large, m6a.xlarge".into());
        r.security_group_ids = Some("sg-1,sg-2".into());
        r.disable_cvm = Some("TRUE".into());
        r.root_volume_size = Some("30".into());
        r.use_launch_template = Some("true".into());
        r.launch_template_name = Some("podvm-lt".into());
        let c = r.check().unwrap();
        assert_eq!(c.tags.get("cost").map(String::as_str), Some("42"));
        assert_eq!(c.instance_types, vec!["m6a.large", "m6a.xlarge"]);
        assert_eq!(c.security_group_ids.len(), 2);
        assert!(c.disable_cvm);
        assert_eq!(c.root_volume_gib, Some(30));
        assert_eq!(c.launch_template.as_deref(), Some("podvm-lt"));
    }
}
