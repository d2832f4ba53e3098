//! A `peerpods-webhook` process pointed at the API stand-in, killed on
//! drop, and an HTTPS client that trusts only the CA the webhook put in
//! the caBundle.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "peerpods-system";
pub const SERVICE: &str = "peerpods-webhook";
pub const CONFIG: &str = "peerpods-webhook";

pub struct Webhook {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    /// Starts the binary against `kubeconfig` and waits for its address.
    pub async fn start(kubeconfig: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerpods-webhook"))
            .args(["--listen", "127.0.0.1:0", "--namespace", NAMESPACE])
            .args(["--service", SERVICE, "--webhook-config", CONFIG])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerpods-webhook");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.contains("peerpods-webhook serving") {
                        if let Some(a) = line.split("addr=").nth(1) {
                            let a = a.split_whitespace().next().unwrap_or("");
                            let _ = tx.send(a.parse::<SocketAddr>().ok());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        // Waited for off the runtime: the API stand-in runs on it.
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        let addr = match got {
            Ok(Some(a)) => a,
            _ => {
                let _ = child.kill();
                panic!(
                    "webhook did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// The CA PEM the webhook put into the first webhook's caBundle.
pub fn ca_bundle(mwc: &serde_json::Value) -> String {
    let b = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle set");
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

/// An HTTP/1.1 connection over TLS that verifies the server against `ca_pem`
/// for the Service's DNS name (as the API server does).
pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Self {
        Self::try_connect(addr, ca_pem)
            .await
            .expect("TLS connection to the webhook")
    }

    pub async fn try_connect(addr: SocketAddr, ca_pem: &str) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc")).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    /// One request: (status, body).
    pub async fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{SERVICE}.{NAMESPACE}.svc"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send.ready().await.expect("connection usable");
        let resp = self.send.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(w: &Webhook, ca_pem: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::try_connect(w.addr, ca_pem).await {
            if c.request("GET", "/readyz", vec![]).await.0 == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "webhook never ready; log:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stand-in's configuration carries a caBundle.
pub async fn wait_ca_bundle(api: &super::apiserver::ApiServer, w: &Webhook) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mwc = api.mwc(CONFIG);
        let all_set = mwc["webhooks"].as_array().unwrap().iter().all(|h| {
            h["clientConfig"]["caBundle"]
                .as_str()
                .is_some_and(|b| b != "b2xkIGJ1bmRsZQ==")
        });
        if all_set {
            return ca_bundle(&mwc);
        }
        assert!(
            Instant::now() < deadline,
            "caBundle never patched; log:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
