//! Compute Engine errors as provider errors: Google's own reason code and
//! message kept (from the JSON error body of a call, or from the error of
//! a finished zone operation), and a kind that says whether a retry helps.

use google_cloud_gax::error::rpc::StatusDetails;
use google_cloud_gax::error::Error as GaxError;
use peerpod_provider_api::{ErrorKind, ProviderError};

/// The kind of a GCE error reason (HTTP error bodies use camelCase
/// reasons, operation errors UPPER_SNAKE codes) and HTTP status.
pub fn kind_of(reason: &str, http_status: Option<u16>) -> ErrorKind {
    match reason {
        "ZONE_RESOURCE_POOL_EXHAUSTED"
        | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
        | "RESOURCE_POOL_EXHAUSTED"
        | "resourcePoolExhausted" => ErrorKind::InsufficientCapacity,
        "QUOTA_EXCEEDED" | "quotaExceeded" | "RESOURCE_EXHAUSTED" => ErrorKind::QuotaExceeded,
        "rateLimitExceeded" | "userRateLimitExceeded" | "RATE_LIMIT_EXCEEDED" => {
            ErrorKind::Throttled
        }
        "forbidden"
        | "PERMISSION_DENIED"
        | "PERMISSIONS_ERROR"
        | "insufficientPermissions"
        | "UNAUTHENTICATED"
        | "authError" => ErrorKind::PermissionDenied,
        "notFound" | "RESOURCE_NOT_FOUND" | "NOT_FOUND" => ErrorKind::NotFound,
        "invalid"
        | "badRequest"
        | "INVALID_ARGUMENT"
        | "UNSUPPORTED_OPERATION"
        | "INVALID_FIELD_VALUE" => ErrorKind::InvalidConfig,
        _ => match http_status {
            Some(404) => ErrorKind::NotFound,
            Some(401 | 403) => ErrorKind::PermissionDenied,
            Some(429) => ErrorKind::Throttled,
            Some(400) => ErrorKind::InvalidConfig,
            Some(500..=599) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
    }
}

/// `{"error": {"code", "message", "status", "errors": [{"reason", "message"}]}}`
fn parse_body(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let message = e.get("message")?.as_str()?.to_string();
    let reason = e
        .get("errors")
        .and_then(|l| l.get(0))
        .and_then(|f| f.get("reason"))
        .and_then(|r| r.as_str())
        .or_else(|| e.get("status").and_then(|s| s.as_str()))
        .unwrap_or("unknown")
        .to_string();
    Some((reason, message))
}

/// An error of the call `what`. The client parses Google's JSON error
/// body into a status; the reason of its first `errors[]` entry (or
/// `ErrorInfo` detail) is the most precise code GCE gives.
pub fn from_gax(what: &str, e: &GaxError) -> ProviderError {
    let http = e.http_status_code();
    if let Some(s) = e.status() {
        let reason = s
            .details
            .iter()
            .find_map(|d| match d {
                StatusDetails::ErrorInfo(i) if !i.reason.is_empty() => Some(i.reason.clone()),
                _ => None,
            })
            .unwrap_or_else(|| s.code.name().to_string());
        let kind = match kind_of(&reason, http) {
            ErrorKind::Permanent if e.is_transient_and_before_rpc() => ErrorKind::Transient,
            k => k,
        };
        return ProviderError::new(kind, format!("{what}: {}", s.message)).with_code(reason);
    }
    if let Some((reason, message)) = e.http_payload().and_then(|b| parse_body(b)) {
        return ProviderError::new(kind_of(&reason, http), format!("{what}: {message}"))
            .with_code(reason);
    }
    if let Some(code) = http {
        return ProviderError::new(kind_of("", Some(code)), format!("{what}: HTTP {code}: {e}"));
    }
    let kind = if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() {
        ErrorKind::Transient
    } else if e.is_authentication() {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Permanent
    };
    ProviderError::new(kind, format!("{what}: {e}"))
}

/// The error of a finished zone operation, if it failed.
pub fn from_operation(
    what: &str,
    op: &google_cloud_compute_v1::model::Operation,
) -> Option<ProviderError> {
    let first = op.error.as_ref().and_then(|e| e.errors.first());
    if first.is_none() && op.http_error_status_code.is_none_or(|c| c < 400) {
        return None;
    }
    let http = op
        .http_error_status_code
        .and_then(|c| u16::try_from(c).ok());
    let reason = first
        .and_then(|f| f.code.clone())
        .unwrap_or_else(|| "OPERATION_FAILED".to_string());
    let message = first
        .and_then(|f| f.message.clone())
        .or_else(|| op.http_error_message.clone())
        .unwrap_or_else(|| "the operation failed without a message".to_string());
    Some(ProviderError::new(kind_of(&reason, http), format!("{what}: {message}")).with_code(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_kinds_that_decide_retries() {
        for (reason, http, kind) in [
            (
                "ZONE_RESOURCE_POOL_EXHAUSTED",
                None,
                ErrorKind::InsufficientCapacity,
            ),
            ("QUOTA_EXCEEDED", None, ErrorKind::QuotaExceeded),
            ("quotaExceeded", Some(403), ErrorKind::QuotaExceeded),
            ("forbidden", Some(403), ErrorKind::PermissionDenied),
            ("rateLimitExceeded", Some(403), ErrorKind::Throttled),
            ("notFound", Some(404), ErrorKind::NotFound),
            ("invalid", Some(400), ErrorKind::InvalidConfig),
            ("backendError", Some(503), ErrorKind::Transient),
            ("somethingNew", None, ErrorKind::Permanent),
        ] {
            assert_eq!(kind_of(reason, http), kind, "{reason}");
        }
    }

    #[test]
    fn error_body_reason_and_message() {
        let body = br#"{"error":{"code":403,"message":"Quota 'CPUS' exceeded.  Limit: 8.0","errors":[{"message":"x","domain":"usageLimits","reason":"quotaExceeded"}]}}"#;
        assert_eq!(
            parse_body(body),
            Some((
                "quotaExceeded".into(),
                "Quota 'CPUS' exceeded.  Limit: 8.0".into()
            ))
        );
        assert_eq!(parse_body(b"<html>"), None);
    }
}
