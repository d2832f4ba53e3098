//! A local Entra ID token endpoint over HTTPS (azure_identity only talks
//! to an https authority): `POST /{tenant}/oauth2/v2.0/token`, answering
//! the OAuth2 client-credentials flow with the ARM stand-in's token, or
//! `invalid_client` when told to. The form bodies it got are recorded.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct TokenState {
    /// (path, form fields) of every request.
    pub requests: Vec<(String, BTreeMap<String, String>)>,
    /// Refuse every request as Entra ID does a wrong secret.
    pub refuse: bool,
}

pub struct TokenServer {
    pub url: String,
    pub state: Arc<Mutex<TokenState>>,
    /// The server's self-signed certificate, to trust in the client.
    pub cert_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

async fn answer(
    state: Arc<Mutex<TokenState>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.requests.push((path.clone(), form(&body)));
    let (status, text) = if !path.ends_with("/oauth2/v2.0/token") {
        (404, r#"{"error":"not_found"}"#.to_string())
    } else if st.refuse {
        (
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.","error_codes":[7000215]}"#
                .to_string(),
        )
    } else {
        (
            200,
            format!(
                r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{}"}}"#,
                super::TOKEN
            ),
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

impl TokenServer {
    pub async fn start() -> TokenServer {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_pem = ck.cert.pem();
        let der = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(TokenState::default()));
        let s2 = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acc, s3) = (acceptor.clone(), s2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acc.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s4 = s3.clone();
                        async move { Ok::<_, Infallible>(answer(s4, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TokenServer {
            url,
            state,
            cert_pem,
            task,
        }
    }

    /// An HTTP client that trusts this server's certificate.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    pub fn requests(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.state.lock().unwrap().requests.clone()
    }
}
