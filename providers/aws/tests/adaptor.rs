//! The adaptor with the AWS provider against moto: CreateVM/StartVM run up
//! to connecting to the VM (moto has no VM behind its instances), the
//! instance carries the user data the adaptor built, and it is terminated
//! when StartVM gives up or StopVM runs; AWS's error code and message reach
//! the shim.

mod common;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{net, Moto};
use peerpod_provider_aws::AwsProvider;
use peerpod_tests::harness::config_in;
use std::sync::Arc;
use std::time::Duration;

/// The instances moto holds for a sandbox: (id, state).
async fn instances_of(c: &aws_sdk_ec2::Client, sandbox: &str) -> Vec<(String, String)> {
    let out = c
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:peerpod-sandbox")
                .values(sandbox)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state().unwrap().name().unwrap().as_str().to_string(),
            )
        })
        .collect()
}

fn gone(state: &str) -> bool {
    state == "terminated" || state == "shutting-down"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startvm_creates_the_instance_with_our_user_data_and_cleans_up() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let raw = n.raw_config();
    let provider = Arc::new(AwsProvider::with_sdk_config(raw.check().unwrap(), &sdk));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "aws-node");
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.start_timeout = Duration::from_secs(60);
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();

    // 1. StartVM gives up (nothing answers on the VM's address): the
    //    instance existed with our user data and is terminated.
    h.create_vm("sbaws1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbaws1", Duration::from_secs(4))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("agent ready") || e.contains("deadline"), "{e}");
    daemon.manager.wait_teardowns().await;
    let inst = instances_of(&client, "sbaws1").await;
    assert_eq!(inst.len(), 1, "{inst:?}");
    assert!(
        gone(&inst[0].1),
        "terminated after StartVM gave up: {inst:?}"
    );
    let ud = client
        .describe_instance_attribute()
        .instance_id(&inst[0].0)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let ud = common::vm_reads(ud.user_data().and_then(|v| v.value()).unwrap());
    let doc = peerpod_vmconfig::userdata::UserData::parse(&ud).expect("our cloud-config");
    assert_eq!(doc.forwarder.sandbox_id, "sbaws1");
    assert!(doc.forwarder.tls.is_some(), "the VM got its TLS material");

    // 2. StopVM during StartVM: the instance is terminated.
    h.create_vm("sbaws2", shim_annotations("api", "default"), "")
        .await
        .unwrap();
    let h2 = Hypervisor::connect(&cfg.socket).await.unwrap();
    let start = tokio::spawn(async move { h2.start_vm("sbaws2", Duration::from_secs(60)).await });
    for _ in 0..100 {
        if !instances_of(&client, "sbaws2").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        instances_of(&client, "sbaws2").await.len(),
        1,
        "instance launched"
    );
    h.stop_vm("sbaws2").await.unwrap();
    let r = start.await.unwrap();
    assert!(r.is_err(), "StartVM ends when StopVM runs");
    daemon.manager.wait_teardowns().await;
    let inst = instances_of(&client, "sbaws2").await;
    assert!(inst.iter().all(|(_, s)| gone(s)), "{inst:?}");

    // 3. A cloud error reaches the shim with AWS's code and message.
    let mut a = shim_annotations("bad", "default");
    a.insert(
        cloud_api_adaptor::annotations::MACHINE_TYPE.into(),
        "m6a.large".into(),
    );
    h.create_vm("sbaws3", a, "").await.unwrap();
    // Break the subnet under the provider's feet: delete it in moto.
    client
        .delete_subnet()
        .subnet_id(&n.subnet)
        .send()
        .await
        .unwrap();
    let e = h
        .start_vm("sbaws3", Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidSubnetID.NotFound"), "{e}");
    assert!(e.contains(&n.subnet), "AWS's message names the subnet: {e}");
    assert!(e.contains("provider create"), "names the phase: {e}");
    // 4. A pod whose image annotation names an AMI EC2 does not know:
    //    EC2's code and message reach the shim.
    let mut a = shim_annotations("badimage", "default");
    a.insert(
        cloud_api_adaptor::annotations::IMAGE.into(),
        "ami-0badbadbadbadbad0".into(),
    );
    h.create_vm("sbaws4", a, "").await.unwrap();
    let e = h
        .start_vm("sbaws4", Duration::from_secs(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("InvalidAMIID.NotFound"), "{e}");
    assert!(e.contains("ami-0badbadbadbadbad0"), "{e}");
    assert!(e.contains("provider create"), "names the phase: {e}");
    for id in ["sbaws1", "sbaws2", "sbaws3", "sbaws4"] {
        let _ = h.stop_vm(id).await;
    }
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
}
