//! The real `cloud-api-adaptor` binary with the `plugin` provider, end to
//! end: CreateVM → StartVM → Health through the forwarder the plugin
//! started → StopVM, with the Python example plugin and with the Rust
//! example plugin serving the local provider (the demo flow); and plugins
//! that crash, hang, answer garbage or speak an old protocol: the shim
//! gets an error naming the phase and the plugin, nothing leaks, and the
//! adaptor keeps serving the other sandboxes.

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use peerpod_protocols::health::health_check_response::ServingStatus;
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_provider_conformance::memory::MemoryProvider;
use peerpod_provider_plugin::{PluginConfig, PluginProvider};
use peerpod_provider_plugin_server::PluginServer;
use peerpod_tests::plugin_env::{
    free_port, http_get, running, LocalPlugin, PluginAdaptor, PythonPlugin,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

async fn start_and_check(h: &Hypervisor, a: &PluginAdaptor, id: &str) -> std::path::PathBuf {
    let sock = h
        .create_vm(id, shim_annotations(&format!("pod-{id}"), "default"), "")
        .await
        .unwrap_or_else(|e| panic!("CreateVM {id}: {e}\n{}", a.log()));
    h.start_vm(id, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("StartVM {id}: {e}\n{}", a.log()));
    let sock = std::path::PathBuf::from(sock);
    healthy(&sock).await;
    sock
}

async fn healthy(sock: &Path) {
    let st = agent_health(sock, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("Health through {}: {e}", sock.display()));
    assert_eq!(st, ServingStatus::SERVING);
}

/// Waits (30 s) until the adaptor has forgotten every sandbox.
async fn pods_gone(a: &PluginAdaptor) {
    let pods = a.dir.join("pods");
    for _ in 0..300 {
        let n = std::fs::read_dir(&pods).map(|rd| rd.count()).unwrap_or(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "sandboxes still present in {}:\n{}",
        pods.display(),
        a.log()
    );
}

fn client(sock: &Path) -> PluginProvider {
    PluginProvider::new(PluginConfig::new(sock))
}

fn node(n: &str) -> OwnerTags {
    OwnerTags {
        node: n.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_runs_a_sandbox_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let plugin = PythonPlugin::start(dir.path(), port);
    let mut a = PluginAdaptor::new(dir.path(), "py-node", port, &plugin.socket);
    let probe = format!("127.0.0.1:{}", free_port());
    a.start(&["--probe-listen", &probe]).await;
    let h = a.hypervisor().await;
    start_and_check(&h, &a, "sbpy1").await;

    // The plugin holds the instance, tagged for this node and sandbox.
    let listed = client(&plugin.socket)
        .list_instances(&node("py-node"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].tags.get("peerpod-sandbox").map(String::as_str),
        Some("sbpy1")
    );
    let pids: Vec<i32> = plugin.records().into_iter().flat_map(|r| r.2).collect();
    assert_eq!(pids.len(), 2, "agent and forwarder");

    // The plugin hop's metrics are on the adaptor's /metrics.
    let m = http_get(&probe, "/metrics").await;
    assert!(
        m.contains("peerpod_plugin_calls_total{method=\"CreateInstance\"} 1"),
        "{m}"
    );
    assert!(m.contains("peerpod_plugin_connects_total 1"), "{m}");

    h.stop_vm("sbpy1").await.unwrap();
    pods_gone(&a).await;
    assert!(plugin.records().is_empty(), "record removed");
    assert!(plugin.instance_dirs().is_empty());
    assert!(
        pids.iter().all(|p| !running(*p)),
        "forwarder and agent stopped"
    );
    assert!(
        a.log().contains("connected to the provider plugin"),
        "{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_flow_through_the_local_provider_as_a_plugin() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the local provider (served as a plugin) needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let third = 1 + rand::random::<u8>() % 250;
    let plugin = LocalPlugin::start(dir.path(), &format!("10.218.{third}.0"));
    let mut a = PluginAdaptor::new(dir.path(), "local-plugin-node", free_port(), &plugin.socket);
    a.start(&[]).await;
    // The plugin answered --check's lines too.
    let h = a.hypervisor().await;
    start_and_check(&h, &a, "sblp1").await;
    assert_eq!(plugin.instance_dirs().len(), 1);
    let before = plugin.processes().len();
    assert!(before >= 3, "plugin + forwarder + agent: {before}");
    h.stop_vm("sblp1").await.unwrap();
    pods_gone(&a).await;
    for _ in 0..100 {
        if plugin.instance_dirs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(plugin.instance_dirs().is_empty(), "instance removed");
    assert_eq!(plugin.processes().len(), 1, "only the plugin is left");
    let out = a.run_to_exit(&["--check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("provider plugin local"), "{text}");
}

/// Serves `reply` to every connection on `sock` (None: accept and never
/// answer), until dropped.
struct FakeSocket {
    task: tokio::task::JoinHandle<()>,
    path: std::path::PathBuf,
}

impl FakeSocket {
    fn start(path: &Path, reply: Option<Vec<u8>>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut c, _)) = l.accept().await {
                match &reply {
                    None => held.push(c),
                    Some(r) => {
                        let r = r.clone();
                        tokio::spawn(async move {
                            let mut buf = [0u8; 512];
                            let _ = c.read(&mut buf).await;
                            let _ = c.write_all(&r).await;
                        });
                    }
                }
            }
        });
        Self {
            task,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for FakeSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_give_the_shim_named_errors_and_the_adaptor_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut plugin = PythonPlugin::start(dir.path(), port);
    let sock = plugin.socket.clone();
    let mut a = PluginAdaptor::new(dir.path(), "bad-node", port, &sock);
    a.plugin_args = ["--plugin-connect-timeout", "2", "--plugin-timeout", "10"]
        .map(String::from)
        .to_vec();
    a.start(&[]).await;
    let h = a.hypervisor().await;
    let good = start_and_check(&h, &a, "sbgood").await;

    let fails = |id: &'static str| {
        let h = &h;
        async move {
            h.create_vm(id, shim_annotations(&format!("pod-{id}"), "default"), "")
                .await
                .unwrap();
            let e = h
                .start_vm(id, Duration::from_secs(60))
                .await
                .expect_err("StartVM must fail")
                .to_string();
            println!("{id}: {e}");
            e
        }
    };

    // 1. The plugin crashed (its socket file stays, nobody listens).
    plugin.sigkill();
    let e = fails("sbcrash").await;
    assert!(e.contains("provider create") && e.contains("plugin"), "{e}");
    assert!(
        e.contains(&sock.display().to_string()) && e.contains("cannot connect"),
        "{e}"
    );
    healthy(&good).await;

    // 2. Something on the socket that accepts and never answers.
    let hang = FakeSocket::start(&sock, None);
    let e = fails("sbhang").await;
    assert!(e.contains("provider create") && e.contains("plugin"), "{e}");
    assert!(e.contains("no Handshake answer within 2s"), "{e}");
    healthy(&good).await;
    drop(hang);

    // 3. Something on the socket that is not gRPC.
    let garbage = FakeSocket::start(
        &sock,
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec()),
    );
    let e = fails("sbgarbage").await;
    assert!(e.contains("provider create") && e.contains("plugin"), "{e}");
    assert!(e.contains("does not speak gRPC"), "{e}");
    assert!(e.contains(&sock.display().to_string()), "{e}");
    healthy(&good).await;
    drop(garbage);

    // 4. A plugin of an older protocol version.
    let old_backend = Arc::new(MemoryProvider::new());
    let old = PluginServer::new(old_backend.clone())
        .protocol_version(0)
        .bind(&sock)
        .unwrap();
    let (stop_old, stopped) = tokio::sync::oneshot::channel::<()>();
    let old_task = tokio::spawn(old.serve_until(async {
        let _ = stopped.await;
    }));
    let e = fails("sbold").await;
    assert!(e.contains("provider create") && e.contains("plugin"), "{e}");
    assert!(
        e.contains("speaks provider protocol v0") && e.contains("upgrade the plugin"),
        "{e}"
    );
    assert!(
        old_backend.is_empty(),
        "nothing was created through the refused plugin"
    );
    healthy(&good).await;
    let _ = stop_old.send(());
    old_task.await.unwrap().unwrap();

    // The good plugin is back: new sandboxes work, on the same adaptor.
    let pid = a.pid();
    plugin.spawn();
    start_and_check(&h, &a, "sbagain").await;
    healthy(&good).await;
    assert_eq!(a.pid(), pid, "the same adaptor process served throughout");

    for id in [
        "sbgood",
        "sbcrash",
        "sbhang",
        "sbgarbage",
        "sbold",
        "sbagain",
    ] {
        h.stop_vm(id).await.unwrap();
    }
    pods_gone(&a).await;
    for _ in 0..100 {
        if plugin.records().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        plugin.records().is_empty(),
        "nothing leaked: {:?}",
        plugin.records()
    );
}
