//! The user-data sources against real HTTP servers on 127.0.0.1 (the
//! metadata services' shapes), a config-drive directory and a file; and the
//! real `process-user-data` binary writing its files with mode 0600.

use agent_forwarder::userdata_source::{fetch, write_out, FetchError, Source};
use peerpod_vmconfig::userdata::UserData;
use peerpod_vmconfig::ForwarderConfig;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../test-fixtures/cloud-userdata/fixture.rs"]
mod userdata_fixture;

fn doc() -> (UserData, Vec<u8>) {
    let ud = UserData {
        forwarder: ForwarderConfig::new("sb-ud", None),
        initdata: Some("aW5pdGRhdGE=".into()),
        registry_auth: Some("{\"auths\":{}}".into()),
    };
    let bytes = ud.to_cloud_config();
    (ud, bytes)
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server answering each request with `answer(seen)` =
/// (status, body); records what it saw.
fn server(
    answer: impl Fn(&Seen) -> (u16, Vec<u8>) + Send + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim().split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let req = Seen {
                method,
                path,
                headers,
            };
            let (status, body) = answer(&req);
            log.lock().unwrap().push(req);
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (addr, seen)
}

/// A metadata service as the shared fixture of `cloud` describes it
/// (test-fixtures/cloud-userdata/<cloud>.json, which the provider's cloud
/// stand-in reads too): it answers only the user-data request of exactly
/// the fixture's shape — method, path, query, headers, and for AWS the
/// IMDSv2 token flow — with `doc` encoded as the fixture says.
fn metadata_service(cloud: &str, doc: Vec<u8>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let f = userdata_fixture::fixture(cloud);
    let body = userdata_fixture::encode(userdata_fixture::text(&f, "/read/body_encoding"), &doc);
    let token = format!("tok-{}", std::process::id());
    server(move |r| {
        let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
        let pairs: Vec<(&str, &str)> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        if let Some(t) = f.pointer("/read/token") {
            if r.method == userdata_fixture::text(t, "/method")
                && path == userdata_fixture::text(t, "/path")
            {
                return match r.header(userdata_fixture::text(t, "/request_header")) {
                    Some(_) => (200, token.clone().into_bytes()),
                    None => (400, Vec::new()),
                };
            }
        }
        if r.method != userdata_fixture::text(&f, "/read/method")
            || path != userdata_fixture::text(&f, "/read/path")
        {
            return (404, Vec::new());
        }
        let query_ok = f["read"]["query"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pairs.contains(&(k.as_str(), v.as_str().unwrap())));
        let headers_ok = f["read"]["headers"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| r.header(k) == v.as_str());
        let token_ok = match f.pointer("/read/token") {
            Some(t) => r.header(userdata_fixture::text(t, "/token_header")) == Some(&*token),
            None => true,
        };
        if query_ok && headers_ok && token_ok {
            (200, body.clone())
        } else {
            (400, Vec::new())
        }
    })
}

#[test]
fn aws_imdsv2_as_the_shared_fixture_describes_it() {
    let (ud, bytes) = doc();
    let (ep, seen) = metadata_service("aws", bytes);
    let (src, got) = fetch(&[Source::Aws(ep)], Duration::from_secs(5)).unwrap();
    assert!(matches!(src, Source::Aws(_)));
    assert_eq!(got, ud);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "PUT", "the token first: {seen:?}");
}

#[test]
fn azure_imds_as_the_shared_fixture_describes_it() {
    let (ud, bytes) = doc();
    let (ep, seen) = metadata_service("azure", bytes);
    let (_, got) = fetch(&[Source::Azure(ep)], Duration::from_secs(5)).unwrap();
    assert_eq!(got, ud);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn gcp_metadata_server_as_the_shared_fixture_describes_it() {
    let (ud, bytes) = doc();
    let (ep, _) = metadata_service("gcp", bytes);
    let (_, got) = fetch(&[Source::Gcp(ep)], Duration::from_secs(5)).unwrap();
    assert_eq!(got, ud);
}

/// The stand-in above is strict: a request of another shape gets no
/// document (so the tests above pass only for the fixture's shape).
#[test]
fn the_fixture_metadata_services_refuse_other_shapes() {
    let (_, bytes) = doc();
    for (cloud, wrong) in [
        (
            "azure",
            "/metadata/instance/compute/customData?api-version=2021-01-01&format=text",
        ),
        (
            "azure",
            "/metadata/instance/compute/userData?api-version=2021-01-01",
        ),
        ("gcp", "/computeMetadata/v1/instance/attributes/userdata"),
        ("aws", "/latest/user-data"),
    ] {
        let (ep, _) = metadata_service(cloud, bytes.clone());
        let r = ureq::get(format!("{ep}{wrong}"))
            .header("Metadata", "true")
            .header("Metadata-Flavor", "Google")
            .call();
        assert!(r.is_err(), "{cloud} {wrong} answered: {r:?}");
    }
}

#[test]
fn not_found_is_a_clear_no_user_data_error() {
    let (ep, _) = server(|_| (404, Vec::new()));
    let e = fetch(&[Source::Gcp(ep)], Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, FetchError::NoUserData { .. }), "{e}");
    assert!(e.to_string().contains("GCP metadata server"), "{e}");
}

#[test]
fn a_server_that_never_answers_fails_within_the_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("http://{}", l.local_addr().unwrap());
    // Accepts and keeps the connections open without a word.
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let t = Instant::now();
    let e = fetch(&[Source::Aws(ep)], Duration::from_millis(500)).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        t.elapsed()
    );
    assert!(e.to_string().contains("AWS IMDSv2"), "{e}");
}

#[test]
fn broken_documents_stop_the_search_with_the_reason() {
    let (ep, _) = server(|_| (200, b"#cloud-config\nwrite_files: [\n".to_vec()));
    let e = fetch(&[Source::Gcp(ep)], Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("not valid YAML"), "{e}");
    let huge = vec![b'#'; peerpod_vmconfig::MAX_DOCUMENT_BYTES + 10];
    let (ep, _) = server(move |_| (200, huge.clone()));
    let e = fetch(&[Source::Gcp(ep)], Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("bytes, more than"), "{e}");
}

#[test]
fn auto_order_prefers_the_config_drive_and_skips_dead_services() {
    let (ud, bytes) = doc();
    let d = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of 127.0.0.1: refused at once.
    let dead = "http://127.0.0.1:9".to_string();
    let drive = d.path().join("cidata");
    let sources = [
        Source::ConfigDrive(drive.clone()),
        Source::Aws(dead.clone()),
        Source::Azure(dead.clone()),
    ];
    // No drive, dead services: one error naming each source.
    let e = fetch(&sources, Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config drive") && e.contains("AWS") && e.contains("Azure"),
        "{e}"
    );
    std::fs::create_dir_all(&drive).unwrap();
    std::fs::write(drive.join("user-data"), &bytes).unwrap();
    let (src, got) = fetch(&sources, Duration::from_secs(2)).unwrap();
    assert!(matches!(src, Source::ConfigDrive(_)));
    assert_eq!(got, ud);
}

#[test]
fn write_out_makes_0600_files() {
    let (ud, _) = doc();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run/peerpod");
    let files = write_out(&ud, &out).unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let cfg = ForwarderConfig::parse(&std::fs::read(out.join("daemon.json")).unwrap()).unwrap();
    assert_eq!(cfg, ud.forwarder);
    assert_eq!(
        std::fs::read_to_string(out.join("auth.json")).unwrap(),
        "{\"auths\":{}}"
    );
}

fn bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

#[test]
fn the_binary_reads_a_file_and_says_what_is_wrong() {
    let (ud, bytes) = doc();
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("user-data");
    std::fs::write(&input, &bytes).unwrap();
    let out = d.path().join("out");
    let o = std::process::Command::new(bin("process-user-data"))
        .args(["--source", "file", "--file"])
        .arg(&input)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = ForwarderConfig::parse(&std::fs::read(out.join("daemon.json")).unwrap()).unwrap();
    assert_eq!(cfg, ud.forwarder);
    let mode = std::fs::metadata(out.join("initdata"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("user data written"), "{stderr}");

    std::fs::write(&input, b"not cloud config").unwrap();
    let o = std::process::Command::new(bin("process-user-data"))
        .args(["--source", "file", "--file"])
        .arg(&input)
        .arg("--out-dir")
        .arg(d.path().join("out2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("not a #cloud-config"), "{stderr}");
    assert!(!d.path().join("out2/daemon.json").exists());
}
