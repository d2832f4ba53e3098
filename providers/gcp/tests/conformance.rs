//! The provider conformance kit (providers/conformance) against the GCP
//! provider and the local Compute Engine REST server (tests/common). The
//! stand-in's abilities: an insert accepted whose operation then fails
//! for lack of capacity in every allowed machine type (the failed create),
//! Google's quotaExceeded and forbidden answers (error kinds), and its
//! instance table (what the backend still holds). It cannot stop
//! answering, so `deadline` does not apply.

mod common;

use async_trait::async_trait;
use common::GceServer;
use peerpod_provider_api::{ErrorKind, Provider};
use peerpod_provider_conformance::{run_all, Fixture, Injection};
use std::sync::Arc;

struct GcpFixture {
    gce: GceServer,
    provider: Arc<dyn Provider>,
}

#[async_trait]
impl Fixture for GcpFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }

    fn unknown_instance_id(&self) -> String {
        "podvm-never-created-00000000".into()
    }

    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        let mut s = self.gce.state.lock().map_err(|e| e.to_string())?;
        for t in ["n2d-standard-2", "n2d-standard-4", "n2d-standard-8"] {
            s.no_capacity.insert(t.into());
        }
        Ok(ErrorKind::InsufficientCapacity)
    }

    fn injections(&self) -> Vec<Injection> {
        vec![
            Injection {
                what: "GCE 403 quotaExceeded".into(),
                kind: ErrorKind::QuotaExceeded,
                code: Some("quotaExceeded".into()),
                message_part: "Quota 'N2D_CPUS' exceeded".into(),
            },
            Injection {
                what: "GCE 403 forbidden".into(),
                kind: ErrorKind::PermissionDenied,
                code: Some("forbidden".into()),
                message_part: "compute.instances.list".into(),
            },
        ]
    }

    async fn inject(&self, i: &Injection) -> Result<(), String> {
        let mut s = self.gce.state.lock().map_err(|e| e.to_string())?;
        match i.kind {
            ErrorKind::QuotaExceeded => s.quota_exceeded = true,
            _ => s.forbidden = true,
        }
        Ok(())
    }

    async fn clear(&self) {
        if let Ok(mut s) = self.gce.state.lock() {
            s.no_capacity.clear();
            s.quota_exceeded = false;
            s.forbidden = false;
        }
    }

    async fn leftovers(&self, node: &str) -> Vec<String> {
        let s = match self.gce.state.lock() {
            Ok(s) => s,
            Err(e) => return vec![e.to_string()],
        };
        s.instances
            .iter()
            .filter(|(_, v)| {
                v["labels"]
                    .as_object()
                    .is_some_and(|l| l.values().any(|x| x.as_str() == Some(node)))
            })
            .map(|(name, _)| format!("instance {name}"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gcp_provider_passes_the_conformance_kit() {
    let gce = GceServer::start().await;
    let provider: Arc<dyn Provider> = Arc::new(common::provider(common::raw(&gce.url)).await);
    let f = GcpFixture { gce, provider };
    let report = run_all(&f).await;
    println!("{report}");
    report.assert_passed(&["deadline"]);
}
