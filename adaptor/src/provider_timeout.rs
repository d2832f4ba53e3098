//! A bound on every provider call. A cloud API call that never answers
//! (a network partition, a hung SDK connection) would otherwise hold a
//! StartVM or a teardown forever; past the limit the call is abandoned and
//! fails with a retryable error naming the call, so StartVM reports it and
//! the teardown tries again (deletes are idempotent). The providers are
//! crash-safe by design (they record an instance before making it), so an
//! abandoned create leaves nothing the owner-tag sweep cannot find.

use async_trait::async_trait;
use peerpod_provider_api::{
    ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Wraps a provider; see the module doc.
pub struct TimedProvider {
    inner: Arc<dyn Provider>,
    limit: Duration,
}

impl TimedProvider {
    /// Every call of `inner` is abandoned after `limit` (zero: no limit).
    pub fn new(inner: Arc<dyn Provider>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn bounded<T>(
        &self,
        call: &str,
        f: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if self.limit.is_zero() {
            return f.await;
        }
        match tokio::time::timeout(self.limit, f).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(provider = self.inner.name(), call, limit = ?self.limit, "provider call abandoned: no answer in time");
                Err(timed_out(self.inner.name(), call, self.limit))
            }
        }
    }
}

/// The error of an abandoned call.
pub fn timed_out(provider: &str, call: &str, limit: Duration) -> ProviderError {
    ProviderError::new(
        ErrorKind::Transient,
        format!(
            "provider {provider}: {call} did not answer within {limit:?} \
             (PEERPOD_PROVIDER_TIMEOUT); the call was abandoned"
        ),
    )
    .with_code("Timeout")
}

#[async_trait]
impl Provider for TimedProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.bounded("create", self.inner.create_instance(req))
            .await
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.bounded("delete", self.inner.delete_instance(instance_id))
            .await
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        self.bounded("list", self.inner.list_instances(owner)).await
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.bounded("verify", self.inner.verify()).await
    }

    async fn retag(
        &self,
        instance_id: &str,
        name: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        self.bounded("retag", self.inner.retag(instance_id, name, tags))
            .await
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        if self.limit.is_zero() {
            return self.inner.console_tail(instance_id).await;
        }
        tokio::time::timeout(self.limit, self.inner.console_tail(instance_id))
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers list at once and hangs on delete.
    struct Hangs;

    #[async_trait]
    impl Provider for Hangs {
        fn name(&self) -> &str {
            "hangs"
        }
        async fn create_instance(&self, _r: InstanceRequest) -> Result<Instance, ProviderError> {
            std::future::pending().await
        }
        async fn delete_instance(&self, _id: &str) -> Result<(), ProviderError> {
            std::future::pending().await
        }
        async fn list_instances(&self, _o: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
            Ok(Vec::new())
        }
        async fn verify(&self) -> Result<Vec<String>, ProviderError> {
            Ok(vec!["ok".into()])
        }
    }

    #[tokio::test]
    async fn a_hung_call_fails_retryably_and_names_itself() {
        let p = TimedProvider::new(Arc::new(Hangs), Duration::from_millis(50));
        let e = p.delete_instance("i-1").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.kind.retryable());
        assert!(
            e.to_string()
                .contains("provider hangs: delete did not answer within"),
            "{e}"
        );
        let owner = OwnerTags {
            cluster: String::new(),
            node: "n".into(),
            sandbox_id: String::new(),
        };
        assert!(p.list_instances(&owner).await.unwrap().is_empty());
        assert_eq!(p.name(), "hangs");
        // Zero turns the bound off (the call is simply awaited).
        let unbounded = TimedProvider::new(Arc::new(Hangs), Duration::ZERO);
        assert_eq!(unbounded.verify().await.unwrap(), vec!["ok".to_string()]);
    }
}
