//! `cloud-api-adaptor --delete-cluster-vms` (the Helm chart's uninstall
//! hook), the real binary against moto, configured as the chart's Job
//! runs it (no subcommand: CLOUD_PROVIDER and the peer-pods-cm names in the
//! environment): every instance of the cluster goes, on every node; the
//! other cluster's and an untagged one stay.

mod common;

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use common::{net, Moto};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The workspace's `cloud-api-adaptor` (built with every provider by
/// scripts/test.sh) next to this test executable.
fn adaptor_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("cloud-api-adaptor");
    assert!(
        p.exists(),
        "{} is missing: cargo build -p cloud-api-adaptor --all-features (scripts/test.sh does)",
        p.display()
    );
    p
}

async fn run(c: &aws_sdk_ec2::Client, ami: &str, subnet: &str, tags: &[(&str, &str)]) -> String {
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build();
    let out = c
        .run_instances()
        .image_id(ami)
        .subnet_id(subnet)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec)
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

async fn states(c: &aws_sdk_ec2::Client) -> BTreeMap<String, String> {
    let out = c.describe_instances().send().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cluster_vms_takes_exactly_this_clusters_instances() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let c = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&c).await;
    let a1 = run(
        &c,
        &n.ami,
        &n.subnet,
        &[
            ("peerpod-cluster", "prod"),
            ("peerpod-node", "w0"),
            ("peerpod-sandbox", "s1"),
        ],
    )
    .await;
    let a2 = run(
        &c,
        &n.ami,
        &n.subnet,
        &[
            ("peerpod-cluster", "prod"),
            ("peerpod-node", "w1"),
            ("peerpod-sandbox", "s2"),
        ],
    )
    .await;
    let b1 = run(
        &c,
        &n.ami,
        &n.subnet,
        &[
            ("peerpod-cluster", "staging"),
            ("peerpod-node", "w0"),
            ("peerpod-sandbox", "s3"),
        ],
    )
    .await;
    let x1 = run(
        &c,
        &n.ami,
        &n.subnet,
        &[("peerpod-node", "w0"), ("peerpod-sandbox", "s4")],
    )
    .await;

    let hook = |cluster: &str| {
        Command::new(adaptor_bin())
            .arg("--delete-cluster-vms")
            .env_clear()
            .env("CLOUD_PROVIDER", "aws")
            .env("PODVM_AMI_ID", &n.ami)
            .env("AWS_SUBNET_ID", &n.subnet)
            .env("AWS_SG_IDS", &n.sg)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &moto.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("PEERPOD_CLUSTER_ID", cluster)
            .env("PEERPOD_PROBE_LISTEN", "off")
            .output()
            .unwrap()
    };
    // Without a cluster id it refuses (it would take every cluster's VMs).
    let out = hook("");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs this cluster's id"));
    assert!(states(&c).await.values().all(|s| s == "running"));

    let out = hook("prod");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deleted 2 pod VM(s) of cluster prod"),
        "{stdout}"
    );
    let s = states(&c).await;
    for gone in [&a1, &a2] {
        assert!(
            matches!(s[gone].as_str(), "terminated" | "shutting-down"),
            "{gone}: {}",
            s[gone]
        );
    }
    for kept in [&b1, &x1] {
        assert_eq!(s[kept], "running", "{kept}");
    }
    // Again: nothing left of that cluster, nothing else touched.
    let out = hook("prod");
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 0 pod VM(s)"));
    assert_eq!(states(&c).await[&b1], "running");
}
