//! Webhook latency under an open-loop load: AdmissionReviews sent at a
//! fixed rate (default 200/s for 30 s) over HTTPS keep-alive connections.
//! Open loop: a request never waits for an earlier answer (a new
//! connection is opened when none is idle), so a slow answer cannot hide
//! later ones. Latency is from the moment the request is handed to its
//! connection to the whole answer read; how late the client's 1 ms timer
//! fired against the schedule is reported beside it (client-side lag). The server is the library's HTTPS server with its own
//! runtime on its own threads, as in the binary; the client runs on
//! another. Baseline in the same run: `GET /healthz` at the same rate
//! (TLS + HTTP without the review).
//!
//! `cargo bench -p peerpods-webhook --bench admission [-- RATE SECONDS]`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use peerpods_webhook::mutate::MutationConfig;
use peerpods_webhook::server::{State, WebhookServer};
use peerpods_webhook::tls::{service_names, CertStore, WebhookCa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A pod as a Deployment makes it: several containers with env, mounts,
/// probes, and an init container; the target runtime class.
fn pod(i: usize, class: &str) -> Value {
    let env: Vec<Value> = (0..20)
        .map(|e| json!({"name": format!("VAR_{e}"), "value": format!("value-{e}-{i}")}))
        .collect();
    let container = |name: &str, cpu: &str, mem: &str| {
        json!({
            "name": name, "image": "registry.example.com/team/app:1.2.3",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": env,
            "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": "2", "memory": "2Gi"}},
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"},
                             {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 5},
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"
        })
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "app-7d4b9c-", "namespace": "team",
                     "labels": {"app": "app", "pod-template-hash": "7d4b9c"},
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d4b9c", "uid": "u", "controller": true}]},
        "spec": {
            "runtimeClassName": class,
            "initContainers": [container("migrate", "1", "512Mi")],
            "containers": [container("app", "500m", "1Gi"), container("sidecar", "100m", "128Mi"), container("metrics", "50m", "64Mi")],
            "volumes": [{"name": "cfg", "configMap": {"name": "app"}}],
            "serviceAccountName": "default", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }
    })
}

fn review(i: usize) -> Vec<u8> {
    // Most reviews are peer pods; one in five is another runtime class.
    let class = if i % 5 == 4 { "runc" } else { "kata-remote" };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": format!("uid-{i}"), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "team", "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                    "object": pod(i, class), "dryRun": false}
    }))
    .unwrap()
}

async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("peerpods-webhook.peerpods-system.svc").unwrap();
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Runs one open-loop phase: `rate` requests per second for `secs`.
async fn phase(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    rate: u64,
    secs: u64,
    mutate: bool,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<Sender>();
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(Duration, Duration)>();
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let bodies: Vec<Vec<u8>> = (0..50).map(review).collect();
    let start = Instant::now() + Duration::from_millis(50);
    let mut opened = 0;
    for i in 0..total {
        let at = start + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let mut send = match idle_rx.try_recv() {
            Ok(s) => s,
            Err(_) => {
                opened += 1;
                connect(addr, tls.clone()).await
            }
        };
        let body = if mutate {
            bodies[i % bodies.len()].clone()
        } else {
            Vec::new()
        };
        let (idle_tx, lat_tx) = (idle_tx.clone(), lat_tx.clone());
        tokio::spawn(async move {
            let req = hyper::Request::builder()
                .method(if mutate { "POST" } else { "GET" })
                .uri(if mutate { "/mutate" } else { "/healthz" })
                .header("host", "peerpods-webhook.peerpods-system.svc")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let sent = Instant::now();
            let lag = sent.saturating_duration_since(at);
            let resp = send.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            let took = sent.elapsed();
            if mutate {
                assert!(b.starts_with(b"{\"apiVersion\""), "a review answer");
            }
            let _ = lat_tx.send((took, lag));
            let _ = idle_tx.send(send);
        });
    }
    drop(lat_tx);
    let mut lat = Vec::with_capacity(total);
    let mut lags = Vec::with_capacity(total);
    while lat.len() < total {
        match tokio::time::timeout(Duration::from_secs(30), lat_rx.recv()).await {
            Ok(Some((d, l))) => {
                lat.push(d);
                lags.push(l);
            }
            _ => break,
        }
    }
    lat.sort();
    lags.sort();
    (lat, lags, opened)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);

    // The server: the library's HTTPS server on its own runtime, as the
    // binary runs it (multi-threaded, one worker per core).
    let ca = WebhookCa::generate().unwrap();
    let certs = CertStore::new(
        ca.issue_serving(&service_names("peerpods-webhook", "peerpods-system"))
            .unwrap(),
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let state = State::new(MutationConfig::default());
            state.set_ready(true);
            let server = WebhookServer::bind("127.0.0.1:0".parse().unwrap(), certs, state)
                .await
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addr = addr_rx.recv().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        println!("webhook admission bench: {rate} requests/s for {secs} s each, open loop, HTTPS keep-alive");
        println!("review body {} bytes (a 3-container + 1 init Deployment pod)", review(0).len());
        // The review handler alone (parse, size, patch, encode), no I/O:
        // the webhook's own CPU cost per review, whatever the machine load.
        let cfg = MutationConfig::default();
        let bodies: Vec<Vec<u8>> = (0..50).map(review).collect();
        let mut own: Vec<Duration> = (0..(rate * secs) as usize)
            .map(|i| {
                let t = Instant::now();
                let out = peerpods_webhook::review::answer(&bodies[i % bodies.len()], &cfg).unwrap();
                std::hint::black_box(out);
                t.elapsed()
            })
            .collect();
        own.sort();
        println!(
            "handler only (no I/O), {} reviews: p50 {:.3} ms, p99 {:.3} ms",
            own.len(),
            percentile(&own, 0.50),
            percentile(&own, 0.99)
        );
        let _ = phase(addr, tls.clone(), rate, 1, true).await; // warm-up
        println!("| path | requests | connections | p50 ms | p99 ms | max ms | client timer lag p99 ms |");
        println!("|---|---|---|---|---|---|---|");
        for (name, mutate) in [("GET /healthz (baseline)", false), ("POST /mutate (AdmissionReview)", true)] {
            let (lat, lags, opened) = phase(addr, tls.clone(), rate, secs, mutate).await;
            assert_eq!(lat.len() as u64, rate * secs, "every request answered");
            println!(
                "| {name} | {} | {opened} | {:.3} | {:.3} | {:.3} | {:.3} |",
                lat.len(),
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                lat.last().unwrap().as_secs_f64() * 1e3,
                percentile(&lags, 0.99)
            );
        }
    });
}
