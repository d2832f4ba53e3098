//! The adaptor's client of a provider plugin: a [`Provider`] whose every
//! call is a gRPC call on a unix socket.
//!
//! - Every call has a deadline (`call_timeout`, sent to the plugin as the
//!   gRPC timeout and enforced here); a plugin that does not answer in
//!   time gives a retryable error naming the plugin, the call and the
//!   limit.
//! - The connection is made on first use and begins with Handshake; a
//!   plugin speaking another protocol version is refused with a message
//!   naming both versions. When the plugin restarts, the next call makes a
//!   new connection and handshakes again: the channel's connector refuses
//!   to silently re-dial (that would skip the handshake), which marks the
//!   connection as ended, and a call that never left is sent again on the
//!   new one. Calls that are safe to repeat (all but CreateInstance) are
//!   retried once after any connection failure.
//! - The plugin's own errors arrive typed (kind, cloud code, message) and
//!   are passed on unchanged, prefixed with the plugin's name; a failed
//!   gRPC call (crash, garbage on the socket, unimplemented method) is an
//!   error of ours with a `Plugin…` code.

use crate::metrics::PluginMetrics;
use crate::wire;
use async_trait::async_trait;
use peerpod_protocols::provider_v1 as pb;
use peerpod_protocols::provider_v1::provider_client::ProviderClient;
use peerpod_protocols::tonic::transport::{Channel, Endpoint, Uri};
use peerpod_protocols::tonic::{Code, Request, Status};
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The oldest protocol version this adaptor accepts from a plugin.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// How to reach the plugin and how long to wait for it.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The plugin's unix socket.
    pub socket: PathBuf,
    /// Deadline of each call (connecting included).
    pub call_timeout: Duration,
    /// Deadline of connecting plus the handshake.
    pub connect_timeout: Duration,
}

impl PluginConfig {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            call_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the plugin said about itself in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub protocol_version: u32,
    pub console_tail: bool,
}

/// One connection: its client and whether the channel has lost it.
struct Conn {
    client: ProviderClient<Channel>,
    info: PluginInfo,
    /// Set when the channel asked to dial again: the connection ended
    /// (plugin restarted or died), and whatever was queued never left.
    ended: Arc<AtomicBool>,
}

/// See the module doc.
pub struct PluginProvider {
    cfg: PluginConfig,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    info: std::sync::Mutex<Option<PluginInfo>>,
    metrics: PluginMetrics,
}

/// Outcome of one gRPC call: the transport failed (`Err`), or the plugin
/// answered (`Ok`) with a result or its own typed error.
type Answer<T> = Result<Result<T, ProviderError>, Status>;

impl PluginProvider {
    /// A client; nothing is dialled until the first call.
    pub fn new(cfg: PluginConfig) -> Self {
        Self {
            cfg,
            conn: tokio::sync::Mutex::new(None),
            info: std::sync::Mutex::new(None),
            metrics: PluginMetrics::new(),
        }
    }

    pub fn config(&self) -> &PluginConfig {
        &self.cfg
    }

    /// The per-call metrics (register them with the daemon's registry).
    pub fn metrics(&self) -> &PluginMetrics {
        &self.metrics
    }

    /// The last handshake's answer, once connected.
    pub fn info(&self) -> Option<PluginInfo> {
        self.info.lock().ok().and_then(|i| i.clone())
    }

    /// "plugin <name> at <socket>" (the name once known).
    fn who(&self) -> String {
        match self.info() {
            Some(i) => format!("plugin {} at {}", i.name, self.cfg.socket.display()),
            None => format!("plugin at {}", self.cfg.socket.display()),
        }
    }

    /// Connects and handshakes until it works or `wait` has passed. Only
    /// an absent or refusing socket is waited for (a plugin still
    /// starting); a version mismatch fails at once.
    pub async fn wait_ready(&self, wait: Duration) -> Result<PluginInfo, ProviderError> {
        let until = Instant::now() + wait;
        loop {
            match self.conn().await {
                Ok(c) => return Ok(c.info.clone()),
                Err(e)
                    if e.code.as_deref() == Some("PluginUnavailable") && Instant::now() < until =>
                {
                    tracing::debug!(error = %e, "waiting for the provider plugin");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The live connection, or a new one (dial + Handshake).
    async fn conn(&self) -> Result<Arc<Conn>, ProviderError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            if !c.ended.load(Ordering::SeqCst) {
                return Ok(Arc::clone(c));
            }
            tracing::info!(socket = %self.cfg.socket.display(), "provider plugin connection ended; reconnecting");
        }
        *g = None;
        let c = Arc::new(self.connect().await?);
        *g = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Drops `c` if it is still the current connection.
    async fn forget(&self, c: &Arc<Conn>) {
        let mut g = self.conn.lock().await;
        if g.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, c)) {
            *g = None;
        }
    }

    async fn connect(&self) -> Result<Conn, ProviderError> {
        let ended = Arc::new(AtomicBool::new(false));
        let dialled = Arc::new(AtomicBool::new(false));
        let (path, e2) = (self.cfg.socket.clone(), Arc::clone(&ended));
        // One connection per channel (see the module doc).
        let connector = tower::service_fn(move |_: Uri| {
            let (path, ended, dialled) = (path.clone(), Arc::clone(&e2), Arc::clone(&dialled));
            async move {
                if dialled.swap(true, Ordering::SeqCst) {
                    ended.store(true, Ordering::SeqCst);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the connection to the plugin ended (it restarted or exited); reconnecting",
                    ));
                }
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        let unavailable = |what: String| {
            ProviderError::new(
                ErrorKind::Transient,
                format!("plugin at {}: {what}", self.cfg.socket.display()),
            )
            .with_code("PluginUnavailable")
        };
        let limit = self.cfg.connect_timeout;
        // The URI is required by the API and unused: the connector dials
        // the socket.
        let endpoint =
            Endpoint::from_static("http://provider-plugin.invalid").connect_timeout(limit);
        let channel =
            match tokio::time::timeout(limit, endpoint.connect_with_connector(connector)).await {
                Ok(Ok(ch)) => ch,
                Ok(Err(e)) => {
                    return Err(unavailable(format!(
                        "cannot connect: {} (is the plugin running?)",
                        error_chain(&e)
                    )))
                }
                Err(_) => return Err(unavailable(format!("no connection within {limit:?}"))),
            };
        let mut client = ProviderClient::new(channel);
        let mut req = Request::new(pb::HandshakeRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            adaptor_version: env!("CARGO_PKG_VERSION").to_string(),
        });
        req.set_timeout(limit);
        let reply = match tokio::time::timeout(limit, client.handshake(req)).await {
            Ok(Err(s)) if is_deadline(&s) => {
                return Err(unavailable(format!(
                    "no Handshake answer within {limit:?} (the plugin hangs)"
                ))
                .with_code("PluginTimeout"))
            }
            Err(_) => {
                return Err(unavailable(format!(
                    "no Handshake answer within {limit:?} (the plugin hangs)"
                ))
                .with_code("PluginTimeout"))
            }
            Ok(Err(s)) if s.code() == Code::Unimplemented => {
                return Err(ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "plugin at {} does not answer Handshake: it predates provider protocol v{MIN_PROTOCOL_VERSION} \
                         or is not a peerpod provider plugin ({})",
                        self.cfg.socket.display(),
                        s.message()
                    ),
                )
                .with_code("PluginProtocolVersion"))
            }
            Ok(Err(s)) if ended.load(Ordering::SeqCst) || connection_lost(&s) => {
                return Err(unavailable(format!(
                    "the connection failed during the Handshake: the plugin exited, or what \
                     listens there does not speak gRPC (HTTP/2) ({})",
                    s.message()
                )))
            }
            Ok(Err(s)) => {
                return Err(unavailable(format!(
                    "Handshake failed: {} ({:?}) — is this a provider plugin?",
                    s.message(),
                    s.code()
                )))
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let v = reply.protocol_version;
        let name = if reply.provider_name.trim().is_empty() {
            "unnamed".to_string()
        } else {
            reply.provider_name
        };
        if !(MIN_PROTOCOL_VERSION..=pb::PROTOCOL_VERSION).contains(&v) {
            return Err(ProviderError::new(
                ErrorKind::InvalidConfig,
                format!(
                    "plugin {name} at {} speaks provider protocol v{v}; this adaptor speaks v{}..=v{}: \
                     {} the plugin",
                    self.cfg.socket.display(),
                    MIN_PROTOCOL_VERSION,
                    pb::PROTOCOL_VERSION,
                    if v < MIN_PROTOCOL_VERSION { "upgrade" } else { "downgrade" }
                ),
            )
            .with_code("PluginProtocolVersion"));
        }
        let info = PluginInfo {
            name,
            version: reply.plugin_version,
            protocol_version: v,
            console_tail: reply
                .capabilities
                .contains(&(pb::Capability::ConsoleTail as i32)),
        };
        tracing::info!(plugin = %info.name, plugin_version = %info.version, protocol = v,
            console_tail = info.console_tail, socket = %self.cfg.socket.display(), "connected to the provider plugin");
        self.metrics.connects.inc();
        if let Ok(mut i) = self.info.lock() {
            *i = Some(info.clone());
        }
        Ok(Conn {
            client,
            info,
            ended,
        })
    }

    /// Runs one call with the deadline, the reconnect rules of the module
    /// doc and the metrics.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        repeatable: bool,
        f: F,
    ) -> Result<T, ProviderError>
    where
        F: Fn(ProviderClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        let started = Instant::now();
        let limit = self.cfg.call_timeout;
        let attempts = async {
            let mut retried = false;
            loop {
                let c = self.conn().await?;
                let left = limit.saturating_sub(started.elapsed());
                match f(c.client.clone(), left).await {
                    Ok(answer) => {
                        return answer.map_err(|mut e| {
                            e.message = format!("{}: {}", self.who(), e.message);
                            e
                        })
                    }
                    Err(s) if is_deadline(&s) => return Err(self.timed_out(method, limit)),
                    Err(s) => {
                        let never_sent = c.ended.load(Ordering::SeqCst);
                        let lost = connection_lost(&s);
                        if lost || never_sent {
                            self.forget(&c).await;
                        }
                        if !retried && (never_sent || (repeatable && lost)) {
                            retried = true;
                            tracing::debug!(method, status = %s, "plugin call failed on a lost connection; retrying on a new one");
                            continue;
                        }
                        return Err(self.status_error(method, &s));
                    }
                }
            }
        };
        let res = match tokio::time::timeout(limit, attempts).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(method, limit)),
        };
        let took = started.elapsed();
        let failure = res.as_ref().err().map(|e| e.kind.as_str());
        self.metrics.observe(method, took, failure);
        if let Err(e) = &res {
            tracing::debug!(method, took_ms = took.as_millis() as u64, error = %e, "plugin call failed");
        }
        res
    }

    fn timed_out(&self, method: &str, limit: Duration) -> ProviderError {
        ProviderError::new(
            ErrorKind::Transient,
            format!(
                "{}: {method} did not answer within {limit:?} (PEERPOD_PLUGIN_TIMEOUT); the call was abandoned",
                self.who()
            ),
        )
        .with_code("PluginTimeout")
    }

    /// A failed gRPC call as a provider error naming the plugin.
    fn status_error(&self, method: &str, s: &Status) -> ProviderError {
        let (kind, code) = match s.code() {
            Code::DeadlineExceeded => (ErrorKind::Transient, "PluginTimeout"),
            Code::Unimplemented => (ErrorKind::Permanent, "PluginUnimplemented"),
            Code::ResourceExhausted => (ErrorKind::Throttled, "PluginStatus"),
            Code::InvalidArgument | Code::OutOfRange => (ErrorKind::InvalidRequest, "PluginStatus"),
            Code::PermissionDenied | Code::Unauthenticated => {
                (ErrorKind::PermissionDenied, "PluginStatus")
            }
            Code::NotFound => (ErrorKind::NotFound, "PluginStatus"),
            Code::FailedPrecondition => (ErrorKind::InvalidConfig, "PluginStatus"),
            // Crashed, reset, not speaking gRPC, or failing inside.
            _ => (ErrorKind::Transient, "PluginUnavailable"),
        };
        let detail = match std::error::Error::source(s) {
            Some(src) => format!("{} ({})", s.message(), error_chain(src)),
            None => s.message().to_string(),
        };
        ProviderError::new(
            kind,
            format!(
                "{}: {method} failed: {detail} (gRPC {:?})",
                self.who(),
                s.code()
            ),
        )
        .with_code(code)
    }
}

/// Whether the call ran out of time: the plugin said so, or the
/// channel's own enforcement of the gRPC timeout we sent fired first.
fn is_deadline(s: &Status) -> bool {
    s.code() == Code::DeadlineExceeded
        || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"))
}

/// Whether a failed call means the connection is gone (crash, reset,
/// garbage), as opposed to the plugin refusing the call.
fn connection_lost(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// An error and its sources, joined (tonic nests the cause of a
/// transport failure several levels deep).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn with_timeout<T>(msg: T, left: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(left);
    r
}

#[async_trait]
impl Provider for PluginProvider {
    fn name(&self) -> &str {
        "plugin"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        let msg = pb::CreateInstanceRequest {
            request: Some(wire::request_to_pb(req)),
        };
        self.call("CreateInstance", false, |mut c, left| {
            let msg = msg.clone();
            async move {
                let r = c
                    .create_instance(with_timeout(msg, left))
                    .await?
                    .into_inner();
                Ok(match r.result {
                    Some(pb::create_instance_reply::Result::Instance(i)) => {
                        wire::instance_from_pb(i)
                    }
                    Some(pb::create_instance_reply::Result::Error(e)) => {
                        Err(wire::error_from_pb(e))
                    }
                    None => Err(ProviderError::new(
                        ErrorKind::Permanent,
                        "CreateInstance answered neither an instance nor an error",
                    )
                    .with_code("PluginBadReply")),
                })
            }
        })
        .await
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        let msg = pb::DeleteInstanceRequest {
            instance_id: instance_id.to_string(),
        };
        self.call("DeleteInstance", true, |mut c, left| {
            let msg = msg.clone();
            async move {
                let r = c
                    .delete_instance(with_timeout(msg, left))
                    .await?
                    .into_inner();
                Ok(match r.error {
                    None => Ok(()),
                    Some(e) => Err(wire::error_from_pb(e)),
                })
            }
        })
        .await
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        let msg = pb::ListInstancesRequest {
            owner: Some(wire::owner_to_pb(owner)),
        };
        self.call("ListInstances", true, |mut c, left| {
            let msg = msg.clone();
            async move {
                let mut stream = c
                    .list_instances(with_timeout(msg, left))
                    .await?
                    .into_inner();
                let mut out = Vec::new();
                while let Some(item) = stream.message().await? {
                    match item.result {
                        Some(pb::list_instances_reply::Result::Instance(i)) => {
                            match wire::instance_from_pb(i) {
                                Ok(i) => out.push(i),
                                Err(e) => return Ok(Err(e)),
                            }
                        }
                        Some(pb::list_instances_reply::Result::Error(e)) => {
                            return Ok(Err(wire::error_from_pb(e)))
                        }
                        None => {}
                    }
                }
                Ok(Ok(out))
            }
        })
        .await
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = self
            .call("Verify", true, |mut c, left| async move {
                let r = c
                    .verify(with_timeout(pb::VerifyRequest {}, left))
                    .await?
                    .into_inner();
                Ok(match r.error {
                    None => Ok(r.lines),
                    Some(e) => Err(wire::error_from_pb(e)),
                })
            })
            .await?;
        if let Some(i) = self.info() {
            lines.insert(
                0,
                format!(
                    "provider plugin {} {} at {} (protocol v{})",
                    i.name,
                    i.version,
                    self.cfg.socket.display(),
                    i.protocol_version
                ),
            );
        }
        Ok(lines)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        if !self.info().is_some_and(|i| i.console_tail) || instance_id.trim().is_empty() {
            return None;
        }
        let msg = pb::ConsoleTailRequest {
            instance_id: instance_id.to_string(),
        };
        self.call("ConsoleTail", true, |mut c, left| {
            let msg = msg.clone();
            async move {
                let r = c.console_tail(with_timeout(msg, left)).await?.into_inner();
                Ok(Ok(r.tail))
            }
        })
        .await
        .ok()
        .flatten()
    }
}
