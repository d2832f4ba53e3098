//! The GCP provider with the real google-cloud-rust Compute client against
//! a local GCE REST server (no GCE emulator exists): what the client sent
//! (confidential settings, metadata, labels, machine type, network), the
//! zone operation waits, paging, capacity fallback and error mapping.

mod common;

use common::{provider, raw, GceServer, PROJECT, ZONE};
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};

fn request(node: &str, sandbox: &str) -> InstanceRequest {
    InstanceRequest::new(
        format!("podvm-web-{}", &sandbox[..sandbox.len().min(8)]),
        OwnerTags::new("", node, sandbox),
        b"#cloud-config\nwrite_files: []\n".to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sends_a_confidential_instance_list_pages_delete_is_idempotent() {
    let gce = GceServer::start().await;
    let p = provider(raw(&gce.url)).await;
    let lines = p.verify().await.expect("verify");
    assert!(
        lines.iter().any(|l| l.contains("n2d-standard-2")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("global/images/podvm")),
        "{lines:?}"
    );

    // A containerd sandbox id is 64 characters: longer than a GCE label.
    let sandbox = "3f".repeat(32);
    let mut req = request("Node-1.example", &sandbox);
    req.vcpus = Some(3);
    let inst = p.create_instance(req.clone()).await.expect("create");
    assert_eq!(inst.id, req.name);
    assert!(
        !inst.ips.is_empty() && inst.ips[0].is_loopback(),
        "{inst:?}"
    );
    assert_eq!(
        inst.tags.get("peerpod-sandbox"),
        Some(&sandbox),
        "exact owner tags"
    );

    let inserts = gce.seen(
        "POST",
        &format!("/projects/{PROJECT}/zones/{ZONE}/instances"),
    );
    assert_eq!(inserts.len(), 1, "one insert");
    let body = &inserts[0].body;
    assert_eq!(body["name"], req.name.as_str());
    assert_eq!(
        body["machineType"],
        format!("zones/{ZONE}/machineTypes/n2d-standard-4"),
        "smallest allowed type with 3 vCPUs"
    );
    assert_eq!(
        body["confidentialInstanceConfig"]["confidentialInstanceType"],
        "SEV_SNP"
    );
    assert_eq!(body["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(body["minCpuPlatform"], "AMD Milan");
    assert_eq!(
        common::vm_reads(body).as_deref(),
        Some(&b"#cloud-config\nwrite_files: []\n"[..]),
        "what the instance reads from its metadata server"
    );
    assert_eq!(body["labels"]["peerpod-node"], "node-1_example");
    assert_eq!(
        body["labels"]["peerpod-sandbox"].as_str().map(str::len),
        Some(63)
    );
    assert_eq!(body["labels"]["team"], "qa");
    assert_eq!(
        body["networkInterfaces"][0]["network"],
        "global/networks/default"
    );
    assert!(
        body["networkInterfaces"][0]["accessConfigs"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "no external IP unless asked: {body}"
    );
    assert_eq!(
        body["disks"][0]["initializeParams"]["sourceImage"],
        format!("projects/{PROJECT}/global/images/podvm")
    );
    assert_eq!(body["disks"][0]["autoDelete"], true);
    assert!(
        !gce.seen("GET", "/operations/operation-1-insert").is_empty(),
        "waited on the zone operation"
    );

    // Three more of ours and one of another node: list pages through all of
    // ours (two per page) and none of theirs.
    for i in 0..3 {
        p.create_instance(request("Node-1.example", &format!("sb{i}xxxxx")))
            .await
            .unwrap();
    }
    let theirs = p
        .create_instance(request("node-2", "othersb1"))
        .await
        .unwrap();
    let node1 = OwnerTags {
        cluster: String::new(),
        node: "Node-1.example".into(),
        sandbox_id: String::new(),
    };
    let mine = p.list_instances(&node1).await.unwrap();
    assert_eq!(mine.len(), 4, "{mine:?}");
    assert!(
        gce.seen("GET", &format!("/zones/{ZONE}/instances"))
            .iter()
            .any(|s| s.query.contains("pageToken")),
        "followed nextPageToken"
    );
    let exact = OwnerTags {
        cluster: String::new(),
        node: "Node-1.example".into(),
        sandbox_id: sandbox.clone(),
    };
    assert_eq!(p.list_instances(&exact).await.unwrap().len(), 1);
    // A sandbox id sharing the first 63 characters is not ours.
    let near = OwnerTags {
        cluster: String::new(),
        node: "Node-1.example".into(),
        sandbox_id: format!("{}x", &sandbox[..63]),
    };
    assert!(p.list_instances(&near).await.unwrap().is_empty());

    p.delete_instance(&inst.id).await.expect("delete");
    assert!(!gce.instance_names().contains(&inst.id));
    p.delete_instance(&inst.id)
        .await
        .expect("a second delete succeeds");
    assert!(p.delete_instance("").await.is_err(), "empty id refused");
    assert_eq!(
        p.console_tail(&theirs.id)
            .await
            .as_deref()
            .map(|c| c.contains("forwarder starting")),
        Some(true)
    );
    for i in mine.iter().filter(|i| i.id != inst.id) {
        p.delete_instance(&i.id).await.unwrap();
    }
    p.delete_instance(&theirs.id).await.unwrap();
    assert!(gce.instance_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_falls_back_then_fails_clearly_and_errors_keep_googles_message() {
    let gce = GceServer::start().await;
    gce.state
        .lock()
        .unwrap()
        .no_capacity
        .insert("n2d-standard-4".into());
    let p = provider(raw(&gce.url)).await;
    let mut req = request("n1", "cap1");
    req.vcpus = Some(3);
    let inst = p
        .create_instance(req)
        .await
        .expect("created on the next type");
    let types: Vec<String> = gce
        .seen("POST", "/instances")
        .iter()
        .map(|s| {
            s.body["machineType"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        types,
        vec![
            format!("zones/{ZONE}/machineTypes/n2d-standard-4"),
            format!("zones/{ZONE}/machineTypes/n2d-standard-8")
        ]
    );
    p.delete_instance(&inst.id).await.unwrap();

    gce.state
        .lock()
        .unwrap()
        .no_capacity
        .insert("n2d-standard-8".into());
    let mut req = request("n1", "cap2");
    req.vcpus = Some(3);
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InsufficientCapacity, "{e}");
    assert_eq!(e.code.as_deref(), Some("ZONE_RESOURCE_POOL_EXHAUSTED"));
    assert!(e.message.contains("does not have enough resources"), "{e}");
    assert!(e.message.contains("n2d-standard-4, n2d-standard-8"), "{e}");
    assert!(gce.instance_names().is_empty(), "nothing left");

    // Quota: Google's reason and message.
    gce.state.lock().unwrap().quota_exceeded = true;
    let e = p
        .create_instance(request("n1", "quota1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::QuotaExceeded, "{e}");
    assert_eq!(e.code.as_deref(), Some("quotaExceeded"));
    assert!(e.message.contains("Quota 'N2D_CPUS' exceeded"), "{e}");
    gce.state.lock().unwrap().quota_exceeded = false;

    // A machine type the pod names must be allowed.
    let mut req = request("n1", "mt1");
    req.machine_type = Some("a3-megagpu-8g".into());
    let e = p.create_instance(req).await.unwrap_err();
    assert!(e.message.contains("not allowed"), "{e}");

    // DISABLECVM: a plain instance; USE_PUBLIC_IP: an external address.
    let mut r = raw(&gce.url);
    r.disable_cvm = Some("true".into());
    r.use_public_ip = Some("true".into());
    let plain = provider(r).await;
    let inst = plain
        .create_instance(request("n1", "plain1"))
        .await
        .unwrap();
    let body = gce.seen("POST", "/instances").last().unwrap().body.clone();
    assert!(body.get("confidentialInstanceConfig").is_none(), "{body}");
    assert_eq!(
        body["networkInterfaces"][0]["accessConfigs"][0]["type"],
        "ONE_TO_ONE_NAT"
    );
    assert_eq!(
        inst.ips[0]
            .to_string()
            .split('.')
            .take(2)
            .collect::<Vec<_>>(),
        vec!["127", "129"],
        "the external address: {inst:?}"
    );
    plain.delete_instance(&inst.id).await.unwrap();

    // An unknown image and missing permissions fail verify with Google's message.
    let mut r = raw(&gce.url);
    r.image = Some("no-such-image".into());
    let e = provider(r).await.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("no-such-image"), "{e}");
    gce.state.lock().unwrap().forbidden = true;
    let e = p.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("compute.instances.list"), "{e}");
}
