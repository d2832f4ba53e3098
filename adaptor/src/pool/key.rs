//! Pool keys: which pods a warm-pool VM can serve. A VM is made for one
//! shape — machine type, vCPUs, memory, image as the pod's annotations
//! ask for them (the provider's sizing turns the same request into the
//! same instance type every time) — and one initdata. On SEV-SNP and TDX
//! the initdata's digest is measured into the VM at launch (HOST_DATA /
//! MRCONFIGID), so it can never be changed by a later bind: a pod only
//! gets a VM launched with exactly its own initdata, compared by the
//! SHA-256 of the initdata document itself (the annotation's base64 and
//! gzip framing taken off, so two encodings of one document match).
//!
//! Configuration: `PEERPODS_WARM_POOL=<n>` keeps n VMs of the default key
//! (no sizing annotations, the adaptor's default image, the global
//! INITDATA or none); `PEERPODS_WARM_POOL_KEYS` adds keys, `;`-separated,
//! each a `,`-separated list of `machine_type=…`, `vcpus=…`,
//! `memory=…` (MiB), `image=…`, `initdata=default|none|<file with the
//! annotation value>`, `size=…` (default: PEERPODS_WARM_POOL).

use crate::annotations::PodSpec;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

/// Largest initdata document hashed (after decompression).
const MAX_INITDATA_BYTES: u64 = 1 << 20;

/// The shape and initdata a pool VM was made for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolKey {
    #[serde(default)]
    pub machine_type: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub image: Option<String>,
    /// `sha256:<hex>` of the initdata document; `None`: no initdata.
    #[serde(default)]
    pub initdata_digest: Option<String>,
}

/// A configured key: how many VMs to keep, and the initdata (annotation
/// form) its VMs are launched with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub key: PoolKey,
    pub size: usize,
    pub initdata: Option<String>,
}

/// What was wrong with the pool configuration or an initdata value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("PEERPODS_WARM_POOL_KEYS entry {entry:?}: {why}")]
    Entry { entry: String, why: String },
    #[error("initdata is not valid: {0}")]
    Initdata(String),
    #[error("PEERPODS_WARM_POOL_KEYS lists the key {0} twice")]
    Duplicate(String),
}

/// `sha256:<hex>` of an initdata value in annotation form (base64 of the
/// gzip'd TOML, or of the plain TOML).
pub fn initdata_digest(annotation: &str) -> Result<String, KeyError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(annotation.trim())
        .map_err(|e| KeyError::Initdata(format!("not base64: {e}")))?;
    let doc = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_INITDATA_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| KeyError::Initdata(format!("not valid gzip: {e}")))?;
        if out.len() as u64 > MAX_INITDATA_BYTES {
            return Err(KeyError::Initdata(format!(
                "more than {MAX_INITDATA_BYTES} bytes once decompressed"
            )));
        }
        out
    } else {
        raw
    };
    let d = Sha256::digest(&doc);
    Ok(format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

impl PoolKey {
    /// The key a pod needs: its sizing annotations and the digest of its
    /// initdata (its own, else the adaptor's default). `None` when no pool
    /// VM can serve it (it asks for GPUs, or its initdata is unreadable —
    /// the cold path then reports that).
    pub fn for_pod(spec: &PodSpec, default_initdata: Option<&str>) -> Option<PoolKey> {
        if spec.gpus.is_some_and(|g| g > 0) || spec.gpu_model.is_some() {
            return None;
        }
        let initdata = spec.initdata.as_deref().or(default_initdata);
        let initdata_digest = match initdata {
            Some(i) => Some(initdata_digest(i).ok()?),
            None => None,
        };
        Some(PoolKey {
            machine_type: spec.machine_type.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            image: spec.image.clone(),
            initdata_digest,
        })
    }

    /// A short name for logs and metric labels.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.machine_type {
            parts.push(format!("machine_type={m}"));
        }
        if let Some(v) = self.vcpus {
            parts.push(format!("vcpus={v}"));
        }
        if let Some(m) = self.memory_mib {
            parts.push(format!("memory={m}"));
        }
        if let Some(i) = &self.image {
            parts.push(format!("image={i}"));
        }
        if let Some(d) = &self.initdata_digest {
            let short: String = d.trim_start_matches("sha256:").chars().take(12).collect();
            parts.push(format!("initdata={short}"));
        }
        if parts.is_empty() {
            "default".into()
        } else {
            parts.join(",")
        }
    }
}

/// The configured keys: the default key when `default_size` > 0, then
/// each entry of `extra` (see the module doc). `default_initdata` is the
/// adaptor's INITDATA (annotation form). Files named by `initdata=` are
/// read here, once.
pub fn parse_keys(
    default_size: usize,
    default_initdata: Option<&str>,
    extra: &str,
) -> Result<Vec<KeySpec>, KeyError> {
    let default_digest = match default_initdata {
        Some(i) => Some(initdata_digest(i)?),
        None => None,
    };
    let mut out = Vec::new();
    if default_size > 0 {
        out.push(KeySpec {
            key: PoolKey {
                initdata_digest: default_digest.clone(),
                ..Default::default()
            },
            size: default_size,
            initdata: default_initdata.map(str::to_string),
        });
    }
    for entry in extra.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: String| KeyError::Entry {
            entry: entry.to_string(),
            why,
        };
        let mut key = PoolKey {
            initdata_digest: default_digest.clone(),
            ..Default::default()
        };
        let mut initdata = default_initdata.map(str::to_string);
        let mut size = default_size;
        for field in entry.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (k, v) = field
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| bad(format!("{field:?} is not name=value")))?;
            if v.is_empty() {
                return Err(bad(format!("{k} has an empty value")));
            }
            let num = |what: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{what} {v:?} is not a whole number")))
            };
            match k {
                "machine_type" => key.machine_type = Some(v.to_string()),
                "image" => key.image = Some(v.to_string()),
                "vcpus" => {
                    let n = num("vcpus")?;
                    if n == 0 || n > 1024 {
                        return Err(bad(format!("vcpus {n} is outside 1..=1024")));
                    }
                    key.vcpus = Some(n as u32);
                }
                "memory" => {
                    let n = num("memory")?;
                    if n == 0 {
                        return Err(bad("memory 0 MiB".into()));
                    }
                    key.memory_mib = Some(n);
                }
                "size" => size = num("size")? as usize,
                "initdata" => match v {
                    "default" => {
                        initdata = default_initdata.map(str::to_string);
                        key.initdata_digest = default_digest.clone();
                    }
                    "none" => {
                        initdata = None;
                        key.initdata_digest = None;
                    }
                    path => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| bad(format!("initdata file {path}: {e}")))?;
                        let text = text.trim().to_string();
                        key.initdata_digest = Some(
                            initdata_digest(&text)
                                .map_err(|e| bad(format!("initdata file {path}: {e}")))?,
                        );
                        initdata = Some(text);
                    }
                },
                other => {
                    return Err(bad(format!(
                    "unknown field {other:?} (machine_type, vcpus, memory, image, initdata, size)"
                )))
                }
            }
        }
        if out.iter().any(|s: &KeySpec| s.key == key) {
            return Err(KeyError::Duplicate(key.label()));
        }
        out.push(KeySpec {
            key,
            size,
            initdata,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn digest_is_of_the_document_not_its_encoding() {
        let toml = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n";
        let plain = initdata_digest(&b64(toml)).unwrap();
        let zipped = initdata_digest(&b64(&gz(toml))).unwrap();
        assert_eq!(plain, zipped);
        assert!(
            plain.starts_with("sha256:") && plain.len() == 7 + 64,
            "{plain}"
        );
        assert_ne!(plain, initdata_digest(&b64(b"other")).unwrap());
        assert!(initdata_digest("%%%").is_err());
        assert!(initdata_digest(&b64(&[0x1f, 0x8b, 1, 2])).is_err());
    }

    #[test]
    fn a_pod_matches_only_its_own_shape_and_initdata() {
        let global = b64(&gz(b"global"));
        let keys = parse_keys(2, Some(&global), "").unwrap();
        assert_eq!(keys.len(), 1);
        let plain = PodSpec {
            pod_name: "p".into(),
            pod_namespace: "n".into(),
            ..Default::default()
        };
        assert_eq!(
            PoolKey::for_pod(&plain, Some(&global)).as_ref(),
            Some(&keys[0].key)
        );
        // Same document, other encoding: same key.
        let same = PodSpec {
            initdata: Some(b64(b"global")),
            ..plain.clone()
        };
        assert_eq!(
            PoolKey::for_pod(&same, Some(&global)).as_ref(),
            Some(&keys[0].key)
        );
        // Its own initdata: another key.
        let own = PodSpec {
            initdata: Some(b64(b"mine")),
            ..plain.clone()
        };
        assert_ne!(
            PoolKey::for_pod(&own, Some(&global)).as_ref(),
            Some(&keys[0].key)
        );
        let sized = PodSpec {
            vcpus: Some(4),
            ..plain.clone()
        };
        assert_ne!(
            PoolKey::for_pod(&sized, Some(&global)).as_ref(),
            Some(&keys[0].key)
        );
        let gpu = PodSpec {
            gpus: Some(1),
            ..plain
        };
        assert_eq!(PoolKey::for_pod(&gpu, Some(&global)), None);
    }

    #[test]
    fn extra_keys_parse_and_bad_ones_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("initdata");
        std::fs::write(&f, b64(&gz(b"tenant-a"))).unwrap();
        let keys = parse_keys(
            0,
            None,
            &format!(
                "vcpus=2,memory=4096,size=3; machine_type=m6a.large,initdata={}",
                f.display()
            ),
        )
        .unwrap();
        assert_eq!(keys.len(), 2, "size 0 leaves the default key out");
        assert_eq!(keys[0].size, 3);
        assert_eq!(keys[0].key.vcpus, Some(2));
        assert_eq!(keys[0].key.memory_mib, Some(4096));
        assert_eq!(keys[0].key.initdata_digest, None);
        assert_eq!(keys[1].size, 0);
        assert_eq!(
            keys[1].key.label().split(',').next(),
            Some("machine_type=m6a.large")
        );
        assert!(keys[1].initdata.is_some());
        for (bad, want) in [
            ("vcpus=two", "not a whole number"),
            ("vcpus=0", "outside"),
            ("colour=red", "unknown field"),
            ("vcpus", "not name=value"),
            ("image=", "empty value"),
            ("initdata=/nonexistent/x", "/nonexistent/x"),
        ] {
            let e = parse_keys(1, None, bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = parse_keys(1, None, "vcpus=2;vcpus=2").unwrap_err();
        assert!(matches!(e, KeyError::Duplicate(_)), "{e}");
        // The default key listed again explicitly is a duplicate too.
        assert!(parse_keys(1, None, "initdata=none").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(PoolKey::default().label(), "default");
        let k = PoolKey {
            vcpus: Some(2),
            initdata_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            ..Default::default()
        };
        assert_eq!(k.label(), "vcpus=2,initdata=abababababab");
    }
}
