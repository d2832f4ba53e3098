//! EC2 errors as provider errors: AWS's own code and message kept, and a
//! kind that says whether trying again can help.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use peerpod_provider_api::{ErrorKind, ProviderError};

/// The kind of an EC2 error code.
pub fn kind_of(code: &str) -> ErrorKind {
    match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" => {
            ErrorKind::Throttled
        }
        "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "InsufficientCapacity" => {
            ErrorKind::InsufficientCapacity
        }
        "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "VolumeLimitExceeded"
        | "AddressLimitExceeded" => ErrorKind::QuotaExceeded,
        "UnauthorizedOperation" | "AuthFailure" | "Blocked" | "OptInRequired" => {
            ErrorKind::PermissionDenied
        }
        "InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed" => ErrorKind::NotFound,
        "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
            ErrorKind::Transient
        }
        c if c.starts_with("InvalidAMIID")
            || c.starts_with("InvalidSubnetID")
            || c.starts_with("InvalidGroup")
            || c.starts_with("InvalidKeyPair")
            || c.starts_with("InvalidLaunchTemplate")
            || c == "InvalidParameterValue"
            || c == "InvalidParameterCombination"
            || c == "Unsupported"
            || c == "UnsupportedOperation" =>
        {
            ErrorKind::InvalidConfig
        }
        _ => ErrorKind::Permanent,
    }
}

/// An SDK error from the call `what`.
pub fn from_sdk<E, R>(what: &str, e: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or("no message").to_string();
            ProviderError::new(kind_of(&code), format!("{what}: {message}")).with_code(code)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ProviderError::new(
                ErrorKind::Transient,
                format!("{what}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
            )
        }
        _ => ProviderError::new(
            ErrorKind::Permanent,
            format!("{what}: {}", aws_sdk_ec2::error::DisplayErrorContext(&e)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds_that_decide_retries() {
        for (code, kind, retry) in [
            (
                "InsufficientInstanceCapacity",
                ErrorKind::InsufficientCapacity,
                true,
            ),
            ("InstanceLimitExceeded", ErrorKind::QuotaExceeded, false),
            ("UnauthorizedOperation", ErrorKind::PermissionDenied, false),
            ("InvalidAMIID.NotFound", ErrorKind::InvalidConfig, false),
            ("InvalidAMIID.Malformed", ErrorKind::InvalidConfig, false),
            ("RequestLimitExceeded", ErrorKind::Throttled, true),
            ("InvalidInstanceID.NotFound", ErrorKind::NotFound, false),
            ("InternalError", ErrorKind::Transient, true),
            ("SomethingNew", ErrorKind::Permanent, false),
        ] {
            assert_eq!(kind_of(code), kind, "{code}");
            assert_eq!(kind_of(code).retryable(), retry, "{code}");
        }
    }
}
