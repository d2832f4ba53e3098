//! The AWS provider against a real local EC2 API: moto's server (PyPI
//! `moto[server]`), started on 127.0.0.1 for each test and stopped after
//! it, even when the test fails. The SDK is the real one, over HTTP.

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_aws::{AwsProvider, RawAwsConfig};
use std::collections::BTreeMap;

mod common;

use common::{net, sdk_at, Ec2Proxy, Moto, Net};

fn request(sandbox: &str) -> InstanceRequest {
    InstanceRequest::new(
        format!("podvm-web-{sandbox}"),
        OwnerTags::new("", "node-a", sandbox),
        b"#cloud-config\nwrite_files: []\n".to_vec(),
    )
}

fn raw(n: &Net) -> RawAwsConfig {
    RawAwsConfig {
        tags: Some("team=qa,cost=42".into()),
        instance_types: Some("m6a.large,m6a.xlarge,m6a.2xlarge".into()),
        ..n.raw_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_in_ec2_delete_terminates_list_is_ours_only() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let p = AwsProvider::with_sdk_config(raw(&n).check().unwrap(), &sdk);
    let lines = p.verify().await.expect("verify");
    assert!(lines.iter().any(|l| l.contains(&n.ami)), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains(&n.subnet)), "{lines:?}");

    let mut req = request("sb1");
    req.vcpus = Some(3);
    let inst = p.create_instance(req.clone()).await.expect("create");
    assert!(!inst.ips.is_empty(), "has its private address");
    assert_eq!(inst.name, "podvm-web-sb1");

    let out = client
        .describe_instances()
        .instance_ids(&inst.id)
        .send()
        .await
        .unwrap();
    let i = &out.reservations()[0].instances()[0];
    assert_eq!(
        i.instance_type().unwrap().as_str(),
        "m6a.xlarge",
        "smallest allowed type with 3 vCPUs"
    );
    assert_eq!(i.subnet_id(), Some(n.subnet.as_str()));
    assert!(i
        .security_groups()
        .iter()
        .any(|g| g.group_id() == Some(n.sg.as_str())));
    assert_eq!(i.image_id(), Some(n.ami.as_str()));
    let tags: BTreeMap<_, _> = i
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect();
    assert_eq!(tags.get("Name").map(String::as_str), Some("podvm-web-sb1"));
    assert_eq!(tags.get("peerpod-node").map(String::as_str), Some("node-a"));
    assert_eq!(tags.get("peerpod-sandbox").map(String::as_str), Some("sb1"));
    assert_eq!(tags.get("team").map(String::as_str), Some("qa"));
    let ud = client
        .describe_instance_attribute()
        .instance_id(&inst.id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let ud = ud
        .user_data()
        .and_then(|v| v.value())
        .expect("user data set");
    assert_eq!(common::vm_reads(ud), req.user_data);

    // A foreign instance (another node's) is never listed as ours.
    client
        .run_instances()
        .image_id(&n.ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("peerpod-node")
                        .value("node-b")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let node_a = OwnerTags {
        cluster: String::new(),
        node: "node-a".into(),
        sandbox_id: String::new(),
    };
    let mine = p.list_instances(&node_a).await.unwrap();
    assert_eq!(
        mine.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![inst.id.clone()]
    );

    p.delete_instance(&inst.id).await.expect("delete");
    let out = client
        .describe_instances()
        .instance_ids(&inst.id)
        .send()
        .await
        .unwrap();
    let state = out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string();
    assert!(state == "terminated" || state == "shutting-down", "{state}");
    p.delete_instance(&inst.id)
        .await
        .expect("a second delete succeeds");
    p.delete_instance("i-0123456789abcdef0")
        .await
        .expect("unknown id counts as deleted");
    assert!(p.delete_instance("").await.is_err(), "empty id refused");
    assert!(p.list_instances(&node_a).await.unwrap().is_empty());
    let _ = Filter::builder(); // (filters are exercised through list_instances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_errors_keep_their_code_and_message() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let mut r = raw(&n);
    r.subnet_id = Some("subnet-0000dead".into());
    let p = AwsProvider::with_sdk_config(r.check().unwrap(), &sdk);
    let e = p.create_instance(request("sb2")).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("InvalidSubnetID.NotFound"), "{e}");
    assert_eq!(e.kind, ErrorKind::InvalidConfig);
    assert!(e.message.contains("subnet-0000dead"), "{e}");
    let e = p.verify().await.unwrap_err();
    assert!(e.to_string().contains("subnet-0000dead"), "{e}");

    // The pod's machine type must be allowed; a too-big user data is refused
    // before AWS is asked.
    let p = AwsProvider::with_sdk_config(raw(&n).check().unwrap(), &sdk);
    let mut req = request("sb3");
    req.machine_type = Some("p5.48xlarge".into());
    let e = p.create_instance(req).await.unwrap_err();
    assert!(e.message.contains("not allowed"), "{e}");
    let f = common::userdata_fixture::fixture("aws");
    let limit = common::userdata_fixture::number(&f, "/write/max_raw_bytes") as usize;
    assert_eq!(peerpod_provider_aws::config::MAX_USER_DATA_BYTES, limit);
    let mut req = request("sb4");
    req.user_data = vec![b'x'; limit + 1];
    let e = p.create_instance(req).await.unwrap_err();
    assert!(e.message.contains(&limit.to_string()), "{e}");
    let node_a = OwnerTags {
        cluster: String::new(),
        node: "node-a".into(),
        sandbox_id: String::new(),
    };
    assert!(
        p.list_instances(&node_a).await.unwrap().is_empty(),
        "nothing was made"
    );
}

/// The instance type moto recorded for an instance.
async fn type_of(client: &aws_sdk_ec2::Client, id: &str) -> String {
    let out = client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .instance_type()
        .unwrap()
        .as_str()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_falls_back_to_the_next_type_that_fits_and_sev_snp_is_asked() {
    let moto = Moto::start();
    let client = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let n = net(&client).await;
    // c6a.xlarge (4 vCPUs, 8 GiB) is the smallest fit for 3 vCPUs; the zone
    // has none, so m6a.xlarge (4 vCPUs, 16 GiB) is next.
    let proxy = Ec2Proxy::start(&moto.url, &["c6a.xlarge"]).await;
    let mut r = raw(&n);
    r.instance_types = Some("m6a.large,c6a.xlarge,m6a.xlarge".into());
    let p = AwsProvider::with_sdk_config(r.check().unwrap(), &sdk_at(&proxy.url).await);
    let mut req = request("cap1");
    req.vcpus = Some(3);
    let inst = p
        .create_instance(req)
        .await
        .expect("created on the next type");
    assert_eq!(type_of(&client, &inst.id).await, "m6a.xlarge");
    let runs = proxy.run_instances_bodies();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].contains("InstanceType=c6a.xlarge"), "{}", runs[0]);
    assert!(runs[1].contains("InstanceType=m6a.xlarge"), "{}", runs[1]);
    for b in &runs {
        assert!(
            b.contains("CpuOptions.AmdSevSnp=enabled"),
            "SEV-SNP requested: {b}"
        );
    }
    p.delete_instance(&inst.id).await.unwrap();

    // No capacity for any type that fits: the error keeps EC2's code and
    // says what was tried; nothing is left.
    let proxy = Ec2Proxy::start(&moto.url, &["c6a.xlarge", "m6a.xlarge"]).await;
    let mut r = raw(&n);
    r.instance_types = Some("m6a.large,c6a.xlarge,m6a.xlarge".into());
    let p = AwsProvider::with_sdk_config(r.check().unwrap(), &sdk_at(&proxy.url).await);
    let mut req = request("cap2");
    req.vcpus = Some(3);
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(
        e.code.as_deref(),
        Some("InsufficientInstanceCapacity"),
        "{e}"
    );
    assert_eq!(e.kind, ErrorKind::InsufficientCapacity);
    assert!(e.message.contains("c6a.xlarge, m6a.xlarge"), "{e}");
    let owner = OwnerTags::new("", "node-a", "cap2");
    assert!(p.list_instances(&owner).await.unwrap().is_empty());

    // DISABLECVM=true: no SEV-SNP in the request.
    let proxy = Ec2Proxy::start(&moto.url, &[]).await;
    let mut r = raw(&n);
    r.disable_cvm = Some("true".into());
    let p = AwsProvider::with_sdk_config(r.check().unwrap(), &sdk_at(&proxy.url).await);
    let inst = p.create_instance(request("plain1")).await.unwrap();
    let runs = proxy.run_instances_bodies();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].contains("AmdSevSnp"), "{}", runs[0]);
    p.delete_instance(&inst.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_image_is_ec2s_invalid_ami_error() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let client = aws_sdk_ec2::Client::new(&sdk);
    let n = net(&client).await;
    let p = AwsProvider::with_sdk_config(raw(&n).check().unwrap(), &sdk);
    let mut req = request("ami1");
    req.image = Some("ami-0badbadbadbadbad0".into());
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("InvalidAMIID.NotFound"), "{e}");
    assert!(e.message.contains("ami-0badbadbadbadbad0"), "{e}");
    assert_eq!(e.kind, ErrorKind::InvalidConfig);
    let mut r = raw(&n);
    r.ami_id = Some("ami-0badbadbadbadbad0".into());
    let p = AwsProvider::with_sdk_config(r.check().unwrap(), &sdk);
    let e = p.verify().await.unwrap_err();
    assert!(e.to_string().contains("ami-0badbadbadbadbad0"), "{e}");
}
