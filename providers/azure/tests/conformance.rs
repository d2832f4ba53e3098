//! The provider conformance kit (providers/conformance) against the Azure
//! provider and the local Resource Manager stand-in (tests/common). The
//! stand-in's abilities: a VM whose create operation fails with
//! AllocationFailed after its NIC was made (the failed create), Azure's
//! quota and authorization refusals (error kinds), and its resource store
//! (VMs, NICs and disks still held). It cannot stop answering, so
//! `deadline` does not apply.
//!
//! `cancelled_create_findable` found that a create abandoned after the NIC
//! and before the VM left the NIC unlisted; list_instances now reports such
//! NICs (see the provider's module doc).

mod common;

use async_trait::async_trait;
use common::{FakeArm, Fault, TOKEN};
use peerpod_provider_api::{ErrorKind, Provider};
use peerpod_provider_azure::{ArmTiming, AzureProvider, RawAzureConfig, StaticToken};
use peerpod_provider_conformance::{run_all, Fixture, Injection};
use std::sync::Arc;
use std::time::Duration;

const SIZE: &str = "Standard_DC2as_v5";
const QUOTA: &str = "Operation could not be completed as it results in exceeding approved standardDCASv5Family Cores quota.";
const DENIED: &str = "The client 'aaaa' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write'.";

struct AzureFixture {
    arm: FakeArm,
    provider: Arc<dyn Provider>,
}

#[async_trait]
impl Fixture for AzureFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }

    fn unknown_instance_id(&self) -> String {
        "podvm-never-created-00000000".into()
    }

    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        self.arm.with(|s| {
            s.vm_op_faults.insert(
                SIZE.into(),
                Fault::new(200, "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."),
            )
        });
        Ok(ErrorKind::InsufficientCapacity)
    }

    fn injections(&self) -> Vec<Injection> {
        vec![
            Injection {
                what: "ARM 409 OperationNotAllowed (quota)".into(),
                kind: ErrorKind::QuotaExceeded,
                code: Some("OperationNotAllowed".into()),
                message_part: QUOTA.into(),
            },
            Injection {
                what: "ARM 403 AuthorizationFailed".into(),
                kind: ErrorKind::PermissionDenied,
                code: Some("AuthorizationFailed".into()),
                message_part: "Microsoft.Compute/virtualMachines/write".into(),
            },
        ]
    }

    async fn inject(&self, i: &Injection) -> Result<(), String> {
        let f = match i.kind {
            ErrorKind::QuotaExceeded => Fault::new(409, "OperationNotAllowed", QUOTA),
            _ => Fault::new(403, "AuthorizationFailed", DENIED),
        };
        self.arm.with(|s| s.vm_write_fault = Some(f));
        Ok(())
    }

    async fn clear(&self) {
        self.arm.with(|s| {
            s.vm_op_faults.clear();
            s.vm_put_faults.clear();
            s.vm_write_fault = None;
        });
    }

    /// Every VM, NIC and disk the kit's instances could own (their names
    /// start with the kit's `podvm-conf-`): none may stay.
    async fn leftovers(&self, _node: &str) -> Vec<String> {
        ["virtualmachines", "networkinterfaces", "disks"]
            .iter()
            .flat_map(|t| self.arm.of_type(t))
            .filter(|p| p.contains("/podvm-conf-"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_provider_passes_the_conformance_kit() {
    let arm = FakeArm::start().await;
    let raw = RawAzureConfig {
        instance_sizes: Some(SIZE.into()),
        ..arm.raw_config()
    };
    let timing = ArmTiming {
        poll_interval: Duration::from_millis(10),
        operation_timeout: Duration::from_secs(10),
        max_throttle_retries: 4,
        max_retry_after: Duration::from_millis(50),
        request_timeout: Duration::from_secs(10),
    };
    let provider: Arc<dyn Provider> = Arc::new(
        AzureProvider::new(raw.check().unwrap(), StaticToken::new(TOKEN), timing).unwrap(),
    );
    let f = AzureFixture { arm, provider };
    let report = run_all(&f).await;
    println!("{report}");
    report.assert_passed(&["deadline"]);
}
