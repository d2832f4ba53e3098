//! Reads the annotations a Kata shim sends with CreateVM into a typed pod
//! spec. The runtimes send every key, often empty: empty means "not set".
//! A value that is present but malformed is an error naming the annotation
//! and the value — never a panic and never a silent default.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const MACHINE_TYPE: &str = "io.katacontainers.config.hypervisor.machine_type";
pub const IMAGE: &str = "io.katacontainers.config.hypervisor.image";
pub const DEFAULT_VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
pub const DEFAULT_MEMORY: &str = "io.katacontainers.config.hypervisor.default_memory";
pub const INITDATA: &str = "io.katacontainers.config.hypervisor.cc_init_data";
pub const DEFAULT_GPUS: &str = "io.katacontainers.config.hypervisor.default_gpus";
pub const DEFAULT_GPU_MODEL: &str = "io.katacontainers.config.hypervisor.default_gpu_model";

/// Upper bounds that catch typos (a VM with 10,000 vCPUs is a mistake).
const MAX_VCPUS: u32 = 1024;
const MAX_MEMORY_MIB: u64 = 16 << 20; // 16 TiB

/// What was wrong with an annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("annotation {key} is missing or empty; the pod's {what} is required")]
    Missing {
        key: &'static str,
        what: &'static str,
    },
    #[error("annotation {key}={value:?} is invalid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

/// The pod as the adaptor needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PodSpec {
    pub pod_name: String,
    pub pod_namespace: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub machine_type: Option<String>,
    pub image: Option<String>,
    /// base64 of gzip'd initdata TOML, passed to the VM unchanged.
    pub initdata: Option<String>,
    pub gpus: Option<u32>,
    pub gpu_model: Option<String>,
}

fn value<'a>(a: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    a.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn invalid(key: &'static str, value: &str, why: &'static str) -> AnnotationError {
    AnnotationError::Invalid {
        key,
        value: value.chars().take(64).collect(),
        why,
    }
}

/// vCPUs: runtime-rs sends a float ("0.5"), the Go runtime an integer.
/// Fractions round up to whole vCPUs.
fn parse_vcpus(v: &str) -> Result<u32, AnnotationError> {
    let f: f64 = v
        .parse()
        .map_err(|_| invalid(DEFAULT_VCPUS, v, "not a number"))?;
    if !f.is_finite() {
        return Err(invalid(DEFAULT_VCPUS, v, "not a finite number"));
    }
    if f <= 0.0 {
        return Err(invalid(DEFAULT_VCPUS, v, "must be greater than zero"));
    }
    if f > MAX_VCPUS as f64 {
        return Err(invalid(DEFAULT_VCPUS, v, "more than 1024 vCPUs"));
    }
    Ok(f.ceil() as u32)
}

fn parse_memory(v: &str) -> Result<u64, AnnotationError> {
    let m: u64 = v
        .parse()
        .map_err(|_| invalid(DEFAULT_MEMORY, v, "not a whole number of MiB"))?;
    if m == 0 {
        return Err(invalid(DEFAULT_MEMORY, v, "must be greater than zero"));
    }
    if m > MAX_MEMORY_MIB {
        return Err(invalid(DEFAULT_MEMORY, v, "more than 16 TiB"));
    }
    Ok(m)
}

impl PodSpec {
    /// Parses and checks the CreateVM annotations.
    pub fn from_annotations(a: &HashMap<String, String>) -> Result<Self, AnnotationError> {
        let pod_name = value(a, SANDBOX_NAME).ok_or(AnnotationError::Missing {
            key: SANDBOX_NAME,
            what: "name",
        })?;
        let pod_namespace = value(a, SANDBOX_NAMESPACE).ok_or(AnnotationError::Missing {
            key: SANDBOX_NAMESPACE,
            what: "namespace",
        })?;
        let vcpus = value(a, DEFAULT_VCPUS).map(parse_vcpus).transpose()?;
        let memory_mib = value(a, DEFAULT_MEMORY).map(parse_memory).transpose()?;
        let initdata = match value(a, INITDATA) {
            Some(v) => {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|_| invalid(INITDATA, v, "not valid base64"))?;
                Some(v.to_string())
            }
            None => None,
        };
        let gpus = value(a, DEFAULT_GPUS)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| invalid(DEFAULT_GPUS, v, "not a whole number"))
            })
            .transpose()?
            .filter(|g| *g > 0);
        Ok(Self {
            pod_name: pod_name.to_string(),
            pod_namespace: pod_namespace.to_string(),
            vcpus,
            memory_mib,
            machine_type: value(a, MACHINE_TYPE).map(str::to_string),
            image: value(a, IMAGE).map(str::to_string),
            initdata,
            gpus,
            gpu_model: value(a, DEFAULT_GPU_MODEL).map(str::to_string),
        })
    }
}

/// The annotations a Kata shim sends for a pod: every key, empty (unset)
/// except the pod's name and namespace. Used by the CLI and tests.
pub fn shim_annotations(pod: &str, namespace: &str) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = [
        MACHINE_TYPE,
        IMAGE,
        DEFAULT_VCPUS,
        DEFAULT_MEMORY,
        INITDATA,
        DEFAULT_GPUS,
        DEFAULT_GPU_MODEL,
    ]
    .into_iter()
    .map(|k| (k.to_string(), String::new()))
    .collect();
    a.insert(SANDBOX_NAME.into(), pod.into());
    a.insert(SANDBOX_NAMESPACE.into(), namespace.into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim_annotations() -> HashMap<String, String> {
        super::shim_annotations("nginx", "default")
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = PodSpec::from_annotations(&shim_annotations()).unwrap();
        assert_eq!(s.pod_name, "nginx");
        assert_eq!(s.vcpus, None);
        assert_eq!(s.memory_mib, None);
        assert_eq!(s.machine_type, None);
        assert_eq!(s.initdata, None);
        assert_eq!(s.gpus, None);
    }

    #[test]
    fn fractional_vcpus_round_up() {
        for (v, want) in [("0.5", 1), ("1", 1), ("1.2", 2), ("2.0", 2), ("4", 4)] {
            let mut a = shim_annotations();
            a.insert(DEFAULT_VCPUS.into(), v.into());
            assert_eq!(
                PodSpec::from_annotations(&a).unwrap().vcpus,
                Some(want),
                "{v}"
            );
        }
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            (DEFAULT_VCPUS, "0", "greater than zero"),
            (DEFAULT_VCPUS, "two", "not a number"),
            (DEFAULT_VCPUS, "-1", "greater than zero"),
            (DEFAULT_VCPUS, "NaN", "finite"),
            (DEFAULT_VCPUS, "5000", "1024"),
            (DEFAULT_MEMORY, "0", "greater than zero"),
            (DEFAULT_MEMORY, "2Gi", "whole number"),
            (DEFAULT_MEMORY, "-5", "whole number"),
            (INITDATA, "%%%", "base64"),
            (DEFAULT_GPUS, "x", "whole number"),
        ];
        for (key, v, why) in cases {
            let mut a = shim_annotations();
            a.insert(key.into(), v.into());
            let e = PodSpec::from_annotations(&a).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(v) && e.contains(why),
                "{key}={v}: {e}"
            );
        }
    }

    #[test]
    fn missing_or_empty_pod_identity_is_an_error() {
        for key in [SANDBOX_NAME, SANDBOX_NAMESPACE] {
            let mut a = shim_annotations();
            a.insert(key.into(), "  ".into());
            let e = PodSpec::from_annotations(&a).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
            a.remove(key);
            let e = PodSpec::from_annotations(&a).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn values_are_kept() {
        let mut a = shim_annotations();
        a.insert(DEFAULT_MEMORY.into(), "2048".into());
        a.insert(MACHINE_TYPE.into(), "m6a.large".into());
        a.insert(INITDATA.into(), "H4sIAAAAAAAA".into());
        let s = PodSpec::from_annotations(&a).unwrap();
        assert_eq!(s.memory_mib, Some(2048));
        assert_eq!(s.machine_type.as_deref(), Some("m6a.large"));
        assert_eq!(s.initdata.as_deref(), Some("H4sIAAAAAAAA"));
    }
}
