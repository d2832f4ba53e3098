//! The adaptor daemon with its device plugin on: once it serves, it
//! registers with the kubelet (played here by a tonic Registration server
//! on a temporary kubelet.sock) and advertises one healthy
//! `kata.peerpods.io/vm` device per allowed sandbox; at shutdown it stops
//! serving and removes its socket.

use peerpod_deviceplugin::api::device_plugin_client::DevicePluginClient;
use peerpod_deviceplugin::api::registration_server::{Registration, RegistrationServer};
use peerpod_deviceplugin::api::{Empty, RegisterRequest};
use peerpod_tests::harness::config_in;
use peerpod_tests::process_provider::ProcessProvider;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

struct Kubelet(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(Empty {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_advertises_its_limit_to_the_kubelet() {
    peerpod_tests::harness::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("device-plugins");
    std::fs::create_dir(&plugins).unwrap();
    let listener = tokio::net::UnixListener::bind(plugins.join("kubelet.sock")).unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let kubelet = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Kubelet(tx)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    struct Abort(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _kubelet = Abort(kubelet);

    let mut cfg = config_in(dir.path(), "dp-node");
    cfg.tls = false;
    cfg.limit_per_node = Some(4);
    let mut dp = peerpod_deviceplugin::Config::new(&plugins, 4);
    dp.watch_interval = Duration::from_millis(50);
    let sock = dp.endpoint_path();
    cfg.device_plugin = Some(dp);
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let daemon = cloud_api_adaptor::Daemon::start(cfg, provider)
        .await
        .unwrap();

    let r = tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .expect("the daemon registers")
        .unwrap();
    assert_eq!(r.version, "v1beta1");
    assert_eq!(r.resource_name, "kata.peerpods.io/vm");
    assert_eq!(r.endpoint, "peerpod-vm.sock");
    let channel = peerpod_deviceplugin::register::unix_channel(&sock)
        .await
        .unwrap();
    let mut stream = DevicePluginClient::new(channel)
        .list_and_watch(Empty {})
        .await
        .unwrap()
        .into_inner();
    let list = stream.message().await.unwrap().unwrap();
    assert_eq!(list.devices.len(), 4, "one device per allowed sandbox");
    assert!(list.devices.iter().all(|d| d.health == "Healthy"));

    daemon.shutdown().await;
    assert!(!sock.exists(), "plugin socket removed at shutdown");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "ListAndWatch ended: {end:?}");
}
