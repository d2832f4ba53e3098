//! GPU annotations reach the provider: the `default_gpus` and
//! `default_gpu_model` annotations the webhook writes (and the Kata shim
//! passes on in CreateVM) arrive in the provider's `InstanceRequest`
//! (`gpus`, `gpu_model`) instead of being parsed and dropped.

use async_trait::async_trait;
use cloud_api_adaptor::annotations::{DEFAULT_GPUS, DEFAULT_GPU_MODEL, DEFAULT_VCPUS};
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::{
    ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use peerpod_tests::harness::config_in;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records each create request and refuses it, as a cloud without the
/// asked-for GPU type would.
#[derive(Default)]
struct Recorder(Mutex<Vec<InstanceRequest>>);

#[async_trait]
impl Provider for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.0.lock().unwrap().push(req);
        Err(ProviderError::new(
            ErrorKind::InvalidRequest,
            "recorded, not created",
        ))
    }
    async fn delete_instance(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn list_instances(&self, _o: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        Ok(Vec::new())
    }
    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_annotations_reach_the_instance_request() {
    peerpod_tests::harness::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "gpu-node");
    cfg.tls = false;
    let recorder = Arc::new(Recorder::default());
    let daemon = Daemon::start(cfg.clone(), recorder.clone()).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    let mut a = shim_annotations("trainer", "ml");
    a.insert(DEFAULT_VCPUS.into(), "4".into());
    a.insert(DEFAULT_GPUS.into(), "2".into());
    a.insert(DEFAULT_GPU_MODEL.into(), "a100".into());
    h.create_vm("gpu0123456789", a, "").await.unwrap();
    let e = h
        .start_vm("gpu0123456789", Duration::from_secs(30))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("recorded, not created"),
        "the provider's own message: {e}"
    );

    // A pod without GPUs: none asked for.
    h.create_vm("cpu0123456789", shim_annotations("web", "ml"), "")
        .await
        .unwrap();
    let _ = h.start_vm("cpu0123456789", Duration::from_secs(30)).await;

    let seen = recorder.0.lock().unwrap().clone();
    let gpu = seen
        .iter()
        .find(|r| r.owner.sandbox_id == "gpu0123456789")
        .expect("the GPU pod reached the provider");
    assert_eq!(gpu.gpus, Some(2));
    assert_eq!(gpu.gpu_model.as_deref(), Some("a100"));
    assert_eq!(gpu.vcpus, Some(4));
    let cpu = seen
        .iter()
        .find(|r| r.owner.sandbox_id == "cpu0123456789")
        .expect("the CPU pod reached the provider");
    assert_eq!(cpu.gpus, None);
    assert_eq!(cpu.gpu_model, None);
    drop(h);
    daemon.shutdown().await;
}
