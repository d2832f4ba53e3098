//! The provider conformance kit (providers/conformance) against the AWS
//! provider, the real SDK and moto (a real local EC2 API), through the
//! recording proxy of tests/common that answers RunInstances for one
//! instance type with EC2's InsufficientInstanceCapacity. Error kinds:
//! that capacity refusal and moto's own InvalidAMIID.NotFound for an image
//! EC2 does not know. What EC2 still holds: moto's instances tagged with
//! the node that are not terminated. Moto launches every instance it
//! accepts and cannot fail one after launch, so `failed_create_cleanup`
//! does not apply (a refused RunInstances made nothing), nor can it stop
//! answering (`deadline`).

mod common;

use async_trait::async_trait;
use aws_sdk_ec2::types::Filter;
use common::{net, sdk_at, Ec2Proxy, Moto};
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_aws::{AwsProvider, RawAwsConfig};
use peerpod_provider_conformance::{basic_request, run_all, Fixture, Injection};
use std::sync::{Arc, Mutex};

const NO_CAPACITY_TYPE: &str = "c6a.xlarge";
const BAD_AMI: &str = "ami-0badbadbadbadbad0";

struct AwsFixture {
    client: aws_sdk_ec2::Client,
    provider: Arc<dyn Provider>,
    /// The fault the next request carries.
    armed: Mutex<Option<ErrorKind>>,
}

#[async_trait]
impl Fixture for AwsFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        self.provider.clone()
    }

    fn unknown_instance_id(&self) -> String {
        "i-0000000000000000f".into()
    }

    fn request(&self, name: &str, owner: OwnerTags) -> InstanceRequest {
        let mut r = basic_request(name, owner);
        match self.armed.lock().ok().and_then(|mut a| a.take()) {
            Some(ErrorKind::InsufficientCapacity) => r.machine_type = Some(NO_CAPACITY_TYPE.into()),
            Some(_) => r.image = Some(BAD_AMI.into()),
            None => {}
        }
        r
    }

    fn injections(&self) -> Vec<Injection> {
        vec![
            Injection {
                what: format!("EC2 InsufficientInstanceCapacity for {NO_CAPACITY_TYPE}"),
                kind: ErrorKind::InsufficientCapacity,
                code: Some("InsufficientInstanceCapacity".into()),
                message_part: "sufficient capacity".into(),
            },
            Injection {
                what: "an image EC2 does not know".into(),
                kind: ErrorKind::InvalidConfig,
                code: Some("InvalidAMIID.NotFound".into()),
                message_part: BAD_AMI.into(),
            },
        ]
    }

    async fn inject(&self, i: &Injection) -> Result<(), String> {
        *self.armed.lock().map_err(|e| e.to_string())? = Some(i.kind);
        Ok(())
    }

    async fn clear(&self) {
        if let Ok(mut a) = self.armed.lock() {
            *a = None;
        }
    }

    async fn leftovers(&self, node: &str) -> Vec<String> {
        let out = match self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:peerpod-node")
                    .values(node)
                    .build(),
            )
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => return vec![format!("DescribeInstances failed: {e}")],
        };
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                let s = i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string());
                !matches!(s.as_deref(), Some("terminated") | Some("shutting-down"))
            })
            .map(|i| format!("instance {}", i.instance_id().unwrap_or("?")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_provider_passes_the_conformance_kit() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let proxy = Ec2Proxy::start(&moto.url, &[NO_CAPACITY_TYPE]).await;
    let raw = RawAwsConfig {
        instance_types: Some(format!("m6a.large,{NO_CAPACITY_TYPE}")),
        ..n.raw_config()
    };
    let provider: Arc<dyn Provider> = Arc::new(AwsProvider::with_sdk_config(
        raw.check().unwrap(),
        &sdk_at(&proxy.url).await,
    ));
    let f = AwsFixture {
        client,
        provider,
        armed: Mutex::new(None),
    };
    let report = run_all(&f).await;
    println!("{report}");
    report.assert_passed(&["failed_create_cleanup", "deadline"]);
}
