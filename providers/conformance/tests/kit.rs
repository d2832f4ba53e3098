//! The kit against the in-memory reference provider (everything passes
//! but the deadline, which an in-process provider without its own
//! deadline cannot have), and against deliberately broken providers, to
//! show the kit catches what it claims to.

use async_trait::async_trait;
use peerpod_provider_api::{Instance, InstanceRequest, OwnerTags, Provider, ProviderError};
use peerpod_provider_conformance::memory::{MemoryFixture, MemoryProvider};
use peerpod_provider_conformance::{run_all, Outcome};
use std::sync::Arc;

fn fixture(p: Arc<dyn Provider>, backend: Arc<MemoryProvider>) -> MemoryFixture {
    MemoryFixture {
        backend,
        provider: p,
        deadline: None,
    }
}

#[tokio::test]
async fn the_memory_provider_passes_everything_it_can() {
    let mut m = MemoryProvider::new();
    m.create_delay = std::time::Duration::from_millis(20);
    let m = Arc::new(m);
    let r = run_all(&fixture(m.clone(), m.clone())).await;
    r.assert_passed(&["deadline"]);
    assert!(m.is_empty(), "the kit removed everything it made");
}

/// Wraps the memory provider and breaks one rule.
struct Broken {
    inner: Arc<MemoryProvider>,
    rule: &'static str,
}

#[async_trait]
impl Provider for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.inner.create_instance(req).await
    }
    async fn delete_instance(&self, id: &str) -> Result<(), ProviderError> {
        match self.rule {
            "delete of unknown fails"
                if !self
                    .inner
                    .list_instances(&OwnerTags::default())
                    .await?
                    .iter()
                    .any(|i| i.id == id) =>
            {
                Err(ProviderError::new(
                    peerpod_provider_api::ErrorKind::NotFound,
                    "no such instance",
                ))
            }
            "empty id deletes everything" if id.trim().is_empty() => Ok(()),
            _ => self.inner.delete_instance(id).await,
        }
    }
    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        if self.rule == "list ignores the sandbox" {
            let mut o = owner.clone();
            o.sandbox_id.clear();
            return self.inner.list_instances(&o).await;
        }
        self.inner.list_instances(owner).await
    }
    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.inner.verify().await
    }
}

#[tokio::test]
async fn the_kit_catches_broken_providers() {
    for (rule, check) in [
        ("delete of unknown fails", "delete_idempotent"),
        ("empty id deletes everything", "delete_empty_id_refused"),
        ("list ignores the sandbox", "owner_isolation"),
    ] {
        let m = Arc::new(MemoryProvider::new());
        let b: Arc<dyn Provider> = Arc::new(Broken {
            inner: m.clone(),
            rule,
        });
        let r = run_all(&fixture(b, m)).await;
        assert!(
            matches!(r.outcome(check), Some(Outcome::Failed(_))),
            "{rule}: {check} should fail:\n{r}"
        );
    }
}
