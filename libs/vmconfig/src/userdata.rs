//! The user-data document every pod VM reads at boot: a cloud-init
//! `#cloud-config` with `write_files` entries for the forwarder config,
//! the pod's initdata and the registry credentials. The adaptor builds it
//! here for every provider (AWS user data, Azure custom data, GCE
//! metadata, a libvirt config drive); the VM's user-data step parses it
//! here. Real cloud-init accepts it too (entries are base64, mode 0600).

use crate::{ConfigError, ForwarderConfig, MAX_DOCUMENT_BYTES};
use base64::Engine as _;
use serde::Deserialize;

/// Where the forwarder config is written in the VM.
pub const DAEMON_CONFIG_PATH: &str = "/run/peerpod/daemon.json";
/// Where the pod's initdata (the annotation's text, as given) is written.
pub const INITDATA_PATH: &str = "/run/peerpod/initdata";
/// Where the registry credentials (`auth.json`) are written.
pub const AUTH_JSON_PATH: &str = "/run/peerpod/auth.json";

/// Why a user-data document was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("user data is {0} bytes, more than the {MAX_DOCUMENT_BYTES} allowed")]
    TooLarge(usize),
    #[error("user data is not a #cloud-config document (it starts with {0:?})")]
    NotCloudConfig(String),
    #[error("user data is not valid YAML: {0}")]
    Yaml(String),
    #[error("user data has no write_files entry for {0}")]
    Missing(&'static str),
    #[error("user data entry {path}: {why}")]
    Entry { path: String, why: String },
    #[error("user data entry {DAEMON_CONFIG_PATH}: {0}")]
    Config(#[from] ConfigError),
}

/// What the VM gets.
#[derive(Clone, PartialEq, Eq)]
pub struct UserData {
    pub forwarder: ForwarderConfig,
    /// The `cc_init_data` annotation (or the adaptor's global INITDATA),
    /// written verbatim.
    pub initdata: Option<String>,
    /// Registry credentials, `auth.json` format. Secret: never logged.
    pub registry_auth: Option<String>,
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserData")
            .field("forwarder", &self.forwarder)
            .field("initdata", &self.initdata.as_ref().map(|i| i.len()))
            .field(
                "registry_auth",
                &self.registry_auth.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Deserialize)]
struct CloudConfig {
    #[serde(default)]
    write_files: Vec<WriteFile>,
}

#[derive(Deserialize)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl UserData {
    /// The `#cloud-config` document. Each file is base64 (any bytes
    /// survive), mode 0600 (the forwarder config holds the VM's TLS key).
    pub fn to_cloud_config(&self) -> Vec<u8> {
        let mut files: Vec<(&str, Vec<u8>)> = vec![(DAEMON_CONFIG_PATH, self.forwarder.to_bytes())];
        if let Some(i) = &self.initdata {
            files.push((INITDATA_PATH, i.as_bytes().to_vec()));
        }
        if let Some(a) = &self.registry_auth {
            files.push((AUTH_JSON_PATH, a.as_bytes().to_vec()));
        }
        let mut out = String::from("#cloud-config\nwrite_files:\n");
        for (path, content) in files {
            out.push_str(&format!(
                "- path: {path}\n  owner: root:root\n  permissions: '0600'\n  encoding: b64\n  content: {}\n",
                b64().encode(content)
            ));
        }
        out.into_bytes()
    }

    /// Parses and checks a document: size first, then the `#cloud-config`
    /// header, YAML, the entries we know (others are ignored with a
    /// warning) and the forwarder config inside.
    pub fn parse(bytes: &[u8]) -> Result<Self, UserDataError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(UserDataError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| UserDataError::Yaml(format!("not UTF-8: {e}")))?;
        if !text.starts_with("#cloud-config") {
            let head: String = text.chars().take(20).collect();
            return Err(UserDataError::NotCloudConfig(head));
        }
        let doc: CloudConfig =
            yaml_serde::from_str(text).map_err(|e| UserDataError::Yaml(e.to_string()))?;
        let (mut forwarder, mut initdata, mut registry_auth) = (None, None, None);
        for f in doc.write_files {
            let slot = match f.path.as_str() {
                DAEMON_CONFIG_PATH => &mut forwarder,
                INITDATA_PATH => &mut initdata,
                AUTH_JSON_PATH => &mut registry_auth,
                other => {
                    tracing::warn!(
                        path = other,
                        "ignoring a user-data file this version does not know"
                    );
                    continue;
                }
            };
            let content = decode(&f)?;
            *slot = Some(content);
        }
        let forwarder = forwarder.ok_or(UserDataError::Missing(DAEMON_CONFIG_PATH))?;
        let text = |path: &str, b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| UserDataError::Entry {
                path: path.into(),
                why: "not UTF-8 text".into(),
            })
        };
        Ok(UserData {
            forwarder: ForwarderConfig::parse(&forwarder)?,
            initdata: initdata.map(|b| text(INITDATA_PATH, b)).transpose()?,
            registry_auth: registry_auth.map(|b| text(AUTH_JSON_PATH, b)).transpose()?,
        })
    }
}

fn decode(f: &WriteFile) -> Result<Vec<u8>, UserDataError> {
    let bad = |why: String| UserDataError::Entry {
        path: f.path.clone(),
        why,
    };
    match f
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("text/plain") => Ok(f.content.clone().into_bytes()),
        Some("b64" | "base64") => {
            let compact: String = f.content.split_whitespace().collect();
            b64()
                .decode(compact)
                .map_err(|e| bad(format!("content is not valid base64: {e}")))
        }
        Some(other) => Err(bad(format!(
            "encoding {other:?} is not supported (use b64 or plain text)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsMaterial;

    fn sample() -> UserData {
        let tls = TlsMaterial {
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\nME\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n".into(),
        };
        UserData {
            forwarder: ForwarderConfig::new("sb1", Some(tls)),
            initdata: Some("H4sIAAAAAAAA/ytJLS4BAHhSq2wEAAAA".into()),
            registry_auth: Some(
                "{\"auths\":{\"r.io\":{\"auth\":\"dTpw\"}}}\n: - 'quotes\" and yaml".into(),
            ),
        }
    }

    #[test]
    fn round_trips_any_content() {
        let u = sample();
        let doc = u.to_cloud_config();
        assert!(doc.starts_with(b"#cloud-config\n"));
        let text = String::from_utf8(doc.clone()).unwrap();
        assert!(
            !text.contains("SECRET"),
            "secrets are not in clear text in the document"
        );
        assert_eq!(text.matches("permissions: '0600'").count(), 3);
        assert_eq!(UserData::parse(&doc).unwrap(), u);
        let mut bare = sample();
        bare.initdata = None;
        bare.registry_auth = None;
        assert_eq!(UserData::parse(&bare.to_cloud_config()).unwrap(), bare);
    }

    #[test]
    fn accepts_what_cloud_init_accepts() {
        let cfg = String::from_utf8(sample().forwarder.to_bytes()).unwrap();
        let doc = format!(
            "#cloud-config\nhostname: vm\nruncmd: [ls]\nwrite_files:\n\
             - path: /etc/motd\n  content: hello\n\
             - path: {DAEMON_CONFIG_PATH}\n  permissions: '0600'\n  content: |\n    {}\n",
            cfg.replace('\n', "\n    ")
        );
        let u = UserData::parse(doc.as_bytes()).unwrap();
        assert_eq!(u.forwarder, sample().forwarder);
        assert_eq!(u.initdata, None);
    }

    #[test]
    fn bad_documents_name_what_is_wrong() {
        let e = UserData::parse(b"#cloud-config\nwrite_files: [\n  - path: x\n").unwrap_err();
        assert!(matches!(e, UserDataError::Yaml(_)), "{e}");
        let e = UserData::parse(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(e.to_string().contains("not a #cloud-config"), "{e}");
        let e = UserData::parse(b"#cloud-config\nwrite_files: []\n").unwrap_err();
        assert!(e.to_string().contains(DAEMON_CONFIG_PATH), "{e}");
        let big = vec![b'#'; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            UserData::parse(&big),
            Err(UserDataError::TooLarge(_))
        ));
        let e = UserData::parse(
            format!("#cloud-config\nwrite_files:\n- path: {DAEMON_CONFIG_PATH}\n  encoding: b64\n  content: '%%%'\n").as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let e = UserData::parse(
            format!("#cloud-config\nwrite_files:\n- path: {DAEMON_CONFIG_PATH}\n  encoding: gz+b64\n  content: abc\n").as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("gz+b64"), "{e}");
        let e = UserData::parse(
            format!("#cloud-config\nwrite_files:\n- path: {DAEMON_CONFIG_PATH}\n  content: '{{\"format_version\": 9}}'\n").as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("format version 9"), "{e}");
    }

    #[test]
    fn debug_hides_the_secrets() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("SECRET") && !s.contains("dTpw"), "{s}");
    }
}
