//! The test plays the kubelet: a tonic `Registration` server on a
//! `kubelet.sock` in a temporary device-plugins directory. It checks what
//! the plugin registers, what it serves on its own socket, and that it
//! registers again after a kubelet restart (socket recreated, ours deleted).

use peerpod_deviceplugin::api::device_plugin_client::DevicePluginClient;
use peerpod_deviceplugin::api::registration_server::{Registration, RegistrationServer};
use peerpod_deviceplugin::api::{
    AllocateRequest, ContainerAllocateRequest, Empty, PreStartContainerRequest, RegisterRequest,
};
use peerpod_deviceplugin::register::unix_channel;
use peerpod_deviceplugin::{run, Config};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(20);

/// The kubelet's Registration service: records every request.
struct Kubelet {
    seen: mpsc::UnboundedSender<RegisterRequest>,
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.seen.send(req.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// A running fake kubelet; stopping it removes its socket, as a kubelet
/// that goes away leaves the directory to the next one.
struct FakeKubelet {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKubelet {
    fn start(path: &Path) -> (Self, mpsc::UnboundedReceiver<RegisterRequest>) {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (seen, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Kubelet { seen }))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        (
            Self {
                path: path.to_path_buf(),
                stop: Some(stop),
                task,
            },
            rx,
        )
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The plugin under test, stopped (and awaited) on drop of the guard.
struct Plugin {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), peerpod_deviceplugin::Error>>,
}

impl Plugin {
    fn start(config: Config) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, async {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Result<(), peerpod_deviceplugin::Error> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("plugin stops on shutdown")
            .unwrap()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(dir: &Path, devices: i64) -> Config {
    let mut c = Config::new(dir, devices);
    c.watch_interval = Duration::from_millis(50);
    c
}

async fn next_register(rx: &mut mpsc::UnboundedReceiver<RegisterRequest>) -> RegisterRequest {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the plugin registers within the wait")
        .expect("kubelet channel open")
}

async fn client(path: &Path) -> DevicePluginClient<tonic::transport::Channel> {
    DevicePluginClient::new(unix_channel(path).await.expect("plugin socket answers"))
}

fn assert_register(r: &RegisterRequest, endpoint: &str) {
    assert_eq!(r.version, "v1beta1");
    assert_eq!(
        r.endpoint, endpoint,
        "endpoint is a file name in the directory"
    );
    assert_eq!(r.resource_name, "kata.peerpods.io/vm");
    let o = r.options.as_ref().expect("options sent");
    assert!(!o.pre_start_required);
}

#[tokio::test]
async fn registers_and_serves_n_healthy_devices() {
    for n in [5i64, 0] {
        let dir = tempfile::tempdir().unwrap();
        let (kubelet, mut seen) = FakeKubelet::start(&dir.path().join("kubelet.sock"));
        let cfg = config(dir.path(), n);
        let sock = cfg.endpoint_path();
        let plugin = Plugin::start(cfg);
        let r = next_register(&mut seen).await;
        assert_register(&r, "peerpod-vm.sock");
        assert!(
            sock.exists(),
            "serving on {} when registering",
            sock.display()
        );

        let mut c = client(&sock).await;
        let opts = c
            .get_device_plugin_options(Empty {})
            .await
            .unwrap()
            .into_inner();
        assert!(!opts.pre_start_required);
        let mut stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
        let list = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .expect("a device list");
        assert_eq!(list.devices.len() as i64, n, "N devices from the config");
        assert!(list.devices.iter().all(|d| d.health == "Healthy"));
        let mut ids: Vec<_> = list.devices.iter().map(|d| d.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as i64, n, "device ids are distinct");

        if n > 0 {
            let resp = c
                .allocate(AllocateRequest {
                    container_requests: vec![
                        ContainerAllocateRequest {
                            devices_ids: vec![ids[0].clone()],
                        },
                        ContainerAllocateRequest {
                            devices_ids: vec![ids[1].clone()],
                        },
                    ],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                resp.container_responses.len(),
                2,
                "one answer per container"
            );
            for cr in &resp.container_responses {
                assert!(cr.envs.is_empty() && cr.mounts.is_empty() && cr.devices.is_empty());
            }
            c.pre_start_container(PreStartContainerRequest {
                devices_ids: vec![ids[0].clone()],
            })
            .await
            .unwrap();
        }
        let e = c
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: vec!["nvidia0".into()],
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("nvidia0"));

        plugin.stop().await.unwrap();
        // The open ListAndWatch ends when the plugin stops.
        let end = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
        assert!(!matches!(end, Ok(Some(_))), "stream ended: {end:?}");
        assert!(!sock.exists(), "socket removed at shutdown");
        kubelet.stop().await;
    }
}

#[tokio::test]
async fn negative_limit_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, mut seen) = FakeKubelet::start(&dir.path().join("kubelet.sock"));
    let cfg = config(dir.path(), -1);
    let sock = cfg.endpoint_path();
    // Returns by itself, without a shutdown.
    let (_keep, never) = oneshot::channel::<()>();
    tokio::time::timeout(
        WAIT,
        run(cfg, async {
            let _ = never.await;
        }),
    )
    .await
    .expect("run returns at once for a negative limit")
    .unwrap();
    assert!(seen.try_recv().is_err(), "no registration");
    assert!(!sock.exists(), "no socket served");
    kubelet.stop().await;
}

#[tokio::test]
async fn registers_again_after_kubelet_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kpath = dir.path().join("kubelet.sock");
    let cfg = config(dir.path(), 3);
    let sock = cfg.endpoint_path();
    // The plugin starts before the kubelet and waits for it.
    let plugin = Plugin::start(cfg);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (kubelet, mut seen) = FakeKubelet::start(&kpath);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    let mut old_stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(
        old_stream.message().await.unwrap().unwrap().devices.len(),
        3
    );

    // Kubelet restart: it goes away, deletes every plugin socket, and a new
    // kubelet.sock (new inode) appears.
    kubelet.stop().await;
    // (the plugin may have removed it already on seeing kubelet.sock go)
    let _ = std::fs::remove_file(&sock);
    let (kubelet, mut seen) = FakeKubelet::start(&kpath);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    let mut stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 3);
    let end = tokio::time::timeout(WAIT, old_stream.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the old stream ended: {end:?}");

    // Only kubelet.sock recreated (ours left alone): registers again too.
    kubelet.stop().await;
    let (kubelet, mut seen) = FakeKubelet::start(&kpath);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    c.get_device_plugin_options(Empty {}).await.unwrap();

    plugin.stop().await.unwrap();
    kubelet.stop().await;
}

#[tokio::test]
async fn registers_again_when_our_socket_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, mut seen) = FakeKubelet::start(&dir.path().join("kubelet.sock"));
    let cfg = config(dir.path(), 2);
    let sock = cfg.endpoint_path();
    let plugin = Plugin::start(cfg);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    std::fs::remove_file(&sock).unwrap();
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    let mut stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 2);
    plugin.stop().await.unwrap();
    kubelet.stop().await;
}

#[tokio::test]
async fn refused_registration_is_retried() {
    // A kubelet socket nobody answers on (a stale file): registration fails
    // and is retried; once a kubelet serves there, the plugin registers.
    let dir = tempfile::tempdir().unwrap();
    let kpath = dir.path().join("kubelet.sock");
    std::fs::write(&kpath, "").unwrap();
    let plugin = Plugin::start(config(dir.path(), 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (kubelet, mut seen) = FakeKubelet::start(&kpath);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    plugin.stop().await.unwrap();
    kubelet.stop().await;
}

#[tokio::test]
async fn registers_again_when_the_kubelet_drops_its_watch() {
    // A kubelet that lets go of the plugin's device list (its connection
    // closed, or it disconnected the resource because an older plugin of
    // the same name went away) must get a new registration, or the node
    // keeps zero allocatable slots.
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, mut seen) = FakeKubelet::start(&dir.path().join("kubelet.sock"));
    let cfg = config(dir.path(), 2);
    let sock = cfg.endpoint_path();
    let plugin = Plugin::start(cfg);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    let mut stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 2);
    assert!(seen.try_recv().is_err(), "no registration while watched");
    drop(stream);
    drop(c);
    assert_register(&next_register(&mut seen).await, "peerpod-vm.sock");
    let mut c = client(&sock).await;
    let mut stream = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().devices.len(), 2);
    plugin.stop().await.unwrap();
    kubelet.stop().await;
}
