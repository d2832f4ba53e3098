//! Azure Resource Manager errors as provider errors: ARM's own `code` and
//! `message` (from the `{"error":{"code","message"}}` body) kept, and a
//! kind that says whether trying again can help.

use peerpod_provider_api::{ErrorKind, ProviderError};
use serde_json::Value;

/// The kind of an ARM error code; `status` decides for codes not listed.
pub fn kind_of(code: &str, status: u16) -> ErrorKind {
    match code {
        "TooManyRequests" | "RetryableError" | "SubscriptionRequestsThrottled" => {
            ErrorKind::Throttled
        }
        "SkuNotAvailable"
        | "AllocationFailed"
        | "ZonalAllocationFailed"
        | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest" => ErrorKind::InsufficientCapacity,
        // ARM reports a used-up vCPU or resource quota as OperationNotAllowed.
        "QuotaExceeded" | "OperationNotAllowed" | "ResourceQuotaExceeded" => {
            ErrorKind::QuotaExceeded
        }
        "AuthorizationFailed"
        | "LinkedAuthorizationFailed"
        | "AuthenticationFailed"
        | "InvalidAuthenticationToken"
        | "InvalidAuthenticationTokenTenant"
        | "ExpiredAuthenticationToken"
        | "Forbidden" => ErrorKind::PermissionDenied,
        "ResourceNotFound" | "NotFound" => ErrorKind::NotFound,
        "ResourceGroupNotFound"
        | "SubscriptionNotFound"
        | "InvalidParameter"
        | "InvalidResourceReference"
        | "InvalidSubnet"
        | "GalleryImageNotFound"
        | "ImageNotFound"
        | "InvalidRequestContent"
        | "BadRequest"
        | "InvalidTemplateDeployment"
        | "VMSizeNotSupportedForConfidentialVM"
        | "SecurityTypeNotSupported" => ErrorKind::InvalidConfig,
        "InternalServerError"
        | "InternalExecutionError"
        | "ServiceUnavailable"
        | "GatewayTimeout"
        | "Conflict"
        | "AnotherOperationInProgress"
        | "RetryableErrorDueToAnotherOperation" => ErrorKind::Transient,
        _ => match status {
            401 | 403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::Throttled,
            400 => ErrorKind::InvalidConfig,
            409 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
    }
}

/// The `code` and `message` of an ARM error object (`{"code","message",
/// "details":[…]}`); a generic code with one detail takes the detail's.
pub fn code_and_message(err: &Value) -> Option<(String, String)> {
    let code = err.get("code")?.as_str()?.to_string();
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message")
        .to_string();
    let details = err.get("details").and_then(Value::as_array);
    if let Some([d]) = details.map(Vec::as_slice) {
        if matches!(
            code.as_str(),
            "BadRequest" | "DeploymentFailed" | "Conflict"
        ) {
            if let Some(inner) = code_and_message(d) {
                return Some(inner);
            }
        }
    }
    Some((code, message))
}

/// The error for a failed ARM call `what` that answered `status` with
/// `body`.
pub fn from_response(what: &str, status: u16, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let cm = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(code_and_message);
    match cm {
        Some((code, message)) => {
            ProviderError::new(kind_of(&code, status), format!("{what}: {message}")).with_code(code)
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(300).collect();
            ProviderError::new(
                kind_of("", status),
                format!("{what}: HTTP {status} {}", text.trim()),
            )
            .with_code(status.to_string())
        }
    }
}

/// The error of a failed long-running operation (its `error` object).
pub fn from_operation(what: &str, status: &str, body: &Value) -> ProviderError {
    match body.get("error").and_then(code_and_message) {
        Some((code, message)) => {
            ProviderError::new(kind_of(&code, 0), format!("{what}: {message}")).with_code(code)
        }
        None => ProviderError::new(
            ErrorKind::Permanent,
            format!("{what}: the operation ended {status}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds_that_decide_retries() {
        for (code, status, kind, retry) in [
            (
                "SkuNotAvailable",
                409,
                ErrorKind::InsufficientCapacity,
                true,
            ),
            (
                "AllocationFailed",
                200,
                ErrorKind::InsufficientCapacity,
                true,
            ),
            ("OperationNotAllowed", 409, ErrorKind::QuotaExceeded, false),
            ("QuotaExceeded", 409, ErrorKind::QuotaExceeded, false),
            (
                "AuthorizationFailed",
                403,
                ErrorKind::PermissionDenied,
                false,
            ),
            ("ResourceNotFound", 404, ErrorKind::NotFound, false),
            ("GalleryImageNotFound", 404, ErrorKind::InvalidConfig, false),
            ("TooManyRequests", 429, ErrorKind::Throttled, true),
            ("SomethingNew", 503, ErrorKind::Transient, true),
            ("SomethingNew", 418, ErrorKind::Permanent, false),
        ] {
            assert_eq!(kind_of(code, status), kind, "{code}");
            assert_eq!(kind_of(code, status).retryable(), retry, "{code}");
        }
    }

    #[test]
    fn the_body_gives_code_and_message() {
        let body = br#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write'"}}"#;
        let e = from_response("create VM", 403, body);
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert_eq!(e.code.as_deref(), Some("AuthorizationFailed"));
        assert!(e
            .message
            .contains("Microsoft.Compute/virtualMachines/write"));
        let wrapped = br#"{"error":{"code":"BadRequest","message":"x","details":[{"code":"InvalidParameter","message":"bad size"}]}}"#;
        let e = from_response("create VM", 400, wrapped);
        assert_eq!(e.code.as_deref(), Some("InvalidParameter"));
        let e = from_response("list", 502, b"<html>bad gateway</html>");
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.code.as_deref(), Some("502"));
    }
}
