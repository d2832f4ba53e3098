//! The hook through which the relay rewrites the few requests that must be
//! changed in flight, and the agent-request rewriter both daemons use.
//!
//! The relay asks [`RequestRewriter::wants`] with the service and method it
//! read from the front of the ttrpc `Request` (a cheap scan, no full decode);
//! only then is the request decoded, rewritten and re-encoded. rust-protobuf
//! keeps fields our .proto does not declare, so a rewrite changes exactly
//! what it means to change.

use peerpod_protocols::agent::{CreateContainerRequest, CreateSandboxRequest};
use peerpod_protocols::oci::{Linux, LinuxNamespace};
use protobuf::{CodedInputStream, Message};

/// A rewrite failed; the caller gets an `INVALID_ARGUMENT` error response.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot decode the ttrpc request envelope: {0}")]
    Envelope(protobuf::Error),
    #[error("cannot decode {method} request: {source}")]
    Decode {
        method: String,
        source: protobuf::Error,
    },
    #[error("cannot encode rewritten {method} request: {source}")]
    Encode {
        method: String,
        source: protobuf::Error,
    },
}

/// Decides which requests to rewrite and rewrites their payload (the
/// method's own message, not the ttrpc envelope).
pub trait RequestRewriter: Send + Sync + 'static {
    /// Whether requests to `service`/`method` must go through `rewrite`.
    fn wants(&self, service: &str, method: &str) -> bool;
    /// Returns the new payload, or `None` to forward the original bytes.
    fn rewrite(
        &self,
        service: &str,
        method: &str,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, RewriteError>;
}

/// Rewrites nothing: every frame passes through untouched.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRewrite;

impl RequestRewriter for NoRewrite {
    fn wants(&self, _: &str, _: &str) -> bool {
        false
    }
    fn rewrite(&self, _: &str, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, RewriteError> {
        Ok(None)
    }
}

/// Reads `service` (field 1) and `method` (field 2) from the start of an
/// encoded ttrpc `Request` without decoding the payload. `None` when the
/// bytes are not a well-formed envelope prefix.
pub fn peek_method(envelope: &[u8]) -> Option<(String, String)> {
    let mut is = CodedInputStream::from_bytes(envelope);
    let mut service = None;
    let mut method = None;
    while service.is_none() || method.is_none() {
        if is.eof().ok()? {
            break;
        }
        let tag = is.read_raw_varint32().ok()?;
        match tag {
            // field 1, wire type 2 (length-delimited)
            0x0a => service = Some(is.read_string().ok()?),
            // field 2, wire type 2
            0x12 => method = Some(is.read_string().ok()?),
            other => {
                let wt = protobuf::rt::WireType::new(other & 7)?;
                is.skip_field(wt).ok()?;
            }
        }
    }
    Some((service?, method?))
}

/// Applies `rw` to an encoded ttrpc `Request`. `Ok(None)`: forward as is.
pub fn apply(rw: &dyn RequestRewriter, envelope: &[u8]) -> Result<Option<Vec<u8>>, RewriteError> {
    let Some((service, method)) = peek_method(envelope) else {
        return Ok(None);
    };
    if !rw.wants(&service, &method) {
        return Ok(None);
    }
    let mut req = ttrpc::Request::parse_from_bytes(envelope).map_err(RewriteError::Envelope)?;
    match rw.rewrite(&service, &method, &req.payload)? {
        None => Ok(None),
        Some(p) => {
            req.payload = p;
            req.write_to_bytes()
                .map(Some)
                .map_err(|source| RewriteError::Encode { method, source })
        }
    }
}

/// The agent requests the system rewrites.
///
/// - `CreateContainer`: with `pod_netns` set, the container joins that
///   network namespace (the `network` entry of `OCI.Linux.Namespaces` is
///   set to it). Without it the request is only checked to decode.
/// - `CreateSandbox`: with `drop_sandbox_dns`, the DNS entries are removed
///   so the agent leaves the VM's own resolv.conf alone.
#[derive(Debug, Default, Clone)]
pub struct CreateContainerRewriter {
    pub pod_netns: Option<String>,
    pub drop_sandbox_dns: bool,
}

const AGENT: &str = peerpod_protocols::services::AGENT;

impl RequestRewriter for CreateContainerRewriter {
    fn wants(&self, service: &str, method: &str) -> bool {
        service == AGENT
            && (method == "CreateContainer" || (self.drop_sandbox_dns && method == "CreateSandbox"))
    }

    fn rewrite(
        &self,
        _service: &str,
        method: &str,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, RewriteError> {
        let decode_err = |source| RewriteError::Decode {
            method: method.to_string(),
            source,
        };
        let encode_err = |source| RewriteError::Encode {
            method: method.to_string(),
            source,
        };
        match method {
            "CreateContainer" => {
                let mut req =
                    CreateContainerRequest::parse_from_bytes(payload).map_err(decode_err)?;
                tracing::debug!(container = %req.container_id, "CreateContainer");
                let Some(netns) = &self.pod_netns else {
                    return Ok(None);
                };
                let linux = req
                    .OCI
                    .mut_or_insert_default()
                    .Linux
                    .mut_or_insert_default();
                set_network_namespace(linux, netns);
                req.write_to_bytes().map(Some).map_err(encode_err)
            }
            "CreateSandbox" => {
                let mut req =
                    CreateSandboxRequest::parse_from_bytes(payload).map_err(decode_err)?;
                if req.dns.is_empty() {
                    return Ok(None);
                }
                req.dns.clear();
                req.write_to_bytes().map(Some).map_err(encode_err)
            }
            _ => Ok(None),
        }
    }
}

fn set_network_namespace(linux: &mut Linux, path: &str) {
    if let Some(ns) = linux.Namespaces.iter_mut().find(|n| n.Type == "network") {
        ns.Path = path.to_string();
    } else {
        let mut ns = LinuxNamespace::new();
        ns.Type = "network".to_string();
        ns.Path = path.to_string();
        linux.Namespaces.push(ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedOutputStream;

    /// Appends a field our .proto does not declare (number, string value).
    fn with_unknown_string(mut bytes: Vec<u8>, field: u32, value: &str) -> Vec<u8> {
        let mut extra = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut extra);
            os.write_string(field, value).unwrap();
            os.flush().unwrap();
        }
        bytes.extend_from_slice(&extra);
        bytes
    }

    fn envelope(service: &str, method: &str, payload: Vec<u8>) -> Vec<u8> {
        let mut r = ttrpc::Request::new();
        r.service = service.into();
        r.method = method.into();
        r.payload = payload;
        r.timeout_nano = 123;
        r.write_to_bytes().unwrap()
    }

    #[test]
    fn peek_reads_service_and_method() {
        let e = envelope("grpc.AgentService", "SomeFutureCall", vec![1, 2, 3]);
        assert_eq!(
            peek_method(&e),
            Some(("grpc.AgentService".into(), "SomeFutureCall".into()))
        );
        assert_eq!(peek_method(&[0xff, 0xff]), None);
    }

    #[test]
    fn netns_is_added_and_undeclared_fields_survive() {
        // A CreateContainerRequest with declared fields plus undeclared ones
        // at three depths: request (storages = 5), Spec (Process = 2 is not
        // declared by us), Linux (CgroupsPath = 5).
        let mut linux = Linux::new();
        let mut pid = LinuxNamespace::new();
        pid.Type = "pid".into();
        linux.Namespaces.push(pid);
        let linux_bytes = with_unknown_string(linux.write_to_bytes().unwrap(), 5, "/kubepods/x");
        let mut spec = peerpod_protocols::oci::Spec::new();
        spec.Version = "1.1.0".into();
        let mut spec_bytes = spec.write_to_bytes().unwrap();
        {
            let mut os = CodedOutputStream::vec(&mut spec_bytes);
            os.write_bytes(8, &linux_bytes).unwrap();
            os.flush().unwrap();
        }
        let spec_bytes = with_unknown_string(spec_bytes, 2, "process-blob");
        let mut req = CreateContainerRequest::new();
        req.container_id = "c1".into();
        let mut req_bytes = req.write_to_bytes().unwrap();
        {
            let mut os = CodedOutputStream::vec(&mut req_bytes);
            os.write_bytes(6, &spec_bytes).unwrap();
            os.flush().unwrap();
        }
        let req_bytes = with_unknown_string(req_bytes, 5, "storage-blob");

        let rw = CreateContainerRewriter {
            pod_netns: Some("/run/netns/podns".into()),
            drop_sandbox_dns: true,
        };
        let env = envelope(AGENT, "CreateContainer", req_bytes);
        let out = apply(&rw, &env).unwrap().expect("rewritten");
        let out_env = ttrpc::Request::parse_from_bytes(&out).unwrap();
        assert_eq!(out_env.timeout_nano, 123, "envelope fields kept");
        let got = CreateContainerRequest::parse_from_bytes(&out_env.payload).unwrap();
        assert_eq!(got.container_id, "c1");
        let ns = &got.OCI.Linux.Namespaces;
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[1].Type, "network");
        assert_eq!(ns[1].Path, "/run/netns/podns");
        // Undeclared fields are still there, byte for byte.
        let raw = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(raw(&out_env.payload, "storage-blob"));
        assert!(raw(&out_env.payload, "process-blob"));
        assert!(raw(&out_env.payload, "/kubepods/x"));
    }

    #[test]
    fn existing_network_entry_is_replaced() {
        let mut linux = Linux::new();
        let mut n = LinuxNamespace::new();
        n.Type = "network".into();
        n.Path = "/proc/1/ns/net".into();
        linux.Namespaces.push(n);
        set_network_namespace(&mut linux, "/run/netns/podns");
        assert_eq!(linux.Namespaces.len(), 1);
        assert_eq!(linux.Namespaces[0].Path, "/run/netns/podns");
    }

    #[test]
    fn sandbox_dns_dropped_rest_kept() {
        let mut req = CreateSandboxRequest::new();
        req.hostname = "h".into();
        req.dns = vec!["nameserver 10.0.0.10".into()];
        req.sandbox_id = "sb".into();
        let bytes = with_unknown_string(req.write_to_bytes().unwrap(), 8, "x");
        let rw = CreateContainerRewriter {
            pod_netns: None,
            drop_sandbox_dns: true,
        };
        let out = apply(&rw, &envelope(AGENT, "CreateSandbox", bytes))
            .unwrap()
            .unwrap();
        let env = ttrpc::Request::parse_from_bytes(&out).unwrap();
        let got = CreateSandboxRequest::parse_from_bytes(&env.payload).unwrap();
        assert!(got.dns.is_empty());
        assert_eq!(got.hostname, "h");
        assert_eq!(got.sandbox_id, "sb");
        assert!(got.special_fields.unknown_fields().iter().next().is_some());
    }

    #[test]
    fn adaptor_side_rewriter_forwards_original_bytes() {
        let rw = CreateContainerRewriter::default();
        let req = CreateContainerRequest::new().write_to_bytes().unwrap();
        assert!(apply(&rw, &envelope(AGENT, "CreateContainer", req))
            .unwrap()
            .is_none());
        assert!(!rw.wants(AGENT, "CreateSandbox"));
    }

    #[test]
    fn undecodable_request_is_an_error_naming_the_method() {
        let rw = CreateContainerRewriter::default();
        let e = apply(&rw, &envelope(AGENT, "CreateContainer", vec![0x0a, 0xff])).unwrap_err();
        assert!(e.to_string().contains("CreateContainer"), "{e}");
    }
}
