//! No secret reaches a log. A full CreateVM/StartVM/agent calls/StopVM
//! on the real `cloud-api-adaptor local` with mutual TLS on, registry
//! credentials (`PEERPOD_REGISTRY_AUTH_FILE`) and initdata (`INITDATA` and
//! the pod annotation), everything at `RUST_LOG=debug`: the adaptor's log,
//! the instance's forwarder and agent logs, and the output of the VM's
//! user-data step run on the instance's user data, hold no private key
//! (no `PRIVATE KEY` PEM block, no part of any key's base64 body — the
//! node CA's, the forwarder's), no part of the registry credentials (raw,
//! their `auth` value, its decoded `user:password`, the base64 of the
//! whole file) and no part of the user-data document's encoded payloads.
//! Needs root.

use base64::Engine as _;
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_tests::adaptor_process::AdaptorProcess;
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::raw_call;
use std::path::Path;
use std::time::{Duration, Instant};

const NODE: &str = "secrets-node";

/// The base64 body lines of the PEM private keys in `text` (PEM inside
/// JSON strings is unescaped first).
fn key_lines(text: &str) -> Vec<String> {
    let text = text.replace("\\n", "\n");
    let mut lines = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        let l = l.trim().trim_matches(|c| c == '"' || c == ',');
        if l.contains("-----BEGIN") && l.contains("PRIVATE KEY") {
            inside = true;
        } else if l.contains("-----END") {
            inside = false;
        } else if inside && !l.is_empty() {
            lines.push(l.to_string());
        }
    }
    lines
}

/// Every file under `dir` (recursively) that holds a PEM private key,
/// with the key's base64 body lines.
fn private_keys_under(dir: &Path, out: &mut Vec<(String, Vec<String>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            private_keys_under(&p, out);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let lines = key_lines(&text);
        if !lines.is_empty() {
            out.push((p.display().to_string(), lines));
        }
    }
}

/// Pieces of `secret` that must not appear: the whole (when short) or
/// every 24-character window at 12-character steps.
fn pieces(secret: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 24 {
        return vec![secret.to_string()];
    }
    (0..=chars.len() - 24)
        .step_by(12)
        .map(|i| chars[i..i + 24].iter().collect())
        .collect()
}

/// The long base64 payloads (`content:` values) of a user-data document.
fn user_data_payloads(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|l| l.trim().strip_prefix("content:"))
        .map(|c| c.trim().to_string())
        .filter(|c| c.len() >= 24)
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap().stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_at_debug_level() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root (the local provider creates network namespaces); run as root");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut a = AdaptorProcess::new(NODE, "10.217.9.0".parse().unwrap());

    // Registry credentials with a random password.
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let user_pass = format!("robot$puller:{password}");
    let auth_value = b64.encode(&user_pass);
    let auth_json = format!(
        r#"{{"auths":{{"registry.example.com":{{"auth":"{auth_value}","email":"ops@example.com"}}}}}}"#
    );
    let auth_file = a.dir.path().join("auth.json");
    std::fs::write(&auth_file, &auth_json).unwrap();
    // Initdata as the shim sends it: base64 of gzip'd TOML.
    let marker = format!("initdata-secret-{:016x}", rand::random::<u64>());
    let toml = format!(
        "algorithm = \"sha384\"\nversion = \"0.1.0\"\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs\"\ncert = \"{marker}\"\n'''\n"
    );
    let initdata = b64.encode(gzip(toml.as_bytes()));
    let node_default = b64.encode(gzip(b"version = \"0.1.0\"\n[data]\n"));
    a.env = vec![
        (
            "RUST_LOG".into(),
            std::env::var("SECRETS_LOG_LEVEL").unwrap_or_else(|_| "debug".into()),
        ),
        (
            "PEERPOD_REGISTRY_AUTH_FILE".into(),
            auth_file.display().to_string(),
        ),
        ("INITDATA".into(), node_default.clone()),
    ];
    a.start().await;

    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    let mut ann = shim_annotations("secret-pod", "default");
    ann.insert(
        "io.katacontainers.config.hypervisor.cc_init_data".into(),
        initdata.clone(),
    );
    let sock = h.create_vm("secrets-1", ann, "").await.unwrap();
    h.start_vm("secrets-1", Duration::from_secs(30))
        .await
        .unwrap();
    let sock = Path::new(&sock);
    assert!(matches!(
        agent_health(sock, Duration::from_secs(10)).await,
        Ok(ServingStatus::SERVING)
    ));
    let r = raw_call(sock, "grpc.AgentService", "GetGuestDetails", &[])
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);

    // While the instance runs: its key material, its user data, its logs,
    // and what the VM's user-data step prints at debug level.
    let instances = a
        .local()
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: NODE.into(),
            sandbox_id: "secrets-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(instances.len(), 1);
    let idir = a.state().join("local/instances").join(&instances[0].id);
    let user_data = std::fs::read_to_string(idir.join("user-data")).unwrap();
    assert!(
        user_data.contains(&b64.encode(&auth_json)),
        "the VM gets the registry credentials"
    );
    let mut keys = Vec::new();
    private_keys_under(&a.state(), &mut keys);
    // The forwarder's key travels inside the user data (base64).
    for (n, p) in user_data_payloads(&user_data).iter().enumerate() {
        if let Ok(decoded) = b64.decode(p) {
            let lines = key_lines(&String::from_utf8_lossy(&decoded));
            if !lines.is_empty() {
                keys.push((
                    format!("user-data payload {n} of {}", instances[0].id),
                    lines,
                ));
            }
        }
    }
    let found: Vec<&String> = keys.iter().map(|(p, _)| p).collect();
    assert!(
        found.iter().any(|p| p.ends_with("ca/ca.key")),
        "the node CA key is among the checked keys: {found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains(&instances[0].id)),
        "the forwarder's key is among the checked keys: {found:?}"
    );
    let mut logs: Vec<(String, String)> = Vec::new();
    for f in ["forwarder.log", "agent.log"] {
        logs.push((
            f.to_string(),
            std::fs::read_to_string(idir.join(f)).unwrap_or_default(),
        ));
    }
    let step_dir = tempfile::tempdir().unwrap();
    let copy = step_dir.path().join("user-data");
    std::fs::write(&copy, &user_data).unwrap();
    let step = std::process::Command::new(bin_path("process-user-data"))
        .args(["--source", "file", "--file"])
        .arg(&copy)
        .arg("--out-dir")
        .arg(step_dir.path().join("run"))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(step.status.success(), "{step:?}");
    logs.push((
        "process-user-data".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&step.stdout),
            String::from_utf8_lossy(&step.stderr)
        ),
    ));
    assert!(
        logs[0].1.contains("DEBUG") || a.log().contains("DEBUG"),
        "debug logging is on"
    );

    h.stop_vm("secrets-1").await.unwrap();
    let wait = Instant::now();
    while idir.exists() && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!idir.exists(), "the instance is gone");
    // The teardown logs its end after the instance is gone (tunnel and pod
    // directory next): wait for it, so the log covers the whole run.
    let wait = Instant::now();
    while !a.log().contains("sandbox stopped") && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.sigterm();
    logs.push(("cloud-api-adaptor".into(), a.log()));
    assert!(
        logs[3].1.contains("sandbox stopped"),
        "the adaptor log covers the whole run"
    );

    let mut secrets: Vec<(String, String)> = vec![
        ("registry auth file".into(), auth_json.clone()),
        ("registry auth value".into(), auth_value.clone()),
        ("registry user:password".into(), user_pass.clone()),
        ("registry password".into(), password.clone()),
        ("base64 of the auth file".into(), b64.encode(&auth_json)),
        ("initdata (annotation)".into(), initdata.clone()),
        ("initdata content".into(), marker.clone()),
    ];
    for (path, lines) in &keys {
        secrets.push((format!("private key {path}"), lines.concat()));
        for l in lines {
            secrets.push((format!("private key line of {path}"), l.clone()));
        }
    }
    for p in user_data_payloads(&user_data) {
        secrets.push(("user-data payload".into(), p));
    }
    // The detector works: run on the user data itself (which must carry
    // them), it finds the encoded credentials and the forwarder's key.
    let control: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| pieces(s).iter().any(|p| user_data.contains(p.as_str())))
        .map(|(w, _)| w.as_str())
        .collect();
    assert!(
        control.contains(&"base64 of the auth file") && control.contains(&"user-data payload"),
        "the leak detector finds secrets where they are: {control:?}"
    );
    let mut leaks = Vec::new();
    for (log_name, text) in &logs {
        for (n, line) in text.lines().enumerate() {
            if line.contains("PRIVATE KEY") {
                leaks.push(format!("{log_name}:{}: a PRIVATE KEY block", n + 1));
            }
        }
        for (what, s) in &secrets {
            if pieces(s).iter().any(|p| text.contains(p.as_str())) {
                leaks.push(format!("{log_name}: part of the {what}"));
            }
        }
    }
    eprintln!(
        "secrets test: {} secrets ({} private keys) checked against {} log lines",
        secrets.len(),
        keys.len(),
        logs.iter().map(|(_, t)| t.lines().count()).sum::<usize>()
    );
    for (n, t) in &logs {
        eprintln!(
            "  {n}: {} lines, {} at DEBUG",
            t.lines().count(),
            t.matches(" DEBUG ").count()
        );
    }
    if let Ok(p) = std::env::var("SECRETS_DUMP") {
        let all: Vec<String> = logs.iter().map(|(n, t)| format!("=== {n}\n{t}")).collect();
        std::fs::write(p, all.concat()).ok();
    }
    assert!(leaks.is_empty(), "secrets in logs: {leaks:#?}");
}

/// The node's own registry credentials (`/root/containers/auth.json`,
/// where the Go adaptor's deployments mount them) are not shipped to pod
/// VMs unless the operator configures a file explicitly: every pod VM
/// would get them. The adaptor runs in a mount namespace whose `/root`
/// holds such a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_auth_json_is_not_shipped_by_default() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root (the local provider creates network namespaces); run as root");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut a = AdaptorProcess::new("authdefault-node", "10.217.10.0".parse().unwrap());
    let marker = format!("node-cred-{:016x}", rand::random::<u64>());
    let auth_json = format!(r#"{{"auths":{{"registry.example.com":{{"auth":"{marker}"}}}}}}"#);
    let out = a.in_mount_ns(
        "sh",
        &[
            "-c",
            &format!(
                "mount -t tmpfs -o mode=0700 peerpod-test /root && mkdir /root/containers && \
                 printf '%s' '{auth_json}' > /root/containers/auth.json && cat /root/containers/auth.json"
            ),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&marker),
        "the node file is in place: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start().await;
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    h.create_vm("authdef-1", shim_annotations("pod", "default"), "")
        .await
        .unwrap();
    h.start_vm("authdef-1", Duration::from_secs(30))
        .await
        .unwrap();
    let instances = a
        .local()
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: "authdefault-node".into(),
            sandbox_id: "authdef-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(instances.len(), 1);
    let idir = a.state().join("local/instances").join(&instances[0].id);
    let user_data = std::fs::read_to_string(idir.join("user-data")).unwrap();
    assert!(
        !user_data.contains(peerpod_vmconfig::userdata::AUTH_JSON_PATH),
        "registry credentials were shipped without being configured"
    );
    assert!(!user_data.contains(&b64.encode(&auth_json)));
    assert!(!idir.join("run/auth.json").exists());
    h.stop_vm("authdef-1").await.unwrap();
    let wait = Instant::now();
    while idir.exists() && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
