//! The Azure provider's settings, under the names the Go adaptor and its
//! `peer-pods-cm` ConfigMap use (`AZURE_SUBSCRIPTION_ID`, `AZURE_IMAGE_ID`,
//! `AZURE_INSTANCE_SIZES`, `DISABLECVM`, `TAGS`, …), so an existing
//! deployment's ConfigMap works unchanged. Values arrive as text (flags or
//! env) and are checked here; a malformed one is an error naming its key.

pub use peerpod_provider_api::settings::ConfigError;
use peerpod_provider_api::settings::{bad, non_empty, parse_bool, parse_list};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings without which `check` fails (env names). The chart's
/// providers/azure.yaml and its render-time check are generated from it.
pub const REQUIRED_ENV: &[&str] = &[
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_REGION",
    "AZURE_RESOURCE_GROUP",
    "AZURE_SUBNET_ID",
    "AZURE_IMAGE_ID",
];

/// Default VM size (the Go adaptor's): 2 vCPUs, AMD SEV-SNP.
pub const DEFAULT_INSTANCE_SIZE: &str = "Standard_DC2as_v5";
/// Largest user data Azure accepts: "the contents should be base64
/// encoded before passed to the API. The size can't exceed 64 KB" (Azure's
/// user data page). Checked on the base64 text, the stricter reading, so
/// a create is never refused by ARM for it: at most 49152 raw bytes.
pub const MAX_USER_DATA_BASE64_BYTES: usize = 64 * 1024;
/// The public cloud's Resource Manager endpoint.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com";

/// The checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// `AZURE_SUBSCRIPTION_ID` (required).
    pub subscription_id: String,
    /// `AZURE_REGION` (required): where VMs and NICs are created.
    pub region: String,
    /// `AZURE_RESOURCE_GROUP` (required).
    pub resource_group: String,
    /// `AZURE_SUBNET_ID` (required): the full ARM id of the subnet.
    pub subnet_id: String,
    /// `AZURE_NSG_ID`: a network security group for the NICs.
    pub nsg_id: Option<String>,
    /// `AZURE_IMAGE_ID` (required): gallery image (version) id.
    pub image_id: String,
    /// `AZURE_INSTANCE_SIZE`.
    pub instance_size: String,
    /// `AZURE_INSTANCE_SIZES`: the sizes a pod may get.
    pub instance_sizes: Vec<String>,
    /// `TAGS`: extra tags on every VM and NIC.
    pub tags: BTreeMap<String, String>,
    /// `DISABLECVM`: plain VMs (no confidential VM), for testing.
    pub disable_cvm: bool,
    /// `ENABLE_SECURE_BOOT`: UEFI secure boot on the CVM (the Go default: off).
    pub secure_boot: bool,
    /// `SSH_USERNAME`: the VM's admin user (Azure requires one).
    pub ssh_username: String,
    /// `SSH_KEY_PATH`: an SSH public key file put on the VM, if given.
    pub ssh_key_path: Option<PathBuf>,
    /// `ROOT_VOLUME_SIZE` in GiB.
    pub root_volume_gib: Option<u32>,
    /// `AZURE_ARM_ENDPOINT`: another Resource Manager endpoint (sovereign
    /// clouds, tests).
    pub arm_endpoint: String,
}

/// The settings as given (flags or env), unchecked.
#[derive(Debug, Clone, Default)]
pub struct RawAzureConfig {
    pub subscription_id: Option<String>,
    pub region: Option<String>,
    pub resource_group: Option<String>,
    pub subnet_id: Option<String>,
    pub nsg_id: Option<String>,
    pub image_id: Option<String>,
    pub instance_size: Option<String>,
    pub instance_sizes: Option<String>,
    pub tags: Option<String>,
    pub disable_cvm: Option<String>,
    pub secure_boot: Option<String>,
    pub ssh_username: Option<String>,
    pub ssh_key_path: Option<String>,
    pub root_volume_size: Option<String>,
    pub arm_endpoint: Option<String>,
}

fn required(key: &'static str, v: &Option<String>, what: &str) -> Result<String, ConfigError> {
    non_empty(v).ok_or_else(|| bad(key, format!("required: {what}")))
}

/// `k=v,k2=v2`, checked against Azure's tag rules (name ≤ 512 characters
/// without `<>%&\?/`, value ≤ 256 characters).
pub fn parse_tags(
    key: &'static str,
    v: &Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    peerpod_provider_api::settings::parse_tags(key, v, |k, val| {
        if k.len() > 512 || k.contains(['<', '>', '%', '&', '\\', '?', '/']) {
            Err("Azure tag names are at most 512 characters without <>%&\\?/".to_string())
        } else if val.len() > 256 {
            Err("Azure tag values are at most 256 characters".to_string())
        } else {
            Ok(())
        }
    })
}

/// Whether `id` looks like `/subscriptions/…/resourceGroups/…/providers/<ns>/…`
/// with `segment` in it (case-insensitive, as ARM ids are).
fn is_arm_id(id: &str, segment: &str) -> bool {
    let l = id.to_ascii_lowercase();
    l.starts_with("/subscriptions/")
        && l.contains("/resourcegroups/")
        && l.contains(&segment.to_ascii_lowercase())
}

impl RawAzureConfig {
    /// Checks every value; the first bad one is the error.
    pub fn check(&self) -> Result<AzureConfig, ConfigError> {
        let subscription_id = required(
            "AZURE_SUBSCRIPTION_ID",
            &self.subscription_id,
            "the subscription the pod VMs are created in",
        )?;
        let region = required("AZURE_REGION", &self.region, "the region, e.g. eastus")?;
        let resource_group = required(
            "AZURE_RESOURCE_GROUP",
            &self.resource_group,
            "the resource group of the pod VMs",
        )?;
        if resource_group.contains('/') {
            return Err(bad(
                "AZURE_RESOURCE_GROUP",
                format!("{resource_group:?} is a path; give the group's name"),
            ));
        }
        let subnet_id = required(
            "AZURE_SUBNET_ID",
            &self.subnet_id,
            "the full id of the pods' subnet (/subscriptions/…/subnets/…)",
        )?;
        if !is_arm_id(&subnet_id, "/providers/Microsoft.Network/virtualNetworks/")
            || !subnet_id.to_ascii_lowercase().contains("/subnets/")
        {
            return Err(bad(
                "AZURE_SUBNET_ID",
                format!(
                    "{subnet_id:?} is not a subnet id \
                     (/subscriptions/…/providers/Microsoft.Network/virtualNetworks/…/subnets/…)"
                ),
            ));
        }
        let nsg_id = non_empty(&self.nsg_id);
        if let Some(n) = nsg_id
            .as_ref()
            .filter(|n| !is_arm_id(n, "/providers/Microsoft.Network/networkSecurityGroups/"))
        {
            return Err(bad(
                "AZURE_NSG_ID",
                format!("{n:?} is not a network security group id"),
            ));
        }
        let image_id = required(
            "AZURE_IMAGE_ID",
            &self.image_id,
            "the pod VM image (a gallery image or image version id)",
        )?;
        if !image_id.starts_with('/') {
            return Err(bad(
                "AZURE_IMAGE_ID",
                format!("{image_id:?} is not an image id (/subscriptions/…/galleries/…/images/…)"),
            ));
        }
        let instance_size =
            non_empty(&self.instance_size).unwrap_or_else(|| DEFAULT_INSTANCE_SIZE.to_string());
        let root_volume_gib = match non_empty(&self.root_volume_size) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(0) => None,
                Ok(n) if n <= 4095 => Some(n),
                _ => {
                    return Err(bad(
                        "ROOT_VOLUME_SIZE",
                        format!("{v:?} is not a size in GiB (1–4095)"),
                    ))
                }
            },
        };
        let ssh_username = non_empty(&self.ssh_username).unwrap_or_else(|| "peerpod".to_string());
        if !ssh_username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || ssh_username.len() > 64
        {
            return Err(bad(
                "SSH_USERNAME",
                format!("{ssh_username:?} is not a user name Azure accepts"),
            ));
        }
        let arm_endpoint = non_empty(&self.arm_endpoint)
            .unwrap_or_else(|| PUBLIC_ARM_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        match url::Url::parse(&arm_endpoint) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => {
                return Err(bad(
                    "AZURE_ARM_ENDPOINT",
                    format!("{arm_endpoint:?} is not an http(s) URL"),
                ))
            }
        }
        Ok(AzureConfig {
            subscription_id,
            region,
            resource_group,
            subnet_id,
            nsg_id,
            image_id,
            instance_size,
            instance_sizes: parse_list(&self.instance_sizes),
            tags: parse_tags("TAGS", &self.tags)?,
            disable_cvm: parse_bool("DISABLECVM", &self.disable_cvm)?,
            secure_boot: parse_bool("ENABLE_SECURE_BOOT", &self.secure_boot)?,
            ssh_username,
            ssh_key_path: non_empty(&self.ssh_key_path).map(PathBuf::from),
            root_volume_gib,
            arm_endpoint,
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
        let full = raw();
        let set = |r: &mut RawAzureConfig, key: &str| match key {
            "AZURE_SUBSCRIPTION_ID" => r.subscription_id = full.subscription_id.clone(),
            "AZURE_REGION" => r.region = full.region.clone(),
            "AZURE_RESOURCE_GROUP" => r.resource_group = full.resource_group.clone(),
            "AZURE_SUBNET_ID" => r.subnet_id = full.subnet_id.clone(),
            "AZURE_IMAGE_ID" => r.image_id = full.image_id.clone(),
            other => panic!("{other} in REQUIRED_ENV has no field here"),
        };
        let mut all = RawAzureConfig::default();
        REQUIRED_ENV.iter().for_each(|k| set(&mut all, k));
        all.check().expect("the required keys alone suffice");
        for missing in REQUIRED_ENV {
            let mut r = RawAzureConfig::default();
            REQUIRED_ENV
                .iter()
                .filter(|k| *k != missing)
                .for_each(|k| set(&mut r, k));
            assert_eq!(r.check().unwrap_err().key, *missing);
        }
    }

    pub(crate) fn raw() -> RawAzureConfig {
        RawAzureConfig {
            subscription_id: Some("00000000-0000-0000-0000-000000000001".into()),
            region: Some("eastus".into()),
            resource_group: Some("peerpods".into()),
            subnet_id: Some(
                "/subscriptions/s/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/pods"
                    .into(),
            ),
            image_id: Some(
                "/subscriptions/s/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/podvm/versions/1.0.0"
                    .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = raw().check().unwrap();
        assert_eq!(c.instance_size, "Standard_DC2as_v5");
        assert!(!c.disable_cvm && !c.secure_boot);
        assert!(c.tags.is_empty() && c.instance_sizes.is_empty());
        assert_eq!(c.arm_endpoint, "https://management.azure.com");
        assert_eq!(c.ssh_username, "peerpod");
        assert_eq!(c.root_volume_gib, None);
    }

    #[test]
    fn every_bad_value_names_its_key() {
        type Set = fn(&mut RawAzureConfig);
        let cases: Vec<(&str, Set)> = vec![
            ("AZURE_SUBSCRIPTION_ID", |r| r.subscription_id = None),
            ("AZURE_REGION", |r| r.region = Some(" ".into())),
            ("AZURE_RESOURCE_GROUP", |r| r.resource_group = None),
            ("AZURE_RESOURCE_GROUP", |r| {
                r.resource_group = Some("/subscriptions/x/resourceGroups/y".into())
            }),
            ("AZURE_SUBNET_ID", |r| r.subnet_id = None),
            ("AZURE_SUBNET_ID", |r| r.subnet_id = Some("subnet-1".into())),
            ("AZURE_NSG_ID", |r| r.nsg_id = Some("nsg1".into())),
            ("AZURE_IMAGE_ID", |r| r.image_id = None),
            ("AZURE_IMAGE_ID", |r| r.image_id = Some("ubuntu".into())),
            ("ROOT_VOLUME_SIZE", |r| {
                r.root_volume_size = Some("30G".into())
            }),
            ("TAGS", |r| r.tags = Some("team=qa,oops".into())),
            ("TAGS", |r| r.tags = Some("a/b=1".into())),
            ("DISABLECVM", |r| r.disable_cvm = Some("2".into())),
            ("ENABLE_SECURE_BOOT", |r| r.secure_boot = Some("on?".into())),
            ("SSH_USERNAME", |r| {
                r.ssh_username = Some("root user".into())
            }),
            ("AZURE_ARM_ENDPOINT", |r| {
                r.arm_endpoint = Some("ftp://x".into())
            }),
        ];
        for (key, set) in cases {
            let mut r = raw();
            set(&mut r);
            let e = r.check().unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().starts_with(key), "{e}");
        }
    }

    #[test]
    fn values_parse() {
        let mut r = raw();
        r.tags = Some("team=qa, cost = 42 ,".into());
        r.instance_sizes = Some("Standard_DC2as_v5, Standard_DC4as_v5".into());
        r.disable_cvm = Some("TRUE".into());
        r.root_volume_size = Some("30".into());
        r.arm_endpoint = Some("http://127.0.0.1:9/".into());
        let c = r.check().unwrap();
        assert_eq!(c.tags.get("cost").map(String::as_str), Some("42"));
        assert_eq!(
            c.instance_sizes,
            vec!["Standard_DC2as_v5", "Standard_DC4as_v5"]
        );
        assert!(c.disable_cvm);
        assert_eq!(c.root_volume_gib, Some(30));
        assert_eq!(c.arm_endpoint, "http://127.0.0.1:9");
    }
}
