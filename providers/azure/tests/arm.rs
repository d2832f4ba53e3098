//! The Azure provider against the local ARM stand-in (tests/common): what
//! it really sends for a create (confidential settings, user data, tags,
//! size, NIC in the subnet, each PUT once), delete of VM + NIC + disk,
//! listing by owner tags across pages, size fallback on capacity errors,
//! and Azure's error codes and messages kept.

mod common;

use common::{image_id, subnet_id, userdata_fixture, FakeArm, Fault, RG, TOKEN};
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_azure::{ArmTiming, AzureProvider, RawAzureConfig, StaticToken};
use serde_json::{json, Value};
use std::time::Duration;

fn timing() -> ArmTiming {
    ArmTiming {
        poll_interval: Duration::from_millis(10),
        operation_timeout: Duration::from_secs(10),
        max_throttle_retries: 4,
        max_retry_after: Duration::from_millis(50),
        request_timeout: Duration::from_secs(10),
    }
}

fn provider(arm: &FakeArm, set: impl FnOnce(&mut RawAzureConfig)) -> AzureProvider {
    let mut raw = arm.raw_config();
    set(&mut raw);
    AzureProvider::new(raw.check().unwrap(), StaticToken::new(TOKEN), timing()).unwrap()
}

fn request(name: &str, node: &str, sandbox: &str) -> InstanceRequest {
    InstanceRequest::new(
        name,
        OwnerTags::new("", node, sandbox),
        b"#cloud-config\nwrite_files: []\n".to_vec(),
    )
}

fn sizes_sent(arm: &FakeArm) -> Vec<String> {
    arm.sent("PUT", "/virtualMachines/")
        .iter()
        .map(|r| {
            r.body
                .as_ref()
                .and_then(|b| b.pointer("/properties/hardwareProfile/vmSize"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn nothing_left(arm: &FakeArm) {
    for kind in ["virtualmachines", "networkinterfaces", "disks"] {
        assert!(
            arm.of_type(kind).is_empty(),
            "{kind}: {:?}",
            arm.of_type(kind)
        );
    }
}

#[tokio::test]
async fn create_sends_one_confidential_vm_with_our_user_data_tags_and_size() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |r| {
        r.tags = Some("team=qa,cost=42".into());
        r.instance_sizes =
            Some("Standard_DC2as_v5,Standard_EC4as_v5,Standard_DC4as_v5,Standard_DC8as_v5".into());
        r.root_volume_size = Some("40".into());
    });
    let mut req = request("podvm-web-12345678", "node-a", "12345678abcd");
    req.vcpus = Some(3);
    req.memory_mib = Some(4096);
    let user_data = req.user_data.clone();
    let inst = p.create_instance(req).await.unwrap();
    assert_eq!(inst.id, "podvm-web-12345678");
    assert_eq!(inst.ips.len(), 1);
    assert!(inst.ips[0].to_string().starts_with("127.0.0."), "{inst:?}");

    // The NIC: once, in our subnet, with the owner tags.
    let nic = arm.sent("PUT", "/networkInterfaces/");
    assert_eq!(nic.len(), 1, "NIC PUT sent once");
    assert!(nic[0]
        .path
        .ends_with("/networkInterfaces/podvm-web-12345678-nic"));
    let nb = nic[0].body.as_ref().unwrap();
    assert_eq!(
        nb.pointer("/properties/ipConfigurations/0/properties/subnet/id"),
        Some(&json!(subnet_id()))
    );
    assert_eq!(nb["tags"]["peerpod-sandbox"], "12345678abcd");

    // The VM: once, confidential, our user data, tags, size from annotations.
    let vm = arm.sent("PUT", "/virtualMachines/");
    assert_eq!(
        vm.len(),
        1,
        "VM PUT sent once (the operation is polled, not re-sent)"
    );
    assert!(
        vm[0].query.contains("api-version=2024-07-01"),
        "{}",
        vm[0].query
    );
    assert_eq!(vm[0].auth.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    let b = vm[0].body.as_ref().unwrap();
    assert_eq!(b["location"], "eastus");
    // 3 vCPUs / 4 GiB: the smallest allowed size that fits.
    assert_eq!(
        b.pointer("/properties/hardwareProfile/vmSize"),
        Some(&json!("Standard_DC4as_v5"))
    );
    assert_eq!(
        b.pointer("/properties/securityProfile/securityType"),
        Some(&json!("ConfidentialVM"))
    );
    assert_eq!(
        b.pointer("/properties/securityProfile/uefiSettings/vTpmEnabled"),
        Some(&json!(true))
    );
    assert!(b
        .pointer("/properties/securityProfile/uefiSettings/secureBootEnabled")
        .is_some());
    assert_eq!(
        b.pointer(
            "/properties/storageProfile/osDisk/managedDisk/securityProfile/securityEncryptionType"
        ),
        Some(&json!("VMGuestStateOnly"))
    );
    assert_eq!(
        b.pointer("/properties/storageProfile/osDisk/diskSizeGB"),
        Some(&json!(40))
    );
    assert_eq!(
        b.pointer("/properties/storageProfile/imageReference/id"),
        Some(&json!(image_id()))
    );
    assert_eq!(
        b.pointer("/properties/networkProfile/networkInterfaces/0/id")
            .and_then(Value::as_str),
        Some(&*FakeArm::nic_path("podvm-web-12345678"))
    );
    // What the VM reads from IMDS (test-fixtures/cloud-userdata/azure.json,
    // shared with the forwarder's IMDS stand-in) is our user data.
    let f = userdata_fixture::fixture("azure");
    let served = arm
        .imds_user_data("podvm-web-12345678")
        .expect("the VM PUT carries user data where ARM takes it for IMDS")
        .unwrap();
    assert_eq!(
        userdata_fixture::decode(userdata_fixture::text(&f, "/read/body_encoding"), &served)
            .unwrap(),
        user_data
    );
    assert!(
        b.pointer("/properties/osProfile/customData").is_none(),
        "customData never reaches IMDS: {b}"
    );
    for (k, v) in [
        ("peerpod-node", "node-a"),
        ("peerpod-sandbox", "12345678abcd"),
        ("team", "qa"),
        ("cost", "42"),
    ] {
        assert_eq!(b["tags"][k], v, "tag {k}: {}", b["tags"]);
    }
    // Both operations were polled through Azure-AsyncOperation until
    // Succeeded (first poll InProgress).
    assert_eq!(arm.sent("GET", "/operations/").len(), 4);
    assert!(arm.sent("GET", "/vmSizes").len() == 1, "sizes asked once");
    // A second create asks for the sizes no more (cached).
    let mut req = request("podvm-api-87654321", "node-a", "87654321");
    req.vcpus = Some(1);
    let i2 = p.create_instance(req).await.unwrap();
    assert_eq!(arm.sent("GET", "/vmSizes").len(), 1);
    assert_eq!(sizes_sent(&arm)[1], "Standard_DC2as_v5");
    assert_ne!(i2.ips, inst.ips);
}

#[tokio::test]
async fn disablecvm_sends_a_plain_vm() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |r| r.disable_cvm = Some("true".into()));
    p.create_instance(request("podvm-plain-1", "n", "s1"))
        .await
        .unwrap();
    let vm = arm.sent("PUT", "/virtualMachines/");
    let b = vm[0].body.as_ref().unwrap();
    assert!(b.pointer("/properties/securityProfile").is_none(), "{b}");
    assert!(b
        .pointer("/properties/storageProfile/osDisk/managedDisk/securityProfile")
        .is_none());
    // The default size when the pod asks for nothing.
    assert_eq!(sizes_sent(&arm), vec!["Standard_DC2as_v5"]);
}

#[tokio::test]
async fn user_data_over_the_limit_is_refused_before_any_call() {
    let f = userdata_fixture::fixture("azure");
    let limit = userdata_fixture::number(&f, "/write/max_encoded_bytes") as usize;
    assert_eq!(
        peerpod_provider_azure::config::MAX_USER_DATA_BASE64_BYTES,
        limit
    );
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    // 49153 raw bytes are 65540 in base64: one group over.
    let mut req = request("podvm-big-1", "n", "s1");
    req.user_data = vec![b'x'; limit / 4 * 3 + 1];
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(e.message.contains(&limit.to_string()), "{e}");
    assert!(arm.requests().is_empty());
    // Exactly the limit goes through.
    let mut req = request("podvm-big-2", "n", "s2");
    req.user_data = vec![b'x'; limit / 4 * 3];
    p.create_instance(req).await.unwrap();
    let served = arm.imds_user_data("podvm-big-2").unwrap().unwrap();
    assert_eq!(served.len(), limit);
}

#[tokio::test]
async fn delete_removes_vm_nic_and_disk_and_a_second_delete_succeeds() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    let i = p
        .create_instance(request("podvm-del-1", "n", "s1"))
        .await
        .unwrap();
    assert!(arm.exists(&FakeArm::vm_path("podvm-del-1")));
    assert!(arm.exists(&FakeArm::nic_path("podvm-del-1")));
    assert!(arm.exists(&FakeArm::disk_path("podvm-del-1")));
    p.delete_instance(&i.id).await.unwrap();
    nothing_left(&arm);
    assert_eq!(arm.sent("DELETE", "/virtualMachines/podvm-del-1").len(), 1);
    assert_eq!(
        arm.sent("DELETE", "/networkInterfaces/podvm-del-1-nic")
            .len(),
        1
    );
    assert_eq!(arm.sent("DELETE", "/disks/podvm-del-1-osdisk").len(), 1);
    // Gone already: 204 from Compute, 404 from Network; both count as done.
    p.delete_instance(&i.id).await.unwrap();
    let e = p.delete_instance("  ").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    let before = arm.requests().len();
    assert!(p.delete_instance("").await.is_err());
    assert_eq!(arm.requests().len(), before, "an empty id reaches no API");
}

#[tokio::test]
async fn list_returns_only_our_owner_tags_across_pages() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    p.create_instance(request("podvm-a-1", "node-1", "sb1"))
        .await
        .unwrap();
    p.create_instance(request("podvm-b-2", "node-1", "sb2"))
        .await
        .unwrap();
    arm.seed_vm(
        "other-node",
        json!({"peerpod-node": "node-2", "peerpod-sandbox": "sb3"}),
    );
    arm.seed_vm("untagged", json!({}));
    arm.seed_vm("someones-vm", json!({"team": "qa"}));
    let mut all = p
        .list_instances(&OwnerTags {
            cluster: String::new(),
            node: "node-1".into(),
            sandbox_id: String::new(),
        })
        .await
        .unwrap();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = all.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, vec!["podvm-a-1", "podvm-b-2"]);
    assert!(all.iter().all(|i| !i.ips.is_empty()), "{all:?}");
    // 5 VMs at 2 a page: three pages, all followed through nextLink.
    let pages = arm
        .sent("GET", "/providers/Microsoft.Compute/virtualMachines")
        .into_iter()
        .filter(|r| !r.path.to_ascii_lowercase().contains("/virtualmachines/"))
        .count();
    assert_eq!(pages, 3);
    let one = p
        .list_instances(&OwnerTags::new("", "node-1", "sb2"))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "podvm-b-2");
}

#[tokio::test]
async fn on_no_capacity_the_next_fitting_size_is_tried_then_a_clear_error() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |r| {
        r.instance_sizes =
            Some("Standard_DC2as_v5,Standard_DC4as_v5,Standard_EC4as_v5,Standard_DC8as_v5".into());
    });
    arm.with(|s| {
        s.vm_put_faults.insert(
            "Standard_DC4as_v5".into(),
            Fault::new(409, "SkuNotAvailable", "The requested VM size Standard_DC4as_v5 is currently not available in location 'eastus'."),
        );
        s.vm_op_faults.insert(
            "Standard_EC4as_v5".into(),
            Fault::new(200, "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."),
        );
    });
    let mut req = request("podvm-cap-1", "n", "s1");
    req.vcpus = Some(3);
    let i = p.create_instance(req).await.unwrap();
    assert_eq!(
        sizes_sent(&arm),
        vec![
            "Standard_DC4as_v5",
            "Standard_EC4as_v5",
            "Standard_DC8as_v5"
        ]
    );
    assert_eq!(arm.sent("PUT", "/networkInterfaces/").len(), 1, "one NIC");
    p.delete_instance(&i.id).await.unwrap();
    nothing_left(&arm);

    // Every size that fits is out of capacity: Azure's code and message,
    // the sizes tried, and nothing left behind.
    arm.with(|s| {
        s.vm_put_faults.insert(
            "Standard_DC8as_v5".into(),
            Fault::new(409, "SkuNotAvailable", "The requested VM size Standard_DC8as_v5 is currently not available in location 'eastus'."),
        );
    });
    let mut req = request("podvm-cap-2", "n", "s2");
    req.vcpus = Some(3);
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InsufficientCapacity, "{e}");
    assert_eq!(e.code.as_deref(), Some("SkuNotAvailable"));
    assert!(
        e.message
            .contains("Standard_DC8as_v5 is currently not available"),
        "{e}"
    );
    assert!(
        e.message
            .contains("sizes tried: Standard_DC4as_v5, Standard_EC4as_v5, Standard_DC8as_v5"),
        "{e}"
    );
    nothing_left(&arm);
}

#[tokio::test]
async fn quota_and_permission_errors_keep_azure_code_and_message() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |r| {
        r.instance_sizes = Some("Standard_DC2as_v5,Standard_DC4as_v5".into());
    });
    let quota = "Operation could not be completed as it results in exceeding approved standardDCASv5Family Cores quota. Location: eastus, Current Limit: 8, Current Usage: 8, Additional Required: 2.";
    arm.with(|s| s.vm_write_fault = Some(Fault::new(409, "OperationNotAllowed", quota)));
    let mut req = request("podvm-q-1", "n", "s1");
    req.vcpus = Some(1);
    let e = p.create_instance(req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::QuotaExceeded);
    assert_eq!(e.code.as_deref(), Some("OperationNotAllowed"));
    assert!(e.message.contains(quota), "{e}");
    assert_eq!(
        arm.sent("PUT", "/virtualMachines/").len(),
        1,
        "quota is not a capacity fallback"
    );
    nothing_left(&arm);

    let denied = "The client 'aaaa' with object id 'aaaa' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write' over scope '/subscriptions/x/resourceGroups/peerpods' or the scope is invalid.";
    arm.with(|s| s.vm_write_fault = Some(Fault::new(403, "AuthorizationFailed", denied)));
    let e = p
        .create_instance(request("podvm-auth-1", "n", "s2"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(e.code.as_deref(), Some("AuthorizationFailed"));
    assert!(
        e.to_string()
            .contains("Microsoft.Compute/virtualMachines/write"),
        "{e}"
    );
    assert!(!e.to_string().contains(TOKEN), "no token in errors: {e}");
    nothing_left(&arm);
}

#[tokio::test]
async fn throttled_calls_are_retried_with_a_bound() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    arm.with(|s| s.throttle_next = 2);
    let lines = p.verify().await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("resource group peerpods exists")),
        "{lines:?}"
    );
    assert_eq!(arm.sent("GET", &format!("/resourceGroups/{RG}")).len(), 3);
    arm.with(|s| s.throttle_next = 1000);
    let e = p.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!(e.code.as_deref(), Some("TooManyRequests"));
    assert_eq!(
        arm.sent("GET", &format!("/resourceGroups/{RG}")).len(),
        3 + 5,
        "first try + 4 retries"
    );
}

#[tokio::test]
async fn verify_reports_what_it_checked_and_names_what_is_missing() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |r| {
        r.instance_sizes = Some("Standard_DC2as_v5,Standard_DC4as_v5".into());
    });
    let lines = p.verify().await.unwrap();
    let all = lines.join("\n");
    for want in [
        "credentials accepted",
        "resource group peerpods exists (eastus)",
        "10.20.1.0/24",
        "image /subscriptions/",
        "VM sizes Standard_DC2as_v5, Standard_DC4as_v5 offered in eastus",
        "confidential VMs: on",
    ] {
        assert!(all.contains(want), "{want:?} in {all}");
    }
    let p = provider(&arm, |r| {
        r.image_id = Some(image_id().replace("1.0.0", "9.9.9"));
    });
    let e = p.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidConfig);
    assert!(e.message.contains("AZURE_IMAGE_ID"), "{e}");
    let p = provider(&arm, |r| {
        r.instance_sizes = Some("Standard_DC2as_v5,Standard_NC96ads_A100_v4".into());
    });
    let e = p.verify().await.unwrap_err();
    assert!(e.message.contains("Standard_NC96ads_A100_v4"), "{e}");
    // A wrong token: ARM's 401 is a permission error.
    let raw = arm.raw_config();
    let p = AzureProvider::new(raw.check().unwrap(), StaticToken::new("wrong"), timing()).unwrap();
    let e = p.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert_eq!(e.code.as_deref(), Some("AuthenticationFailed"));
}

#[tokio::test]
async fn console_tail_reads_the_serial_log_without_our_token() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    let i = p
        .create_instance(request("podvm-con-1", "n", "s1"))
        .await
        .unwrap();
    let tail = p.console_tail(&i.id).await.expect("a console tail");
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 30);
    assert!(lines[29].ends_with("boot line 40"), "{tail}");
    let blob = arm.sent("GET", "/blob/serial/");
    assert_eq!(blob.len(), 1);
    assert_eq!(
        blob[0].auth, None,
        "the bearer token is not sent to storage"
    );
    let post = arm.sent("POST", "/retrieveBootDiagnosticsData");
    assert!(
        post[0].query.contains("sasUriExpirationTimeInMinutes="),
        "{}",
        post[0].query
    );
    // A VM that is gone has no console.
    p.delete_instance(&i.id).await.unwrap();
    assert_eq!(p.console_tail(&i.id).await, None);
}

#[tokio::test]
async fn a_status_url_off_the_arm_endpoint_is_not_followed() {
    let arm = FakeArm::start().await;
    let p = provider(&arm, |_| {});
    // Another origin on loopback that records any connection to it.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    arm.with(|s| s.foreign_op_origin = Some(other_url.clone()));
    let e = p
        .create_instance(request("podvm-foreign-1", "n", "s1"))
        .await
        .unwrap_err();
    assert!(e.message.contains("not the ARM endpoint"), "{e}");
    assert!(e.message.contains(&other_url), "{e}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), other.accept()).await;
    assert!(
        accepted.is_err(),
        "nothing (and no token) went to the other origin"
    );
    arm.with(|s| s.foreign_op_origin = None);
    nothing_left(&arm);
}
