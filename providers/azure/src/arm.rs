//! A thin Azure Resource Manager REST client: JSON requests with a bearer
//! token from a `TokenCredential`, throttling (429) retried after
//! `Retry-After` a bounded number of times, and long-running operations
//! followed through their `Azure-AsyncOperation` (or `Location`) URL. A
//! PUT or DELETE is sent once; only the status URL is polled.
//!
//! Status and `nextLink` URLs come from the server: they are followed only
//! when they point at the configured ARM endpoint, so the bearer token is
//! never sent anywhere else.

use crate::errors::{from_operation, from_response};
use azure_core::credentials::TokenCredential;
use peerpod_provider_api::{ErrorKind, ProviderError};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the client waits and retries.
#[derive(Debug, Clone)]
pub struct ArmTiming {
    /// Pause between polls of an operation when the server names none.
    pub poll_interval: Duration,
    /// Longest wait for one long-running operation.
    pub operation_timeout: Duration,
    /// Retries of a throttled (429) call.
    pub max_throttle_retries: u32,
    /// Longest `Retry-After` honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for ArmTiming {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(15 * 60),
            max_throttle_retries: 4,
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// An answered ARM call.
#[derive(Debug)]
pub struct ArmResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl ArmResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// See the module doc.
pub struct ArmClient {
    http: reqwest::Client,
    endpoint: url::Url,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    timing: ArmTiming,
}

fn transient(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::new(ErrorKind::Transient, format!("{what}: {e}"))
}

impl ArmClient {
    /// A client for `endpoint` (e.g. `https://management.azure.com`).
    pub fn new(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        timing: ArmTiming,
    ) -> Result<Self, ProviderError> {
        let endpoint = url::Url::parse(endpoint).map_err(|e| {
            ProviderError::new(
                ErrorKind::InvalidConfig,
                format!("ARM endpoint {endpoint:?}: {e}"),
            )
        })?;
        let http = reqwest::Client::builder()
            .timeout(timing.request_timeout)
            .build()
            .map_err(|e| ProviderError::new(ErrorKind::Permanent, format!("HTTP client: {e}")))?;
        let scope = format!("{}/.default", endpoint.as_str().trim_end_matches('/'));
        Ok(Self {
            http,
            endpoint,
            scope,
            credential,
            timing,
        })
    }

    /// `path` (starting with `/subscriptions/…`) on the endpoint, with the
    /// api-version.
    pub fn url(&self, path: &str, api_version: &str) -> String {
        format!(
            "{}{}?api-version={api_version}",
            self.endpoint.as_str().trim_end_matches('/'),
            path
        )
    }

    /// Rejects a server-given URL that leaves the ARM endpoint.
    fn check_same_origin(&self, what: &str, link: &str) -> Result<(), ProviderError> {
        let u = url::Url::parse(link).map_err(|e| {
            ProviderError::new(
                ErrorKind::Permanent,
                format!("{what}: bad URL {link:?}: {e}"),
            )
        })?;
        if u.origin() != self.endpoint.origin() {
            return Err(ProviderError::new(
                ErrorKind::Permanent,
                format!(
                    "{what}: the server pointed at {}, which is not the ARM endpoint {}; \
                     not following it",
                    u.origin().ascii_serialization(),
                    self.endpoint.origin().ascii_serialization()
                ),
            ));
        }
        Ok(())
    }

    async fn token(&self) -> Result<String, ProviderError> {
        let t = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::PermissionDenied,
                    format!("getting an Entra ID token for {}: {e}", self.scope),
                )
                .with_code("CredentialUnavailable")
            })?;
        Ok(t.token.secret().to_string())
    }

    /// One call, retried only when ARM throttles it (the request then had
    /// no effect). Any non-2xx answer is an error carrying ARM's code,
    /// except the statuses in `accept`.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        accept: &[StatusCode],
    ) -> Result<ArmResponse, ProviderError> {
        let mut attempt = 0;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token)
                .header("accept", "application/json");
            if let Some(b) = body {
                let bytes = serde_json::to_vec(b).map_err(|e| {
                    ProviderError::new(ErrorKind::Permanent, format!("{what}: {e}"))
                })?;
                req = req.header("content-type", "application/json").body(bytes);
            }
            let started = Instant::now();
            let resp = req.send().await.map_err(|e| transient(what, e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(|e| transient(what, e))?;
            tracing::debug!(%method, url = %url.split('?').next().unwrap_or(url), status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "ARM call");
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < self.timing.max_throttle_retries
            {
                attempt += 1;
                let wait = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1 << attempt.min(5)))
                    .min(self.timing.max_retry_after);
                tracing::warn!(%what, attempt, wait_ms = wait.as_millis() as u64, "ARM throttled the call; retrying after Retry-After");
                tokio::time::sleep(wait).await;
                continue;
            }
            if !status.is_success() && !accept.contains(&status) {
                return Err(from_response(what, status.as_u16(), &bytes));
            }
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    ProviderError::new(
                        ErrorKind::Transient,
                        format!("{what}: answer is not JSON: {e}"),
                    )
                })?
            };
            return Ok(ArmResponse {
                status,
                headers,
                body,
            });
        }
    }

    /// GET of a URL that needs no bearer token (a blob SAS URL): the token
    /// is not sent. Returns at most the last `max_bytes` of the body.
    pub async fn get_unauthenticated(
        &self,
        what: &str,
        url: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, ProviderError> {
        // The URL carries a SAS signature: keep it out of errors and logs.
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| transient(what, e.without_url()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ProviderError::new(
                crate::errors::kind_of("", status.as_u16()),
                format!("{what}: HTTP {status}"),
            ));
        }
        let mut out: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transient(what, e.without_url()))?
        {
            out.extend_from_slice(&chunk);
            if out.len() > 2 * max_bytes {
                out.drain(..out.len() - max_bytes);
            }
        }
        if out.len() > max_bytes {
            out.drain(..out.len() - max_bytes);
        }
        Ok(out)
    }

    /// GET; `None` when the resource does not exist.
    pub async fn get(&self, what: &str, url: &str) -> Result<Option<Value>, ProviderError> {
        let r = self
            .call(what, Method::GET, url, None, &[StatusCode::NOT_FOUND])
            .await?;
        Ok((r.status != StatusCode::NOT_FOUND).then_some(r.body))
    }

    /// Every item of a list, following `nextLink`.
    pub async fn list(&self, what: &str, url: &str) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut next = Some(url.to_string());
        let mut pages = 0;
        while let Some(u) = next.take() {
            pages += 1;
            if pages > 1000 {
                return Err(ProviderError::new(
                    ErrorKind::Permanent,
                    format!("{what}: more than 1000 pages; stopping"),
                ));
            }
            let r = self.call(what, Method::GET, &u, None, &[]).await?;
            if let Some(items) = r.body.get("value").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            if let Some(link) = r.body.get("nextLink").and_then(Value::as_str) {
                if !link.is_empty() {
                    self.check_same_origin(what, link)?;
                    next = Some(link.to_string());
                }
            }
        }
        Ok(out)
    }

    /// PUT a resource and wait for its provisioning to end; returns the
    /// resource as ARM then reports it. The PUT is sent once.
    pub async fn put_and_wait(
        &self,
        what: &str,
        url: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        let r = self.call(what, Method::PUT, url, Some(body), &[]).await?;
        if let Some(op) = r.header("azure-asyncoperation") {
            self.wait_operation(what, &op).await?;
        } else if r.status == StatusCode::ACCEPTED {
            match r.header("location") {
                Some(loc) => self.wait_location(what, &loc).await?,
                None => self.wait_provisioned(what, url).await?,
            }
        } else {
            match provisioning_state(&r.body) {
                Some("Succeeded") | None => return Ok(r.body),
                Some("Failed" | "Canceled") => {
                    return Err(ProviderError::new(
                        ErrorKind::Permanent,
                        format!("{what}: provisioning failed"),
                    ))
                }
                Some(_) => self.wait_provisioned(what, url).await?,
            }
        }
        self.get(what, url).await?.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("{what}: the resource is gone right after it was created"),
            )
        })
    }

    /// DELETE a resource and wait until it is gone; not found is done.
    pub async fn delete_and_wait(&self, what: &str, url: &str) -> Result<(), ProviderError> {
        let r = self
            .call(what, Method::DELETE, url, None, &[StatusCode::NOT_FOUND])
            .await?;
        if r.status == StatusCode::NOT_FOUND || r.status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        if let Some(op) = r.header("azure-asyncoperation") {
            return self.wait_operation(what, &op).await;
        }
        if r.status == StatusCode::ACCEPTED {
            if let Some(loc) = r.header("location") {
                return self.wait_location(what, &loc).await;
            }
        }
        Ok(())
    }

    /// The pause a poll answer asks for, else ours.
    fn pause(&self, r: &ArmResponse) -> Duration {
        r.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(self.timing.poll_interval)
            .min(self.timing.max_retry_after)
    }

    fn timed_out(&self, what: &str, started: Instant) -> Result<(), ProviderError> {
        if started.elapsed() > self.timing.operation_timeout {
            return Err(ProviderError::new(
                ErrorKind::Transient,
                format!(
                    "{what}: still running after {:?}",
                    self.timing.operation_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Polls an `Azure-AsyncOperation` URL until `Succeeded`, `Failed` or
    /// `Canceled`.
    async fn wait_operation(&self, what: &str, op: &str) -> Result<(), ProviderError> {
        self.check_same_origin(what, op)?;
        let started = Instant::now();
        loop {
            let r = self.call(what, Method::GET, op, None, &[]).await?;
            match r.body.get("status").and_then(Value::as_str) {
                Some("Succeeded") => return Ok(()),
                Some(s @ ("Failed" | "Canceled")) => {
                    return Err(from_operation(what, s, &r.body));
                }
                _ => {}
            }
            self.timed_out(what, started)?;
            tokio::time::sleep(self.pause(&r)).await;
        }
    }

    /// Polls a `Location` URL until it stops answering 202.
    async fn wait_location(&self, what: &str, loc: &str) -> Result<(), ProviderError> {
        self.check_same_origin(what, loc)?;
        let started = Instant::now();
        loop {
            let r = self.call(what, Method::GET, loc, None, &[]).await?;
            if r.status != StatusCode::ACCEPTED {
                return Ok(());
            }
            self.timed_out(what, started)?;
            tokio::time::sleep(self.pause(&r)).await;
        }
    }

    /// Polls the resource itself until its provisioningState is terminal.
    async fn wait_provisioned(&self, what: &str, url: &str) -> Result<(), ProviderError> {
        let started = Instant::now();
        loop {
            let r = self.call(what, Method::GET, url, None, &[]).await?;
            match provisioning_state(&r.body) {
                Some("Succeeded") | None => return Ok(()),
                Some("Failed" | "Canceled") => {
                    return Err(ProviderError::new(
                        ErrorKind::Permanent,
                        format!("{what}: provisioning failed"),
                    ))
                }
                Some(_) => {}
            }
            self.timed_out(what, started)?;
            tokio::time::sleep(self.pause(&r)).await;
        }
    }
}

fn provisioning_state(v: &Value) -> Option<&str> {
    v.get("properties")?.get("provisioningState")?.as_str()
}
