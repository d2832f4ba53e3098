//! The adaptor's plugin client against plugins that misbehave: one that
//! hangs, one that crashes mid-call, one that answers garbage, one that
//! speaks an old protocol version, and one that restarts. Each gives a
//! named error (the plugin, its socket, the call, what went wrong), and
//! the client recovers once a good plugin answers again.
//!
//! The crashing and restarting plugins are real processes: this test
//! binary run again as a plugin child (see `plugin_child`), killed with
//! SIGKILL.

use peerpod_protocols::provider_v1 as pb;
use peerpod_protocols::tonic::{self, Request, Response, Status};
use peerpod_provider_api::{ErrorKind, OwnerTags, Provider, ProviderError};
use peerpod_provider_conformance::basic_request;
use peerpod_provider_conformance::memory::MemoryProvider;
use peerpod_provider_plugin::{PluginConfig, PluginProvider};
use peerpod_provider_plugin_server::service::ProviderService;
use peerpod_provider_plugin_server::PluginServer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PEERPOD_TEST_PLUGIN_CHILD_SOCKET";

/// Not a test of its own: when this binary runs with `CHILD_ENV` set, it
/// becomes a memory plugin serving that socket until killed. Its creates
/// hang when `PEERPOD_TEST_PLUGIN_CHILD_STALL` is set.
#[test]
fn plugin_child() {
    let Ok(sock) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let m = Arc::new(MemoryProvider::new());
        if std::env::var("PEERPOD_TEST_PLUGIN_CHILD_STALL").is_ok() {
            m.stall(true);
        }
        let s = PluginServer::new(m).bind(Path::new(&sock)).unwrap();
        s.serve_until(std::future::pending()).await.unwrap();
    });
}

/// A plugin child process, SIGKILLed on drop.
struct ChildPlugin(Child);

impl ChildPlugin {
    async fn start(sock: &Path, stall: bool) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "plugin_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if stall {
            cmd.env("PEERPOD_TEST_PLUGIN_CHILD_STALL", "1");
        }
        let c = ChildPlugin(cmd.spawn().unwrap());
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(sock).is_ok() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("plugin child did not listen on {}", sock.display());
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildPlugin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(sock: &Path, call: Duration) -> PluginProvider {
    let mut cfg = PluginConfig::new(sock);
    cfg.call_timeout = call;
    cfg.connect_timeout = Duration::from_millis(500);
    PluginProvider::new(cfg)
}

fn node(n: &str) -> OwnerTags {
    OwnerTags {
        node: n.into(),
        ..Default::default()
    }
}

fn req(n: &str) -> peerpod_provider_api::InstanceRequest {
    let mut o = node("n1");
    o.sandbox_id = n.into();
    basic_request(&format!("podvm-{n}"), o)
}

/// Serves `svc` on `sock` in this process until the returned sender is dropped.
fn serve<S>(svc: S, sock: &Path) -> tokio::sync::oneshot::Sender<()>
where
    S: pb::provider_server::Provider,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::UnixListener::bind(sock).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::provider_server::ProviderServer::new(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .unwrap();
    });
    tx
}

fn assert_named(e: &ProviderError, sock: &Path, parts: &[&str]) {
    let s = e.to_string();
    assert!(
        s.contains(&sock.display().to_string()),
        "names the socket: {s}"
    );
    assert!(s.contains("plugin"), "says plugin: {s}");
    for p in parts {
        assert!(s.contains(p), "{p:?} in {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_hangs_gives_a_named_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // 1. Accepts connections and never answers (not even the handshake).
    let sock = dir.path().join("silent.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            conns.push(c);
        }
    });
    let c = client(&sock, Duration::from_secs(5));
    let t = Instant::now();
    let e = c.list_instances(&node("n1")).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded by the connect timeout"
    );
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert_eq!(e.code.as_deref(), Some("PluginTimeout"), "{e}");
    assert_named(&e, &sock, &["Handshake", "hangs"]);
    held.abort();

    // 2. Handshakes, then hangs in CreateInstance: the call deadline.
    let sock = dir.path().join("stalled.sock");
    let m = Arc::new(MemoryProvider::new());
    let s = PluginServer::new(m.clone()).bind(&sock).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(s.serve_until(async {
        let _ = stopped.await;
    }));
    let c = client(&sock, Duration::from_millis(800));
    m.stall(true);
    let e = c.create_instance(req("sbhang")).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("PluginTimeout"), "{e}");
    assert!(e.retryable());
    assert_named(
        &e,
        &sock,
        &["CreateInstance", "did not answer within 800ms"],
    );
    // The plugin answers again: the same client works.
    m.stall(false);
    let i = c.create_instance(req("sbok")).await.unwrap();
    c.delete_instance(&i.id).await.unwrap();
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_crashing_mid_call_is_named_and_a_restarted_one_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let mut child = ChildPlugin::start(&sock, true).await;
    // The child's backend never answers: the create is in the plugin
    // when it dies.
    let c = Arc::new(client(&sock, Duration::from_secs(20)));
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.create_instance(req("sbcrash")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    child.kill();
    let e = call.await.unwrap().unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the crash ends the call at once"
    );
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert_eq!(e.code.as_deref(), Some("PluginUnavailable"), "{e}");
    assert_named(&e, &sock, &["CreateInstance failed"]);

    // Down: a named error, quickly.
    let e = c.list_instances(&node("n1")).await.unwrap_err();
    assert_named(&e, &sock, &["cannot connect"]);

    // A restarted plugin (new process, same socket): used on the next
    // call, after a new handshake, without an error reaching the caller.
    let _child2 = ChildPlugin::start(&sock, false).await;
    let i = c.create_instance(req("sbafter")).await.unwrap();
    assert_eq!(c.list_instances(&node("n1")).await.unwrap().len(), 1);
    c.delete_instance(&i.id).await.unwrap();
    let text = c.metrics().render();
    assert!(text.contains("peerpod_plugin_connects_total 2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_calls_is_invisible_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let c = client(&sock, Duration::from_secs(10));
    for round in 0..3 {
        let mut child = ChildPlugin::start(&sock, false).await;
        // Every call of every kind works first time after a restart
        // (CreateInstance included: the request never left on the dead
        // connection, so sending it on the new one is safe).
        let i = c
            .create_instance(req(&format!("sbr{round}")))
            .await
            .unwrap();
        assert_eq!(c.list_instances(&node("n1")).await.unwrap().len(), 1);
        c.delete_instance(&i.id).await.unwrap();
        child.kill();
    }
    let text = c.metrics().render();
    assert!(text.contains("peerpod_plugin_connects_total 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_answering_garbage_is_named() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    for (name, reply) in [
        (
            "http1",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ] {
        let sock = dir.path().join(format!("{name}.sock"));
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let srv = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf).await;
                    let _ = c.write_all(&reply).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        let c = client(&sock, Duration::from_secs(5));
        let t = Instant::now();
        let e = c.verify().await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: fails fast, no hang"
        );
        assert_eq!(e.code.as_deref(), Some("PluginUnavailable"), "{name}: {e}");
        assert_named(&e, &sock, &["does not speak gRPC"]);
        srv.abort();
    }
}

/// A plugin of another protocol version (or none): the real service with
/// its handshake replaced.
struct OldPlugin {
    inner: ProviderService,
    version: Option<u32>,
}

#[tonic::async_trait]
impl pb::provider_server::Provider for OldPlugin {
    async fn handshake(
        &self,
        r: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeReply>, Status> {
        let Some(v) = self.version else {
            return Err(Status::unimplemented("unknown method Handshake"));
        };
        let mut reply = self.inner.handshake(r).await?.into_inner();
        reply.protocol_version = v;
        reply.provider_name = "oldcloud".into();
        Ok(Response::new(reply))
    }
    async fn create_instance(
        &self,
        r: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::CreateInstanceReply>, Status> {
        self.inner.create_instance(r).await
    }
    async fn delete_instance(
        &self,
        r: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<pb::DeleteInstanceReply>, Status> {
        self.inner.delete_instance(r).await
    }
    type ListInstancesStream =
        <ProviderService as pb::provider_server::Provider>::ListInstancesStream;
    async fn list_instances(
        &self,
        r: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<Self::ListInstancesStream>, Status> {
        self.inner.list_instances(r).await
    }
    async fn verify(
        &self,
        r: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReply>, Status> {
        self.inner.verify(r).await
    }
    async fn console_tail(
        &self,
        r: Request<pb::ConsoleTailRequest>,
    ) -> Result<Response<pb::ConsoleTailReply>, Status> {
        self.inner.console_tail(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_or_foreign_protocol_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    for (version, parts, fix) in [
        (
            Some(0u32),
            vec!["oldcloud", "speaks provider protocol v0", "v1..=v1"],
            "upgrade the plugin",
        ),
        (
            Some(7),
            vec!["oldcloud", "speaks provider protocol v7"],
            "downgrade the plugin",
        ),
        (
            None,
            vec!["does not answer Handshake", "predates provider protocol v1"],
            "",
        ),
    ] {
        let sock: PathBuf = dir.path().join(format!("v{version:?}.sock"));
        let m = Arc::new(MemoryProvider::new());
        let _stop = serve(
            OldPlugin {
                inner: ProviderService::new(m.clone()),
                version,
            },
            &sock,
        );
        let c = client(&sock, Duration::from_secs(5));
        for e in [
            c.create_instance(req("sbold")).await.unwrap_err(),
            c.verify().await.unwrap_err(),
        ] {
            assert_eq!(e.kind, ErrorKind::InvalidConfig, "{e}");
            assert_eq!(e.code.as_deref(), Some("PluginProtocolVersion"), "{e}");
            assert_named(&e, &sock, &parts);
            assert!(e.to_string().contains(fix), "{e}");
        }
        assert!(
            m.is_empty(),
            "nothing was created through an unchecked plugin"
        );
    }
}
