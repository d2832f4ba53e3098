//! `Provider` on Azure Resource Manager. Create: a NIC in `AZURE_SUBNET_ID`
//! (`PUT networkInterfaces`), then the VM (`PUT virtualMachines`) as a
//! confidential VM (`securityType: ConfidentialVM`, OS disk
//! `securityEncryptionType: VMGuestStateOnly`, vTPM) unless `DISABLECVM`,
//! with the user data as `userData` (base64; the VM reads it from IMDS
//! `compute/userData`, which never serves `osProfile.customData`), owner
//! tags and `TAGS`; each PUT is
//! sent once and followed through `Azure-AsyncOperation`; then the NIC's
//! private IP is read. A create that fails half-way deletes what it made.
//! Delete removes the VM, its NICs and its OS disk (not found = done).
//! List reads every VM of the resource group (all pages) and keeps those
//! carrying the owner tags, plus our tagged NICs whose VM is missing (a
//! create abandoned between the two PUTs), as instances of that VM name
//! without addresses, so the usual delete removes them.
//!
//! The instance id is the VM's name (unique in the resource group, and the
//! NIC `<name>-nic` and disk `<name>-osdisk` follow from it, so a delete
//! finds them even when the VM itself is already gone).
//!
//! The serial console tail comes from managed boot diagnostics
//! (`retrieveBootDiagnosticsData` gives a short-lived SAS URL of the serial
//! log blob, read without our token).
//!
//! VM sizes for fitting a pod's vCPU/memory request come from ARM's
//! `vmSizes` list for the region, asked once and cached.

use crate::arm::{ArmClient, ArmTiming};
use crate::config::{AzureConfig, MAX_USER_DATA_BASE64_BYTES};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use peerpod_provider_api::sizing::{
    create_with_capacity_fallback, instance_type_candidates, Size, SizeRequest,
};
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// api-version of Microsoft.Compute virtual machines and VM sizes.
pub const COMPUTE_API: &str = "2024-07-01";
/// api-version of Microsoft.Compute disks.
pub const DISK_API: &str = "2023-10-02";
/// api-version of Microsoft.Compute galleries.
pub const GALLERY_API: &str = "2023-07-03";
/// api-version of Microsoft.Network.
pub const NETWORK_API: &str = "2024-05-01";
/// api-version of resource groups.
pub const RESOURCES_API: &str = "2021-04-01";
/// Lines of serial console `console_tail` returns.
const CONSOLE_LINES: usize = 30;
/// Most of the serial log read (its end).
const CONSOLE_MAX_BYTES: usize = 256 * 1024;
/// Azure's limit on VM names (Linux).
pub const MAX_VM_NAME: usize = 64;

/// See the module doc.
pub struct AzureProvider {
    arm: ArmClient,
    cfg: AzureConfig,
    /// The SSH public key put on every VM.
    ssh_key: String,
    /// Sizes from the region's `vmSizes` list (they never change).
    sizes: Mutex<Option<Arc<HashMap<String, Size>>>>,
}

/// A throwaway `ssh-ed25519` public key nobody holds the private key of:
/// Azure wants an SSH key on a Linux VM, and without `SSH_KEY_PATH` nobody
/// should be able to log in.
fn unusable_ssh_key() -> String {
    fn put(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut blob = Vec::new();
    put(&mut blob, b"ssh-ed25519");
    put(&mut blob, &rand::random::<[u8; 32]>());
    format!(
        "ssh-ed25519 {} peerpod-no-login",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

impl AzureProvider {
    /// A provider talking to `cfg.arm_endpoint` with tokens from
    /// `credential`. Reads `SSH_KEY_PATH` if set.
    pub fn new(
        cfg: AzureConfig,
        credential: Arc<dyn TokenCredential>,
        timing: ArmTiming,
    ) -> Result<Self, ProviderError> {
        let ssh_key = match &cfg.ssh_key_path {
            Some(p) => {
                let k = std::fs::read_to_string(p).map_err(|e| {
                    ProviderError::new(
                        ErrorKind::InvalidConfig,
                        format!("SSH_KEY_PATH {}: {e}", p.display()),
                    )
                })?;
                let k = k.trim().to_string();
                if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") {
                    return Err(ProviderError::new(
                        ErrorKind::InvalidConfig,
                        format!("SSH_KEY_PATH {}: not an SSH public key", p.display()),
                    ));
                }
                k
            }
            None => unusable_ssh_key(),
        };
        Ok(Self {
            arm: ArmClient::new(&cfg.arm_endpoint, credential, timing)?,
            cfg,
            ssh_key,
            sizes: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &AzureConfig {
        &self.cfg
    }

    fn rg_path(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}",
            self.cfg.subscription_id, self.cfg.resource_group
        )
    }

    fn vm_path(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/virtualMachines/{name}",
            self.rg_path()
        )
    }

    fn nic_path(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/networkInterfaces/{name}-nic",
            self.rg_path()
        )
    }

    fn disk_path(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/disks/{name}-osdisk",
            self.rg_path()
        )
    }

    /// Sizes of the region's VM sizes, asked once.
    async fn sizes(&self) -> Result<Arc<HashMap<String, Size>>, ProviderError> {
        if let Some(s) = self.sizes.lock().ok().and_then(|g| g.clone()) {
            return Ok(s);
        }
        let url = self.arm.url(
            &format!(
                "/subscriptions/{}/providers/Microsoft.Compute/locations/{}/vmSizes",
                self.cfg.subscription_id, self.cfg.region
            ),
            COMPUTE_API,
        );
        let items = self.arm.list("list VM sizes", &url).await?;
        let map: HashMap<String, Size> = items
            .iter()
            .filter_map(|v| {
                Some((
                    v.get("name")?.as_str()?.to_string(),
                    Size {
                        vcpus: u32::try_from(v.get("numberOfCores")?.as_u64()?).ok()?,
                        memory_mib: v.get("memoryInMB")?.as_u64()?,
                    },
                ))
            })
            .collect();
        let map = Arc::new(map);
        if let Ok(mut g) = self.sizes.lock() {
            *g = Some(map.clone());
        }
        Ok(map)
    }

    /// The VM sizes to try, best first.
    async fn choose_sizes(&self, req: &InstanceRequest) -> Result<Vec<String>, ProviderError> {
        let need_sizes = (req.vcpus.is_some() || req.memory_mib.is_some())
            && req
                .machine_type
                .as_deref()
                .is_none_or(|m| m.trim().is_empty())
            && !self.cfg.instance_sizes.is_empty();
        let sizes = if need_sizes {
            self.sizes().await?
        } else {
            Arc::new(HashMap::new())
        };
        instance_type_candidates(
            &SizeRequest {
                machine_type: req.machine_type.as_deref(),
                gpus: req.gpus,
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                allowed: &self.cfg.instance_sizes,
                default: &self.cfg.instance_size,
                allowed_key: "AZURE_INSTANCE_SIZES",
            },
            |t| sizes.get(t).copied(),
        )
    }

    fn nic_body(&self, tags: &BTreeMap<String, String>) -> Value {
        let mut props = json!({
            "ipConfigurations": [{
                "name": "ipconfig1",
                "properties": {
                    "primary": true,
                    "privateIPAllocationMethod": "Dynamic",
                    "subnet": { "id": self.cfg.subnet_id },
                },
            }],
        });
        if let Some(nsg) = &self.cfg.nsg_id {
            props["networkSecurityGroup"] = json!({ "id": nsg });
        }
        json!({ "location": self.cfg.region, "tags": tags, "properties": props })
    }

    fn image_reference(image: &str) -> Value {
        let l = image.to_ascii_lowercase();
        if l.starts_with("/communitygalleries/") {
            json!({ "communityGalleryImageId": image })
        } else if l.starts_with("/sharedgalleries/") {
            json!({ "sharedGalleryImageId": image })
        } else {
            json!({ "id": image })
        }
    }

    fn vm_body(
        &self,
        name: &str,
        size: &str,
        image: &str,
        nic_id: &str,
        tags: &BTreeMap<String, String>,
        user_data_b64: &str,
    ) -> Value {
        let mut managed_disk = json!({ "storageAccountType": "Premium_LRS" });
        if !self.cfg.disable_cvm {
            managed_disk["securityProfile"] =
                json!({ "securityEncryptionType": "VMGuestStateOnly" });
        }
        let mut os_disk = json!({
            "name": format!("{name}-osdisk"),
            "createOption": "FromImage",
            "caching": "ReadWrite",
            "deleteOption": "Delete",
            "managedDisk": managed_disk,
        });
        if let Some(gib) = self.cfg.root_volume_gib {
            os_disk["diskSizeGB"] = json!(gib);
        }
        let user = &self.cfg.ssh_username;
        let mut props = json!({
            "hardwareProfile": { "vmSize": size },
            "storageProfile": {
                "imageReference": Self::image_reference(image),
                "osDisk": os_disk,
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": user,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": { "publicKeys": [{
                        "path": format!("/home/{user}/.ssh/authorized_keys"),
                        "keyData": self.ssh_key,
                    }]},
                },
            },
            "networkProfile": {
                "networkInterfaces": [{
                    "id": nic_id,
                    "properties": { "primary": true, "deleteOption": "Delete" },
                }],
            },
            "diagnosticsProfile": { "bootDiagnostics": { "enabled": true } },
            "userData": user_data_b64,
        });
        if !self.cfg.disable_cvm {
            props["securityProfile"] = json!({
                "securityType": "ConfidentialVM",
                "uefiSettings": {
                    "secureBootEnabled": self.cfg.secure_boot,
                    "vTpmEnabled": true,
                },
            });
        }
        json!({ "location": self.cfg.region, "tags": tags, "properties": props })
    }

    /// The private IPs of a NIC (primary configuration first).
    async fn nic_ips(&self, nic_id: &str) -> Result<Vec<IpAddr>, ProviderError> {
        let url = self.arm.url(nic_id, NETWORK_API);
        let Some(nic) = self.arm.get("read NIC", &url).await? else {
            return Ok(Vec::new());
        };
        let mut confs: Vec<&Value> = nic
            .pointer("/properties/ipConfigurations")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        confs.sort_by_key(|c| {
            !c.pointer("/properties/primary")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        });
        Ok(confs
            .iter()
            .filter_map(|c| c.pointer("/properties/privateIPAddress")?.as_str())
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// Deletes the VM `name`, then its NICs and OS disk (the ones the VM
    /// names, and the ones our naming gives, in case the VM is gone).
    async fn delete_all(&self, name: &str) -> Result<(), ProviderError> {
        let vm_url = self.arm.url(&self.vm_path(name), COMPUTE_API);
        let mut nics = vec![self.nic_path(name)];
        let mut disks = vec![self.disk_path(name)];
        if let Some(vm) = self.arm.get("read VM before delete", &vm_url).await? {
            for n in vm
                .pointer("/properties/networkProfile/networkInterfaces")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(id) = n.get("id").and_then(Value::as_str) {
                    if !nics.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                        nics.push(id.to_string());
                    }
                }
            }
            if let Some(id) = vm
                .pointer("/properties/storageProfile/osDisk/managedDisk/id")
                .and_then(Value::as_str)
            {
                if !disks.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                    disks.push(id.to_string());
                }
            }
            self.arm.delete_and_wait("delete VM", &vm_url).await?;
        }
        for n in &nics {
            self.arm
                .delete_and_wait("delete NIC", &self.arm.url(n, NETWORK_API))
                .await?;
        }
        for d in &disks {
            self.arm
                .delete_and_wait("delete OS disk", &self.arm.url(d, DISK_API))
                .await?;
        }
        Ok(())
    }

    /// Cleans up after a failed create; a failure here is logged (the
    /// orphan collector finds tagged VMs later), the create's error wins.
    async fn cleanup(&self, name: &str) {
        if let Err(e) = self.delete_all(name).await {
            tracing::warn!(vm = %name, error = %e, "cleaning up after a failed create failed");
        }
    }

    /// Our NICs (`<vm>-nic`, owner tags matching) whose VM does not exist:
    /// what a create abandoned between the NIC and the VM PUT leaves (the
    /// adaptor's provider timeout, a StopVM during StartVM). Each is
    /// reported as an instance of its VM name without addresses, so the
    /// orphan collector (and whoever lists) deletes it with the usual
    /// delete, which removes the VM's NIC and disk by name.
    async fn vmless_nics(
        &self,
        owner: &OwnerTags,
        vms: &[Instance],
    ) -> Result<Vec<Instance>, ProviderError> {
        let url = self.arm.url(
            &format!(
                "{}/providers/Microsoft.Network/networkInterfaces",
                self.rg_path()
            ),
            NETWORK_API,
        );
        let mut out = Vec::new();
        for nic in self.arm.list("list NICs", &url).await? {
            let tags = tag_map(&nic);
            if !owner.matches(&tags) {
                continue;
            }
            let Some(vm) = nic
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| n.strip_suffix("-nic"))
            else {
                continue;
            };
            if vms.iter().any(|i| i.name.eq_ignore_ascii_case(vm)) {
                continue;
            }
            out.push(Instance {
                id: vm.to_string(),
                name: vm.to_string(),
                ips: Vec::new(),
                tags,
                instance_type: None,
            });
        }
        Ok(out)
    }

    async fn create(
        &self,
        req: &InstanceRequest,
        sizes: &[String],
    ) -> Result<Instance, ProviderError> {
        let name = &req.name;
        let image = req
            .image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .unwrap_or_else(|| self.cfg.image_id.clone());
        let mut tags = self.cfg.tags.clone();
        tags.extend(req.all_tags());
        let nic_id = self.nic_path(name);
        let nic_url = self.arm.url(&nic_id, NETWORK_API);
        if let Err(e) = self
            .arm
            .put_and_wait("create NIC", &nic_url, &self.nic_body(&tags))
            .await
        {
            self.cleanup(name).await;
            return Err(e);
        }
        let user_data = base64::engine::general_purpose::STANDARD.encode(&req.user_data);
        let vm_url = self.arm.url(&self.vm_path(name), COMPUTE_API);
        let (image_ref, nic_ref, tags_ref, data_ref, vm_ref) =
            (&image, &nic_id, &tags, &user_data, &vm_url);
        let created = create_with_capacity_fallback(
            sizes,
            "VM sizes",
            move |size: String| async move {
                let body = self.vm_body(name, &size, image_ref, nic_ref, tags_ref, data_ref);
                self.arm.put_and_wait("create VM", vm_ref, &body).await
            },
            // A VM that failed to allocate may exist in state Failed: remove
            // it (and its disk) before the next size, keep the NIC.
            move |_| async move {
                if let Err(d) = self.arm.delete_and_wait("delete failed VM", vm_ref).await {
                    tracing::warn!(vm = %name, error = %d, "deleting the VM that failed to allocate failed");
                }
                let disk_url = self.arm.url(&self.disk_path(name), DISK_API);
                if let Err(d) = self.arm.delete_and_wait("delete OS disk", &disk_url).await {
                    tracing::warn!(vm = %name, error = %d, "deleting the disk of the VM that failed to allocate failed");
                }
            },
        )
        .await;
        let size = match created {
            Ok((size, _)) => size,
            Err(e) => {
                self.cleanup(name).await;
                return Err(e);
            }
        };
        tracing::info!(vm = %name, %size, image = %image, confidential = !self.cfg.disable_cvm, "Azure VM created");
        match self.nic_ips(&nic_id).await {
            Ok(ips) if !ips.is_empty() => Ok(Instance {
                id: name.clone(),
                name: name.clone(),
                ips,
                tags,
                instance_type: Some(size.to_string()),
            }),
            Ok(_) => {
                self.cleanup(name).await;
                Err(ProviderError::new(
                    ErrorKind::Transient,
                    format!("VM {name}: its NIC has no private IP"),
                ))
            }
            Err(e) => {
                self.cleanup(name).await;
                Err(e)
            }
        }
    }
}

fn tag_map(v: &Value) -> BTreeMap<String, String> {
    v.get("tags")
        .and_then(Value::as_object)
        .map(|m: &Map<String, Value>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The VM name of an instance id (a name, or a full ARM id).
fn vm_name(instance_id: &str) -> &str {
    instance_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(instance_id)
}

#[async_trait]
impl Provider for AzureProvider {
    fn name(&self) -> &str {
        "azure"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        let encoded = req.user_data.len().div_ceil(3) * 4;
        if encoded > MAX_USER_DATA_BASE64_BYTES {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "user data is {} bytes ({encoded} in base64); Azure user data takes at most \
                     {MAX_USER_DATA_BASE64_BYTES} bytes of base64 \
                     (large initdata or registry credentials?)",
                    req.user_data.len()
                ),
            ));
        }
        if req.name.is_empty() || req.name.len() > MAX_VM_NAME {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!("VM name {:?} must be 1–{MAX_VM_NAME} characters", req.name),
            ));
        }
        let sizes = self.choose_sizes(&req).await?;
        self.create(&req, &sizes).await
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        let name = vm_name(instance_id);
        check_instance_id(name)?;
        self.delete_all(name).await
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        let url = self.arm.url(
            &format!(
                "{}/providers/Microsoft.Compute/virtualMachines",
                self.rg_path()
            ),
            COMPUTE_API,
        );
        let mut out = Vec::new();
        for vm in self.arm.list("list VMs", &url).await? {
            let tags = tag_map(&vm);
            if !owner.matches(&tags) {
                continue;
            }
            let Some(name) = vm.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut ips = Vec::new();
            if let Some(nic) = vm
                .pointer("/properties/networkProfile/networkInterfaces/0/id")
                .and_then(Value::as_str)
            {
                ips = self.nic_ips(nic).await?;
            }
            out.push(Instance {
                id: name.to_string(),
                name: name.to_string(),
                ips,
                tags,
                instance_type: vm
                    .pointer("/properties/hardwareProfile/vmSize")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        out.extend(self.vmless_nics(owner, &out).await?);
        Ok(out)
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = Vec::new();
        let rg = self
            .arm
            .get(
                "read resource group (credentials and AZURE_RESOURCE_GROUP)",
                &self.arm.url(&self.rg_path(), RESOURCES_API),
            )
            .await?
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "AZURE_RESOURCE_GROUP {}: not found in subscription {}",
                        self.cfg.resource_group, self.cfg.subscription_id
                    ),
                )
                .with_code("ResourceGroupNotFound")
            })?;
        lines.push("credentials accepted by Azure Resource Manager".to_string());
        lines.push(format!(
            "resource group {} exists ({})",
            self.cfg.resource_group,
            rg.get("location").and_then(Value::as_str).unwrap_or("?")
        ));
        let subnet = self
            .arm
            .get(
                "read subnet (AZURE_SUBNET_ID)",
                &self.arm.url(&self.cfg.subnet_id, NETWORK_API),
            )
            .await?
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!("AZURE_SUBNET_ID {}: not found", self.cfg.subnet_id),
                )
            })?;
        lines.push(format!(
            "subnet {} exists ({})",
            self.cfg.subnet_id,
            subnet
                .pointer("/properties/addressPrefix")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ));
        if let Some(nsg) = &self.cfg.nsg_id {
            self.arm
                .get("read NSG (AZURE_NSG_ID)", &self.arm.url(nsg, NETWORK_API))
                .await?
                .ok_or_else(|| {
                    ProviderError::new(
                        ErrorKind::InvalidConfig,
                        format!("AZURE_NSG_ID {nsg}: not found"),
                    )
                })?;
            lines.push(format!("network security group {nsg} exists"));
        }
        let image = &self.cfg.image_id;
        let l = image.to_ascii_lowercase();
        let api = if l.contains("/galleries/") {
            Some(GALLERY_API)
        } else if l.contains("/providers/microsoft.compute/images/") {
            Some(COMPUTE_API)
        } else {
            None
        };
        match api {
            Some(api) => {
                self.arm
                    .get("read image (AZURE_IMAGE_ID)", &self.arm.url(image, api))
                    .await?
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorKind::InvalidConfig,
                            format!("AZURE_IMAGE_ID {image}: not found"),
                        )
                        .with_code("GalleryImageNotFound")
                    })?;
                lines.push(format!("image {image} exists"));
            }
            None => lines.push(format!(
                "image {image}: a community or shared gallery image, not checked"
            )),
        }
        if !self.cfg.instance_sizes.is_empty() {
            let sizes = self.sizes().await?;
            let missing: Vec<&str> = self
                .cfg
                .instance_sizes
                .iter()
                .filter(|s| !sizes.contains_key(*s))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "AZURE_INSTANCE_SIZES: not offered in {}: {}",
                        self.cfg.region,
                        missing.join(", ")
                    ),
                ));
            }
            lines.push(format!(
                "VM sizes {} offered in {}",
                self.cfg.instance_sizes.join(", "),
                self.cfg.region
            ));
        }
        lines.push(format!(
            "confidential VMs: {}",
            if self.cfg.disable_cvm {
                "off (DISABLECVM=true)"
            } else {
                "on (ConfidentialVM, VMGuestStateOnly)"
            }
        ));
        Ok(lines)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let name = vm_name(instance_id);
        if name.trim().is_empty() {
            return None;
        }
        let url = format!(
            "{}&sasUriExpirationTimeInMinutes=5",
            self.arm.url(
                &format!("{}/retrieveBootDiagnosticsData", self.vm_path(name)),
                COMPUTE_API
            )
        );
        let r = match self
            .arm
            .call(
                "retrieve boot diagnostics",
                reqwest::Method::POST,
                &url,
                None,
                &[],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(vm = %name, error = %e, "no boot diagnostics");
                return None;
            }
        };
        let blob = r.body.get("serialConsoleLogBlobUri")?.as_str()?.to_string();
        let raw = match self
            .arm
            .get_unauthenticated("read serial log", &blob, CONSOLE_MAX_BYTES)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(vm = %name, error = %e, "serial log unreadable");
                return None;
            }
        };
        let text = String::from_utf8_lossy(&raw);
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(CONSOLE_LINES)..].join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert_eq!(vm_name("podvm-web-12345678"), "podvm-web-12345678");
        assert_eq!(
            vm_name("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/podvm-a-1"),
            "podvm-a-1"
        );
        assert_eq!(vm_name("/"), "");
    }

    #[test]
    fn throwaway_key_is_an_ed25519_public_key() {
        let k = unusable_ssh_key();
        let mut parts = k.split(' ');
        assert_eq!(parts.next(), Some("ssh-ed25519"));
        let blob = base64::engine::general_purpose::STANDARD
            .decode(parts.next().unwrap())
            .unwrap();
        assert_eq!(blob.len(), 4 + 11 + 4 + 32);
        assert_ne!(k, unusable_ssh_key());
    }
}
