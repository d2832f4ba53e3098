//! The warm pool's bootstrap channel between the adaptor's bind client and
//! a real forwarder in bootstrap mode: a pool VM serves nothing of the
//! agent API until bound; a Bind over the pinned, mutually authenticated
//! channel switches it to its sandbox (and persists that); and no per-pod
//! secret ever reaches a host that is not the pool VM the adaptor made.

use cloud_api_adaptor::ca::NodeCa;
use cloud_api_adaptor::pool::bind::{BindError, BootstrapClient};
use peerpod_relay::bootstrap::CallError;
use peerpod_tests::agent_double::{AgentDouble, Recorder};
use peerpod_tests::harness::{init_logging, read_response, request_frame};
use peerpod_vmconfig::bind::BindRequest;
use peerpod_vmconfig::{ForwarderConfig, TlsMaterial};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const POOL_VM: &str = "podvm-pool-0123456789";
const INSTANCE: &str = "podvm-web-abcdef12";
const SECRET_AUTH: &str = r#"{"auths":{"r.example":{"auth":"U0VDUkVULVRPS0VO"}}}"#;

struct PoolVm {
    _dir: tempfile::TempDir,
    ca: NodeCa,
    addr: SocketAddr,
    config_path: PathBuf,
    bootstrap: TlsMaterial,
    agent: AgentDouble,
    _server: AbortOnDrop,
}

/// Stops the forwarder task with the test, pass or fail.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A forwarder started from a pool VM's config (bootstrap identity for
/// `POOL_VM` issued by `issuer`), with the kata-agent double behind it.
async fn pool_vm(issuer: Option<&NodeCa>) -> PoolVm {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = NodeCa::load_or_create(&dir.path().join("state")).unwrap();
    let bootstrap = issuer.unwrap_or(&ca).issue_server(POOL_VM).unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = AgentDouble::start(&sock, Recorder::default())
        .await
        .unwrap();
    let mut cfg = ForwarderConfig::bootstrap(POOL_VM, bootstrap.clone());
    cfg.listen = "127.0.0.1:0".into();
    cfg.agent_socket = sock;
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let config_path = run.join("daemon.json");
    std::fs::write(&config_path, cfg.to_bytes()).unwrap();
    // As main.rs does: parse the file, bind, serve.
    let parsed = agent_forwarder::load_config(&config_path).unwrap();
    let fwd = agent_forwarder::Forwarder::bind(&parsed)
        .await
        .unwrap()
        .with_bind_target(Some(config_path.clone()), "unused-netns");
    assert!(fwd.is_bootstrap());
    let addr = fwd.local_addr().unwrap();
    let server = AbortOnDrop(tokio::spawn(fwd.serve()));
    PoolVm {
        _dir: dir,
        ca,
        addr,
        config_path,
        bootstrap,
        agent,
        _server: server,
    }
}

fn client(ca: &NodeCa, pinned: &str, addr: SocketAddr) -> BootstrapClient {
    BootstrapClient::new(
        &ca.issue_client().unwrap(),
        POOL_VM,
        pinned,
        addr,
        Duration::from_secs(3),
    )
    .unwrap()
}

fn bind_request(ca: &NodeCa) -> BindRequest {
    BindRequest::new(
        ForwarderConfig::new("sandbox-1", Some(ca.issue_server(INSTANCE).unwrap())),
        Some(SECRET_AUTH.into()),
        "web",
        "default",
    )
}

/// A Health check over TLS with `client`, server name `name`.
async fn health(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<ttrpc::Code, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(client)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(&request_frame(1, "grpc.Health", "Check", &[]))
        .await
        .map_err(|e| format!("write: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), read_response(&mut tls)).await {
        Ok(Ok(r)) => Ok(r.code),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

/// An agent call over the bootstrap identity's channel.
async fn agent_call_on_bootstrap(vm: &PoolVm) -> ttrpc::Code {
    let id = vm.ca.issue_client().unwrap();
    let cfg = peerpod_relay::tls::pinned_client_config(
        vm.ca.cert_pem(),
        &vm.bootstrap.cert_pem,
        &id.cert_pem,
        &id.key_pem,
    )
    .unwrap();
    health(vm.addr, cfg, POOL_VM).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_switches_a_pool_vm_to_its_sandbox() {
    let vm = pool_vm(None).await;
    let c = client(&vm.ca, &vm.bootstrap.cert_pem, vm.addr);
    c.ping().await.unwrap();
    // Unbound: agent calls are refused, nothing reaches the agent, and
    // the sandbox's name is not served.
    assert_eq!(
        agent_call_on_bootstrap(&vm).await,
        ttrpc::Code::FAILED_PRECONDITION
    );
    let r = health(vm.addr, vm.ca.client_config().unwrap(), INSTANCE).await;
    assert!(r.is_err(), "an unbound VM served the sandbox's name: {r:?}");
    assert!(vm.agent.recorder.seen().is_empty());

    c.bind(&bind_request(&vm.ca)).await.unwrap();

    // Bound: the sandbox's identity serves the agent API.
    assert_eq!(
        health(vm.addr, vm.ca.client_config().unwrap(), INSTANCE).await,
        Ok(ttrpc::Code::OK)
    );
    assert_eq!(vm.agent.recorder.seen().len(), 1);
    // Persisted (just after the answer): a forwarder restarted in the VM
    // serves the sandbox.
    let mut saved = agent_forwarder::load_config(&vm.config_path).unwrap();
    for _ in 0..500 {
        if saved.bootstrap.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        saved = agent_forwarder::load_config(&vm.config_path).unwrap();
    }
    assert_eq!(saved.sandbox_id, "sandbox-1");
    assert!(saved.bootstrap.is_none());
    let auth = vm.config_path.with_file_name("auth.json");
    assert_eq!(std::fs::read_to_string(&auth).unwrap(), SECRET_AUTH);
    use std::os::unix::fs::PermissionsExt;
    for f in [&auth, &vm.config_path] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    // One-time: the bootstrap identity is gone, a second bind cannot
    // even complete the handshake.
    let again = c.bind(&bind_request(&vm.ca)).await.unwrap_err();
    assert!(again.is_identity(), "{again}");
    vm.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_from_a_client_the_node_ca_did_not_sign_is_refused() {
    let vm = pool_vm(None).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = NodeCa::load_or_create(other_dir.path()).unwrap();
    // The intruder pins the right certificate (it is public) but holds a
    // client certificate of another CA.
    let mut id = other.issue_client().unwrap();
    id.ca_cert_pem = vm.ca.cert_pem().to_string();
    let intruder = BootstrapClient::new(
        &id,
        POOL_VM,
        &vm.bootstrap.cert_pem,
        vm.addr,
        Duration::from_secs(3),
    )
    .unwrap();
    let e = intruder.bind(&bind_request(&other)).await.unwrap_err();
    assert!(
        matches!(
            &e,
            BindError::Call {
                source: CallError::Io(_),
                ..
            }
        ),
        "{e}"
    );
    // Still unbound and usable by its adaptor.
    let saved = agent_forwarder::load_config(&vm.config_path).unwrap();
    assert!(saved.bootstrap.is_some());
    client(&vm.ca, &vm.bootstrap.cert_pem, vm.addr)
        .bind(&bind_request(&vm.ca))
        .await
        .unwrap();
    vm.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_with_an_identity_this_adaptor_did_not_issue_gets_nothing() {
    // A forwarder whose bootstrap certificate another CA issued for the
    // same pool VM name (a VM someone else made, at the address ours had).
    let other_dir = tempfile::tempdir().unwrap();
    let other = NodeCa::load_or_create(other_dir.path()).unwrap();
    let foreign = pool_vm(Some(&other)).await;
    // The adaptor pins the certificate it issued to its own pool VM.
    let ours = foreign.ca.issue_server(POOL_VM).unwrap();
    let c = client(&foreign.ca, &ours.cert_pem, foreign.addr);
    let e = c.bind(&bind_request(&foreign.ca)).await.unwrap_err();
    assert!(e.is_identity(), "{e}");
    assert!(e.to_string().contains("nothing was sent"), "{e}");
    let e = c.ping().await.unwrap_err();
    assert!(e.is_identity(), "{e}");
    // The foreign forwarder stayed unbound and got no secret.
    let saved = std::fs::read_to_string(&foreign.config_path).unwrap();
    assert!(saved.contains("bootstrap") && !saved.contains("sandbox-1"));
    assert!(!foreign.config_path.with_file_name("auth.json").exists());
    foreign.agent.stop().await;
}

/// A TLS server with a certificate *our* CA issued for the pool VM's name
/// but not the one pinned (the same name, another key: an instance that
/// took over the pool VM's address). It records every decrypted byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_our_ca_but_not_the_pinned_certificate_receives_no_bytes() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = NodeCa::load_or_create(dir.path()).unwrap();
    let pinned = ca.issue_server(POOL_VM).unwrap();
    let impostor = ca.issue_server(POOL_VM).unwrap();
    let server_cfg = peerpod_relay::tls::server_config(&impostor).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let handshakes = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (rec, hs) = (received.clone(), handshakes.clone());
    let server = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                hs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        }
    });
    let c = client(&ca, &pinned.cert_pem, addr);
    let e = c.bind(&bind_request(&ca)).await.unwrap_err();
    assert!(e.is_identity(), "{e}");
    // Give a late byte every chance to arrive before looking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "the impostor received application data"
    );
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the client must abort the handshake"
    );
    server.abort();
}
