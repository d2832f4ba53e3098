//! The user-data step (`process-user-data`), run in the pod VM before the
//! forwarder starts: fetch the document the adaptor produced from where the
//! cloud put it — a NoCloud/config-drive ISO (libvirt), the AWS IMDSv2
//! endpoint, Azure IMDS or the GCP metadata server — each bounded by a
//! timeout, parse it, and write the forwarder config, initdata and
//! registry credentials (0600) for the forwarder and the kata-agent.

use base64::Engine as _;
use peerpod_vmconfig::userdata::{UserData, UserDataError};
use peerpod_vmconfig::MAX_DOCUMENT_BYTES;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The link-local metadata address of AWS, Azure and GCP.
pub const METADATA_ENDPOINT: &str = "http://169.254.169.254";

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A mounted config drive: `<dir>/user-data` (NoCloud) or
    /// `<dir>/openstack/latest/user_data` (config-drive).
    ConfigDrive(PathBuf),
    /// A plain file (the local provider, tests).
    File(PathBuf),
    /// AWS IMDSv2 at this endpoint.
    Aws(String),
    /// Azure IMDS at this endpoint.
    Azure(String),
    /// GCP metadata server at this endpoint.
    Gcp(String),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::ConfigDrive(d) => format!("config drive at {}", d.display()),
            Source::File(p) => format!("file {}", p.display()),
            Source::Aws(e) => format!("AWS IMDSv2 at {e}"),
            Source::Azure(e) => format!("Azure IMDS at {e}"),
            Source::Gcp(e) => format!("GCP metadata server at {e}"),
        }
    }
}

/// Why no user data could be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{source_name}: {why}")]
    Unavailable { source_name: String, why: String },
    #[error("{source_name}: no user data there ({why})")]
    NoUserData { source_name: String, why: String },
    #[error("{source_name}: {error}")]
    Invalid {
        source_name: String,
        error: UserDataError,
    },
    #[error("no user-data source answered: {0}")]
    NoneAnswered(String),
    #[error("writing {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn unavailable(s: &Source, why: impl std::fmt::Display) -> FetchError {
    FetchError::Unavailable {
        source_name: s.describe(),
        why: why.to_string(),
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    )
}

/// Reads a response body up to the document limit; a status other than
/// 200 is "no user data" for 404 and unavailable otherwise.
fn body(
    s: &Source,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Vec<u8>, FetchError> {
    let mut resp = resp.map_err(|e| unavailable(s, e))?;
    let status = resp.status().as_u16();
    if status == 404 {
        return Err(FetchError::NoUserData {
            source_name: s.describe(),
            why: "HTTP 404".into(),
        });
    }
    if status != 200 {
        return Err(unavailable(s, format!("HTTP {status}")));
    }
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => FetchError::Invalid {
                source_name: s.describe(),
                error: UserDataError::TooLarge(limit as usize),
            },
            other => unavailable(s, other),
        })?;
    Ok(bytes)
}

fn read_file(s: &Source, path: &Path) -> Result<Vec<u8>, FetchError> {
    let meta = std::fs::metadata(path).map_err(|e| FetchError::NoUserData {
        source_name: s.describe(),
        why: format!("{}: {e}", path.display()),
    })?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(FetchError::Invalid {
            source_name: s.describe(),
            error: UserDataError::TooLarge(meta.len() as usize),
        });
    }
    std::fs::read(path).map_err(|e| unavailable(s, format!("{}: {e}", path.display())))
}

/// The raw document from one source.
pub fn fetch_raw(s: &Source, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    match s {
        Source::File(p) => read_file(s, p),
        Source::ConfigDrive(dir) => {
            let nocloud = dir.join("user-data");
            let openstack = dir.join("openstack/latest/user_data");
            if openstack.exists() && !nocloud.exists() {
                read_file(s, &openstack)
            } else {
                read_file(s, &nocloud)
            }
        }
        Source::Aws(ep) => {
            let a = agent(timeout);
            let token = body(
                s,
                a.put(format!("{ep}/latest/api/token"))
                    .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
                    .send_empty(),
            )?;
            let token =
                String::from_utf8(token).map_err(|_| unavailable(s, "token is not text"))?;
            body(
                s,
                a.get(format!("{ep}/latest/user-data"))
                    .header("X-aws-ec2-metadata-token", token.trim())
                    .call(),
            )
        }
        Source::Azure(ep) => {
            let a = agent(timeout);
            let b = body(
                s,
                a.get(format!(
                    "{ep}/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
                ))
                .header("Metadata", "true")
                .call(),
            )?;
            if b.is_empty() {
                return Err(FetchError::NoUserData {
                    source_name: s.describe(),
                    why: "empty userData".into(),
                });
            }
            let compact: Vec<u8> = b.into_iter().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| FetchError::Invalid {
                    source_name: s.describe(),
                    error: UserDataError::Yaml(format!("userData is not base64: {e}")),
                })
        }
        Source::Gcp(ep) => {
            let a = agent(timeout);
            body(
                s,
                a.get(format!(
                    "{ep}/computeMetadata/v1/instance/attributes/user-data"
                ))
                .header("Metadata-Flavor", "Google")
                .call(),
            )
        }
    }
}

/// Fetches and parses from the first source that has a document. Sources
/// that are unreachable or have none are logged and skipped; a document
/// that is there but invalid stops the search (it is ours and broken).
pub fn fetch(sources: &[Source], timeout: Duration) -> Result<(Source, UserData), FetchError> {
    let mut tried = Vec::new();
    for s in sources {
        let started = std::time::Instant::now();
        match fetch_raw(s, timeout) {
            Ok(raw) => {
                let ud = UserData::parse(&raw).map_err(|error| FetchError::Invalid {
                    source_name: s.describe(),
                    error,
                })?;
                tracing::info!(source = %s.describe(), bytes = raw.len(), took = ?started.elapsed(), "user data read");
                return Ok((s.clone(), ud));
            }
            Err(e @ FetchError::Invalid { .. }) => return Err(e),
            Err(e) => {
                tracing::info!(source = %s.describe(), error = %e, took = ?started.elapsed(), "user-data source skipped");
                if sources.len() == 1 {
                    return Err(e);
                }
                tried.push(e.to_string());
            }
        }
    }
    Err(FetchError::NoneAnswered(tried.join("; ")))
}

/// Writes what the VM needs under `out_dir` (created 0700): the forwarder
/// config, initdata and registry credentials, each 0600 and crash-safe.
/// Returns the paths written.
pub fn write_out(ud: &UserData, out_dir: &Path) -> Result<Vec<PathBuf>, FetchError> {
    use std::os::unix::fs::DirBuilderExt;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |error| FetchError::Write { path, error }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out_dir)
        .map_err(werr(out_dir))?;
    let name = |p: &str| out_dir.join(Path::new(p).file_name().unwrap_or_default());
    let mut files = vec![(
        name(peerpod_vmconfig::userdata::DAEMON_CONFIG_PATH),
        ud.forwarder.to_bytes(),
    )];
    if let Some(i) = &ud.initdata {
        files.push((
            name(peerpod_vmconfig::userdata::INITDATA_PATH),
            i.as_bytes().to_vec(),
        ));
    }
    if let Some(a) = &ud.registry_auth {
        files.push((
            name(peerpod_vmconfig::userdata::AUTH_JSON_PATH),
            a.as_bytes().to_vec(),
        ));
    }
    let mut written = Vec::new();
    for (path, bytes) in files {
        peerpod_fsutil::write_atomic(&path, &bytes, 0o600).map_err(werr(&path))?;
        written.push(path);
    }
    Ok(written)
}
