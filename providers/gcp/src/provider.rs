//! `Provider` on Compute Engine: `instances.insert` of a confidential
//! instance (SEV, SEV-SNP or TDX, `onHostMaintenance=TERMINATE` as
//! confidential VMs require) with the user data as the `user-data`
//! metadata entry and the owner tags as labels, waited on through its zone
//! operation; `instances.delete` to delete (the boot disk goes with it);
//! `instances.list` filtered by the node label to list.
//!
//! GCE labels are lowercase and at most 63 characters, and containerd's
//! sandbox ids are 64: labels carry a cut form for filtering, and the exact
//! owner tags travel in the `peerpod-owner` metadata entry, which is what
//! [`Instance::tags`] and ownership checks read.

use crate::config::{ConfidentialType, GcpConfig, MAX_USER_DATA_BYTES};
use crate::errors::{from_gax, from_operation};
use async_trait::async_trait;
use google_cloud_compute_v1::client::{Images, Instances, MachineTypes};
use google_cloud_compute_v1::model::{
    confidential_instance_config::ConfidentialInstanceType, metadata::Items,
    scheduling::OnHostMaintenance, AccessConfig, AttachedDisk, AttachedDiskInitializeParams,
    ConfidentialInstanceConfig, Instance as GceInstance, Metadata, NetworkInterface, Scheduling,
};
use google_cloud_gax::paginator::Paginator as _;
use google_cloud_lro::Poller as _;
use peerpod_provider_api::sizing::{
    create_with_capacity_fallback, instance_type_candidates, Size, SizeRequest,
};
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
    TAG_CLUSTER, TAG_NODE,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Metadata entry with the exact owner tags (JSON object).
pub const OWNER_METADATA_KEY: &str = "peerpod-owner";
/// Metadata entry the pod VM's user-data step reads.
pub const USER_DATA_KEY: &str = "user-data";
/// Lines of serial console output `console_tail` returns.
const CONSOLE_LINES: usize = 30;

/// How the clients are made: credentials and the operation polling pace.
#[derive(Default)]
pub struct ClientOptions {
    /// Credentials to use instead of `GCP_CREDENTIALS` / the application
    /// default credentials (tests: anonymous).
    pub credentials: Option<google_cloud_auth::credentials::Credentials>,
    /// First and longest pause between zone operation polls.
    pub poll_backoff: Option<(Duration, Duration)>,
}

/// See the module doc.
pub struct GcpProvider {
    instances: Instances,
    machine_types: MachineTypes,
    images: Images,
    cfg: GcpConfig,
    /// Machine type sizes (they never change).
    sizes: Mutex<HashMap<String, Size>>,
}

/// A label value GCE accepts: lowercase, other characters as `_`, cut to 63.
pub fn label_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

fn config_error(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::new(ErrorKind::InvalidConfig, format!("{what}: {e}"))
}

impl GcpProvider {
    /// Makes the Compute clients: the endpoint override, then the
    /// credentials given, `GCP_CREDENTIALS`, or the application default
    /// credentials (workload identity on GKE).
    pub async fn new(cfg: GcpConfig, opts: ClientOptions) -> Result<Self, ProviderError> {
        let creds = match (opts.credentials, &cfg.credentials_json) {
            (Some(c), _) => Some(c),
            (None, Some(json)) => {
                let v: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| config_error("GCP_CREDENTIALS is not JSON", e))?;
                Some(
                    google_cloud_auth::credentials::service_account::Builder::new(v)
                        .build()
                        .map_err(|e| config_error("GCP_CREDENTIALS", e))?,
                )
            }
            (None, None) => None,
        };
        macro_rules! client {
            ($t:ty) => {{
                let mut b = <$t>::builder();
                if let Some(e) = &cfg.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(c) = &creds {
                    b = b.with_credentials(c.clone());
                }
                if let Some((first, max)) = opts.poll_backoff {
                    let backoff =
                        google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder::new()
                            .with_initial_delay(first)
                            .with_maximum_delay(max)
                            .build()
                            .map_err(|e| config_error("operation polling backoff", e))?;
                    b = b.with_polling_backoff_policy(backoff);
                }
                b.build()
                    .await
                    .map_err(|e| config_error("making the Compute client", e))?
            }};
        }
        Ok(Self {
            instances: client!(Instances),
            machine_types: client!(MachineTypes),
            images: client!(Images),
            cfg,
            sizes: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &GcpConfig {
        &self.cfg
    }

    async fn size_of(&self, machine_type: &str) -> Result<Size, ProviderError> {
        if let Some(s) = self
            .sizes
            .lock()
            .ok()
            .and_then(|m| m.get(machine_type).copied())
        {
            return Ok(s);
        }
        self.fetch_size(machine_type).await
    }

    /// Asks GCE for a machine type's size (and caches it).
    async fn fetch_size(&self, machine_type: &str) -> Result<Size, ProviderError> {
        let mt = self
            .machine_types
            .get()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_machine_type(machine_type)
            .send()
            .await
            .map_err(|e| from_gax(&format!("machineTypes.get {machine_type}"), &e))?;
        let size = Size {
            vcpus: mt.guest_cpus.unwrap_or(0).max(0) as u32,
            memory_mib: mt.memory_mb.unwrap_or(0).max(0) as u64,
        };
        if let Ok(mut m) = self.sizes.lock() {
            m.insert(machine_type.to_string(), size);
        }
        Ok(size)
    }

    /// The machine types to try, best first.
    async fn choose_types(&self, req: &InstanceRequest) -> Result<Vec<String>, ProviderError> {
        let mut sizes = HashMap::new();
        if (req.vcpus.is_some() || req.memory_mib.is_some()) && req.machine_type.is_none() {
            for t in &self.cfg.machine_types {
                sizes.insert(t.clone(), self.size_of(t).await?);
            }
        }
        instance_type_candidates(
            &SizeRequest {
                machine_type: req.machine_type.as_deref(),
                gpus: req.gpus,
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                allowed: &self.cfg.machine_types,
                default: &self.cfg.machine_type,
                allowed_key: "GCP_MACHINE_TYPES",
            },
            |t| sizes.get(t).copied(),
        )
    }

    fn image_path(&self, image: &str) -> String {
        if image.contains('/') {
            image.to_string()
        } else {
            format!("projects/{}/global/images/{image}", self.cfg.project)
        }
    }

    /// The instance resource asked for.
    fn instance_body(
        &self,
        req: &InstanceRequest,
        machine_type: &str,
    ) -> Result<GceInstance, ProviderError> {
        let owner = serde_json::to_string(&req.all_tags())
            .map_err(|e| ProviderError::new(ErrorKind::Permanent, format!("owner tags: {e}")))?;
        let mut labels: HashMap<String, String> = self
            .cfg
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in req.all_tags() {
            labels.insert(label_value(&k), label_value(&v));
        }
        let network = if self.cfg.network.contains('/') {
            self.cfg.network.clone()
        } else {
            format!("global/networks/{}", self.cfg.network)
        };
        let mut nic = NetworkInterface::new().set_network(network);
        if let Some(s) = &self.cfg.subnetwork {
            nic = nic.set_subnetwork(s.clone());
        }
        if self.cfg.use_public_ip {
            nic = nic.set_access_configs([AccessConfig::new()
                .set_name("external-nat")
                .set_type(google_cloud_compute_v1::model::access_config::Type::OneToOneNat)]);
        }
        let mut init = AttachedDiskInitializeParams::new()
            .set_source_image(self.image_path(req.image.as_deref().unwrap_or(&self.cfg.image)))
            .set_disk_type(format!(
                "zones/{}/diskTypes/{}",
                self.cfg.zone, self.cfg.disk_type
            ));
        if let Some(gib) = self.cfg.disk_size_gib {
            init = init.set_disk_size_gb(gib);
        }
        let disk = AttachedDisk::new()
            .set_boot(true)
            .set_auto_delete(true)
            .set_initialize_params(init);
        let user_data = String::from_utf8_lossy(&req.user_data).into_owned();
        let mut body = GceInstance::new()
            .set_name(req.name.clone())
            .set_machine_type(format!(
                "zones/{}/machineTypes/{machine_type}",
                self.cfg.zone
            ))
            .set_disks([disk])
            .set_network_interfaces([nic])
            .set_labels(labels)
            .set_metadata(Metadata::new().set_items([
                Items::new().set_key(USER_DATA_KEY).set_value(user_data),
                Items::new().set_key(OWNER_METADATA_KEY).set_value(owner),
            ]));
        if let Some(t) = self.cfg.confidential {
            body = body
                .set_confidential_instance_config(
                    ConfidentialInstanceConfig::new().set_confidential_instance_type(match t {
                        ConfidentialType::Sev => ConfidentialInstanceType::Sev,
                        ConfidentialType::SevSnp => ConfidentialInstanceType::SevSnp,
                        ConfidentialType::Tdx => ConfidentialInstanceType::Tdx,
                    }),
                )
                // Confidential VMs cannot live-migrate.
                .set_scheduling(
                    Scheduling::new().set_on_host_maintenance(OnHostMaintenance::Terminate),
                );
            if t == ConfidentialType::SevSnp {
                body = body.set_min_cpu_platform("AMD Milan");
            }
        }
        Ok(body)
    }

    /// Inserts and waits for the zone operation.
    async fn insert(&self, body: GceInstance) -> Result<(), ProviderError> {
        let op = self
            .instances
            .insert()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_body(body)
            .poller()
            .until_done()
            .await
            .map_err(|e| from_gax("instances.insert", &e))?;
        match from_operation("instances.insert", &op) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn get(&self, name: &str) -> Result<GceInstance, ProviderError> {
        self.instances
            .get()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_instance(name)
            .send()
            .await
            .map_err(|e| from_gax("instances.get", &e))
    }

    fn to_instance(&self, i: &GceInstance) -> Instance {
        let mut tags: BTreeMap<String, String> = i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The exact owner tags win over their cut label forms.
        let owner = i
            .metadata
            .as_ref()
            .into_iter()
            .flat_map(|m| m.items.iter())
            .find(|it| it.key.as_deref() == Some(OWNER_METADATA_KEY))
            .and_then(|it| it.value.as_deref())
            .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok());
        if let Some(o) = owner {
            tags.extend(o);
        }
        let nic = i.network_interfaces.first();
        let addr = if self.cfg.use_public_ip {
            nic.and_then(|n| n.access_configs.first())
                .and_then(|a| a.nat_ip.as_deref())
        } else {
            nic.and_then(|n| n.network_ip.as_deref())
        };
        Instance {
            id: i.name.clone().unwrap_or_default(),
            name: i.name.clone().unwrap_or_default(),
            ips: addr
                .and_then(|a| a.parse::<IpAddr>().ok())
                .into_iter()
                .collect(),
            tags,
            // The machine type is a URL: …/zones/Z/machineTypes/n2d-standard-2.
            instance_type: i
                .machine_type
                .as_deref()
                .and_then(|t| t.rsplit('/').next())
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        }
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn name(&self) -> &str {
        "gcp"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        check_instance_id(&req.name)?;
        if req.user_data.len() > MAX_USER_DATA_BYTES {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "user data is {} bytes; a GCE metadata value holds at most {MAX_USER_DATA_BYTES}",
                    req.user_data.len()
                ),
            ));
        }
        let candidates = self.choose_types(&req).await?;
        let req_ref = &req;
        let (machine_type, ()) = create_with_capacity_fallback(
            &candidates,
            "machine types",
            move |machine_type: String| async move {
                let result = self
                    .insert(self.instance_body(req_ref, &machine_type)?)
                    .await;
                if result.is_err() {
                    // A failed insert operation may leave the instance record behind.
                    if let Err(d) = self.delete_instance(&req_ref.name).await {
                        tracing::warn!(instance = %req_ref.name, error = %d, "removing the instance of a failed insert failed");
                    }
                }
                result
            },
            |_| async {},
        )
        .await?;
        tracing::info!(instance = %req.name, %machine_type, confidential = ?self.cfg.confidential.map(ConfidentialType::as_str), "GCE instance created");
        let inst = match self.get(&req.name).await {
            Ok(i) => self.to_instance(&i),
            Err(e) => {
                let _ = self.delete_instance(&req.name).await;
                return Err(e);
            }
        };
        if inst.ips.is_empty() {
            let _ = self.delete_instance(&req.name).await;
            return Err(ProviderError::new(
                ErrorKind::Transient,
                format!(
                    "instance {} has no {} address",
                    req.name,
                    if self.cfg.use_public_ip {
                        "external"
                    } else {
                        "internal"
                    }
                ),
            ));
        }
        Ok(inst)
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        let op = self
            .instances
            .delete()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_instance(instance_id)
            .poller()
            .until_done()
            .await;
        let result = match op {
            Ok(op) => from_operation("instances.delete", &op).map_or(Ok(()), Err),
            Err(e) => Err(from_gax("instances.delete", &e)),
        };
        match result {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        // One label narrows the list on the server (the node's, or for a
        // cluster-wide filter the cluster's); the exact tags are checked below.
        let (key, value) = if owner.node.is_empty() {
            (TAG_CLUSTER, &owner.cluster)
        } else {
            (TAG_NODE, &owner.node)
        };
        let filter = format!("labels.{} = \"{}\"", label_value(key), label_value(value));
        let mut pages = self
            .instances
            .list()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_filter(filter)
            .by_page();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| from_gax("instances.list", &e))?;
            for i in &page.items {
                let inst = self.to_instance(i);
                // The label is a cut form: check the exact tags.
                if owner.matches(&inst.tags) {
                    out.push(inst);
                }
            }
        }
        Ok(out)
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = Vec::new();
        // Asked, not cached: this is the credentials check.
        let size = self
            .fetch_size(&self.cfg.machine_type)
            .await
            .map_err(|mut e| {
                e.message = format!(
                    "(credentials, GCP_PROJECT_ID, GCP_ZONE, GCP_MACHINE_TYPE) {}",
                    e.message
                );
                e
            })?;
        lines.push(format!(
            "credentials accepted; project {} zone {} has machine type {} ({} vCPUs, {} MiB)",
            self.cfg.project, self.cfg.zone, self.cfg.machine_type, size.vcpus, size.memory_mib
        ));
        for t in &self.cfg.machine_types {
            self.size_of(t).await?;
        }
        if !self.cfg.machine_types.is_empty() {
            lines.push(format!(
                "machine types {} exist",
                self.cfg.machine_types.join(", ")
            ));
        }
        let path = self.image_path(&self.cfg.image);
        let parts: Vec<&str> = path.split('/').collect();
        if let ["projects", project, "global", "images", name] = parts.as_slice() {
            let img = self
                .images
                .get()
                .set_project(*project)
                .set_image(*name)
                .send()
                .await
                .map_err(|e| from_gax(&format!("PODVM_IMAGE_NAME {path}"), &e))?;
            lines.push(format!(
                "image {path} exists (status {})",
                img.status
                    .as_ref()
                    .map(|s| s.name().unwrap_or("?"))
                    .unwrap_or("?")
            ));
        } else {
            lines.push(format!(
                "image {path}: not a projects/P/global/images/I path, not checked"
            ));
        }
        Ok(lines)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let out = self
            .instances
            .get_serial_port_output()
            .set_project(&self.cfg.project)
            .set_zone(&self.cfg.zone)
            .set_instance(instance_id)
            .send()
            .await
            .ok()?;
        let text = out.contents?;
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(CONSOLE_LINES)..].join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_what_gce_accepts() {
        assert_eq!(
            label_value("ip-10-0-0-1.EC2.internal"),
            "ip-10-0-0-1_ec2_internal"
        );
        let long = "a".repeat(64);
        assert_eq!(label_value(&long).len(), 63);
    }
}
