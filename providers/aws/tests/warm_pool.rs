//! The warm pool through the AWS provider against moto. moto's instances
//! get addresses in the test VPC (127.50.1.0/24, on this machine), so the
//! test can "boot" a pool VM: it reads the VM's user data back from EC2
//! and starts a real forwarder (and the agent double) with it on the
//! instance's address. Then the whole path runs through the provider API:
//! the pool fills (RunInstances with the bootstrap user data and the pool
//! tag), the VM answers Ping, StartVM binds it (the per-pod config goes
//! over the pinned bootstrap channel), CreateTags gives it the sandbox's
//! owner tags and name, StopVM terminates it, and a drain terminates the
//! refilled pool VM.

mod common;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use common::{net, Moto};
use peerpod_provider_aws::AwsProvider;
use peerpod_tests::fake_vm::FakeVm;
use peerpod_tests::harness::{pool_config_in, until, wait_for, LONG_WAIT};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const AUTH: &str = r#"{"auths":{"r.example":{"auth":"YXdzOnNlY3JldA=="}}}"#;

/// (id, state, tags, private ip) of the pool-tagged instances.
async fn pool_instances(
    c: &aws_sdk_ec2::Client,
) -> Vec<(String, String, BTreeMap<String, String>, String)> {
    let out = c
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag-key")
                .values("peerpod-pool")
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
                i.instance_id().unwrap_or_default().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                i.tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_string(),
                            t.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                i.private_ip_address().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn live(state: &str) -> bool {
    state == "pending" || state == "running"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_fills_binds_retags_and_drains_through_ec2() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let raw = n.raw_config();
    let provider = Arc::new(AwsProvider::with_sdk_config(raw.check().unwrap(), &sdk));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pool_config_in(dir.path(), "aws-pool-node");
    cfg.registry_auth = Some(AUTH.into());
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let m = daemon.manager.clone();

    // 1. The pool fills: one instance, tagged, with a bootstrap config.
    wait_for("a pool instance", LONG_WAIT, || async {
        pool_instances(&client)
            .await
            .iter()
            .any(|i| live(&i.1) && !i.3.is_empty())
    })
    .await;
    let (iid, _, tags, ip) = pool_instances(&client).await.remove(0);
    let pool_name = tags["peerpod-pool"].clone();
    assert!(pool_name.starts_with("podvm-pool-"), "{tags:?}");
    assert_eq!(tags["Name"], pool_name);
    assert_eq!(tags["peerpod-node"], "aws-pool-node");
    assert!(!tags.contains_key("peerpod-sandbox"), "{tags:?}");
    let ud = client
        .describe_instance_attribute()
        .instance_id(&iid)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let ud = base64::engine::general_purpose::STANDARD
        .decode(ud.user_data().and_then(|v| v.value()).unwrap())
        .unwrap();
    let doc = peerpod_vmconfig::userdata::UserData::parse(&ud).expect("our cloud-config");
    assert_eq!(
        doc.forwarder.bootstrap.as_ref().map(|b| b.pool_vm.as_str()),
        Some(pool_name.as_str())
    );
    assert!(doc.forwarder.tls.is_some(), "the bootstrap identity");
    assert!(
        doc.registry_auth.is_none(),
        "no per-pod secret in a pool VM's user data"
    );
    assert!(doc.forwarder.pod_network.is_none());

    // 2. "Boot" it: its forwarder, from its own user data, on its address.
    let vm = FakeVm::boot(&ud, ip.parse().unwrap(), cfg.forwarder_port)
        .await
        .unwrap();
    until("the pool VM ready", LONG_WAIT, || m.pool_ready() == 1).await;

    // 3. StartVM binds it.
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("sbawsw1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    h.start_vm("sbawsw1", Duration::from_secs(20))
        .await
        .expect("StartVM from the pool");
    assert_eq!(m.list().await[0].instance_id.as_deref(), Some(iid.as_str()));
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .expect("agent through the bound VM");
    let bound = vm.bound_config("sbawsw1").await;
    assert!(
        bound.contains("sbawsw1") && !bound.contains("\"bootstrap\""),
        "{bound}"
    );
    assert_eq!(vm.auth_json().as_deref(), Some(AUTH));
    // CreateTags: the sandbox's owner tags, and its name.
    wait_for("retagged", LONG_WAIT, || async {
        pool_instances(&client).await.iter().any(|i| {
            i.0 == iid && i.2.get("peerpod-sandbox").map(String::as_str) == Some("sbawsw1")
        })
    })
    .await;
    let tags = pool_instances(&client)
        .await
        .into_iter()
        .find(|i| i.0 == iid)
        .unwrap()
        .2;
    assert_eq!(tags["Name"], "podvm-web-sbawsw1");

    // 4. StopVM terminates it; the refill made another; drain terminates it.
    h.stop_vm("sbawsw1").await.unwrap();
    m.wait_teardowns().await;
    wait_for("a refilled pool instance", LONG_WAIT, || async {
        pool_instances(&client)
            .await
            .iter()
            .any(|i| i.0 != iid && live(&i.1))
    })
    .await;
    m.drain_pool();
    until("drained", LONG_WAIT, || m.pool_len() == 0).await;
    m.wait_teardowns().await;
    let left: Vec<_> = pool_instances(&client)
        .await
        .into_iter()
        .filter(|i| live(&i.1))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    vm.stop().await;
    daemon.shutdown().await;
}
