//! `Provider` on EC2: RunInstances with the chosen type, the pod VM image,
//! the user data, owner tags and SEV-SNP; TerminateInstances to delete;
//! DescribeInstances by owner tags to list. Throttling and passing
//! failures are retried by the SDK's standard retry mode (exponential
//! backoff with jitter, up to 6 attempts) before an error reaches us.

use crate::config::{AwsConfig, MAX_USER_DATA_BYTES};
use crate::errors::from_sdk;
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    AmdSevSnpSpecification, BlockDeviceMapping, CpuOptionsRequest, EbsBlockDevice, Filter,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType,
    LaunchTemplateSpecification, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine as _;
use peerpod_provider_api::sizing::{
    create_with_capacity_fallback, instance_type_candidates, Size, SizeRequest,
};
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of console output `console_tail` returns.
const CONSOLE_LINES: usize = 30;

/// See the module doc.
pub struct AwsProvider {
    client: Client,
    cfg: AwsConfig,
    /// Instance type sizes from DescribeInstanceTypes (they never change).
    sizes: Mutex<HashMap<String, Size>>,
}

impl AwsProvider {
    /// Loads credentials and region from the SDK's standard chain.
    pub async fn new(cfg: AwsConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(6));
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &cfg.endpoint {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        Self::with_sdk_config(cfg, &sdk)
    }

    /// With an SDK configuration made elsewhere (tests: static
    /// credentials, a local endpoint).
    pub fn with_sdk_config(cfg: AwsConfig, sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::new(sdk),
            cfg,
            sizes: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &AwsConfig {
        &self.cfg
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sizes of the allowed types, asked once.
    async fn sizes(&self) -> Result<HashMap<String, Size>, ProviderError> {
        let missing: Vec<String> = {
            let have = self.sizes.lock().map(|m| m.clone()).unwrap_or_default();
            self.cfg
                .instance_types
                .iter()
                .filter(|t| !have.contains_key(*t))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let out = self
                .client
                .describe_instance_types()
                .set_instance_types(Some(
                    missing
                        .iter()
                        .map(|t| InstanceType::from(t.as_str()))
                        .collect(),
                ))
                .send()
                .await
                .map_err(|e| from_sdk("DescribeInstanceTypes", e))?;
            if let Ok(mut m) = self.sizes.lock() {
                for it in out.instance_types() {
                    let (Some(t), Some(cpu), Some(mem)) = (
                        it.instance_type(),
                        it.v_cpu_info().and_then(|v| v.default_v_cpus()),
                        it.memory_info().and_then(|m| m.size_in_mib()),
                    ) else {
                        continue;
                    };
                    m.insert(
                        t.as_str().to_string(),
                        Size {
                            vcpus: cpu.max(0) as u32,
                            memory_mib: mem.max(0) as u64,
                        },
                    );
                }
            }
        }
        Ok(self.sizes.lock().map(|m| m.clone()).unwrap_or_default())
    }

    /// The instance types to try, best first (see
    /// [`instance_type_candidates`]).
    async fn choose_types(&self, req: &InstanceRequest) -> Result<Vec<String>, ProviderError> {
        let sizes = if (req.vcpus.is_some() || req.memory_mib.is_some())
            && req.machine_type.is_none()
            && !self.cfg.instance_types.is_empty()
        {
            self.sizes().await?
        } else {
            HashMap::new()
        };
        instance_type_candidates(
            &SizeRequest {
                machine_type: req.machine_type.as_deref(),
                gpus: req.gpus,
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                allowed: &self.cfg.instance_types,
                default: &self.cfg.instance_type,
                allowed_key: "PODVM_INSTANCE_TYPES",
            },
            |t| sizes.get(t).copied(),
        )
    }

    /// The root device name of an image (for ROOT_VOLUME_SIZE).
    async fn root_device(&self, image: &str) -> Result<String, ProviderError> {
        let out = self
            .client
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeImages", e))?;
        out.images()
            .first()
            .and_then(|i| i.root_device_name())
            .map(String::from)
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!("image {image}: no root device"),
                )
            })
    }

    /// Waits for the instance's address; the instance dying first is an
    /// error carrying its state reason.
    async fn wait_for_ip(&self, id: &str) -> Result<Instance, ProviderError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let out = self
                .client
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeInstances", e))?;
            if let Some(i) = out.reservations().iter().flat_map(|r| r.instances()).next() {
                let state = i.state().and_then(|s| s.name()).cloned();
                if matches!(
                    state,
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                ) {
                    let why = i
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given");
                    return Err(ProviderError::new(
                        ErrorKind::Transient,
                        format!("instance {id} was terminated before it had an address: {why}"),
                    ));
                }
                let inst = to_instance(i, self.cfg.use_public_ip);
                if !inst.ips.is_empty() {
                    return Ok(inst);
                }
            }
            if started.elapsed() >= self.cfg.ip_wait {
                return Err(ProviderError::new(
                    ErrorKind::Transient,
                    format!(
                        "instance {id} had no {} address after {:?}",
                        if self.cfg.use_public_ip {
                            "public"
                        } else {
                            "private"
                        },
                        self.cfg.ip_wait
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    /// The RunInstances call for one instance type.
    fn run_request(
        &self,
        image: &str,
        instance_type: &str,
        tags: &BTreeMap<String, String>,
        user_data_b64: &str,
        root_device: Option<&str>,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        let tag_list: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let specs = [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|r| {
                TagSpecification::builder()
                    .resource_type(r)
                    .set_tags(Some(tag_list.clone()))
                    .build()
            })
            .collect();
        let mut run = self
            .client
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .user_data(user_data_b64)
            .set_tag_specifications(Some(specs))
            .set_key_name(self.cfg.key_name.clone());
        if let Some(lt) = &self.cfg.launch_template {
            run = run.launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name(lt)
                    .build(),
            );
        } else if self.cfg.use_public_ip {
            run = run.network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .set_subnet_id(self.cfg.subnet_id.clone())
                    .set_groups(Some(self.cfg.security_group_ids.clone()).filter(|g| !g.is_empty()))
                    .build(),
            );
        } else {
            run = run
                .set_subnet_id(self.cfg.subnet_id.clone())
                .set_security_group_ids(
                    Some(self.cfg.security_group_ids.clone()).filter(|g| !g.is_empty()),
                );
        }
        if !self.cfg.disable_cvm {
            run = run.cpu_options(
                CpuOptionsRequest::builder()
                    .amd_sev_snp(AmdSevSnpSpecification::Enabled)
                    .build(),
            );
        }
        if let (Some(gib), Some(device)) = (self.cfg.root_volume_gib, root_device) {
            run = run.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(gib)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        run
    }
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

fn to_instance(i: &aws_sdk_ec2::types::Instance, public: bool) -> Instance {
    let tags = tag_map(i.tags());
    let addr = if public {
        i.public_ip_address()
    } else {
        i.private_ip_address()
    };
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        name: tags.get("Name").cloned().unwrap_or_default(),
        ips: addr
            .and_then(|a| a.parse::<IpAddr>().ok())
            .into_iter()
            .collect(),
        tags,
        instance_type: i.instance_type().map(|t| t.as_str().to_string()),
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        if req.user_data.len() > MAX_USER_DATA_BYTES {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "user data is {} bytes; EC2 accepts at most {MAX_USER_DATA_BYTES} \
                     (large initdata or registry credentials?)",
                    req.user_data.len()
                ),
            ));
        }
        let candidates = self.choose_types(&req).await?;
        let image = req.image.clone().unwrap_or_else(|| self.cfg.ami_id.clone());
        let mut tags = self.cfg.tags.clone();
        tags.extend(req.all_tags());
        tags.insert("Name".into(), req.name.clone());
        let root_device = match self.cfg.root_volume_gib {
            Some(_) => Some(self.root_device(&image).await?),
            None => None,
        };
        let user_data = base64::engine::general_purpose::STANDARD.encode(&req.user_data);
        // On "no capacity for this type here", the next larger allowed type
        // that fits is tried before giving up (nothing was created).
        let (image_ref, tags_ref, user_data_ref) = (&image, &tags, &user_data);
        let root_device = root_device.as_deref();
        let (instance_type, id) = create_with_capacity_fallback(
            &candidates,
            "instance types",
            move |instance_type: String| async move {
                let out = self
                    .run_request(
                        image_ref,
                        &instance_type,
                        tags_ref,
                        user_data_ref,
                        root_device,
                    )
                    .send()
                    .await
                    .map_err(|e| from_sdk("RunInstances", e))?;
                out.instances()
                    .first()
                    .and_then(|i| i.instance_id())
                    .map(String::from)
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorKind::Permanent,
                            "RunInstances returned no instance id",
                        )
                    })
            },
            |_| async {},
        )
        .await?;
        tracing::info!(instance_id = %id, name = %req.name, %instance_type, image = %image, sev_snp = !self.cfg.disable_cvm, "EC2 instance launched");
        match self.wait_for_ip(&id).await {
            Ok(i) => Ok(i),
            Err(e) => {
                if let Err(d) = self.delete_instance(&id).await {
                    tracing::warn!(instance_id = %id, error = %d, "terminating the instance that never got an address failed");
                }
                Err(e)
            }
        }
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        match self
            .client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = from_sdk("TerminateInstances", e);
                if e.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// CreateTags adds or overwrites tags and keeps the others; the
    /// `Name` tag is how EC2 names an instance, so a bound pool VM carries
    /// the sandbox's `podvm-<pod>-<id>` name like a VM made for it.
    async fn retag(
        &self,
        instance_id: &str,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        check_instance_id(instance_id)?;
        let mut list: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        list.push(Tag::builder().key("Name").value(name).build());
        self.client
            .create_tags()
            .resources(instance_id)
            .set_tags(Some(list))
            .send()
            .await
            .map_err(|e| from_sdk("CreateTags", e))?;
        Ok(true)
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        let mut filters: Vec<Filter> = owner
            .to_map()
            .into_iter()
            .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
            .collect();
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        );
        let mut pages = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| from_sdk("DescribeInstances", e))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let inst = to_instance(i, self.cfg.use_public_ip);
                // Filters are the cloud's; check the tags ourselves too.
                if owner.matches(&inst.tags) {
                    out.push(inst);
                }
            }
        }
        Ok(out)
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        let mut lines = Vec::new();
        let img = self
            .client
            .describe_images()
            .image_ids(&self.cfg.ami_id)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeImages (credentials and PODVM_AMI_ID)", e))?;
        let Some(i) = img.images().first() else {
            return Err(ProviderError::new(
                ErrorKind::InvalidConfig,
                format!(
                    "PODVM_AMI_ID {}: no such image visible to these credentials",
                    self.cfg.ami_id
                ),
            )
            .with_code("InvalidAMIID.NotFound"));
        };
        lines.push("credentials accepted by EC2".to_string());
        lines.push(format!(
            "image {} ({}) exists",
            self.cfg.ami_id,
            i.name().unwrap_or("unnamed")
        ));
        if let Some(s) = &self.cfg.subnet_id {
            let out = self
                .client
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeSubnets (AWS_SUBNET_ID)", e))?;
            let sub = out.subnets().first().ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::InvalidConfig,
                    format!("AWS_SUBNET_ID {s}: not found"),
                )
            })?;
            lines.push(format!(
                "subnet {s} exists (VPC {}, {})",
                sub.vpc_id().unwrap_or("?"),
                sub.availability_zone().unwrap_or("?")
            ));
        }
        if !self.cfg.security_group_ids.is_empty() {
            let out = self
                .client
                .describe_security_groups()
                .set_group_ids(Some(self.cfg.security_group_ids.clone()))
                .send()
                .await
                .map_err(|e| from_sdk("DescribeSecurityGroups (AWS_SG_IDS)", e))?;
            let found: Vec<&str> = out
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id())
                .collect();
            for g in &self.cfg.security_group_ids {
                if !found.contains(&g.as_str()) {
                    return Err(ProviderError::new(
                        ErrorKind::InvalidConfig,
                        format!("AWS_SG_IDS: security group {g} not found"),
                    ));
                }
            }
            lines.push(format!(
                "security groups {} exist",
                self.cfg.security_group_ids.join(", ")
            ));
        }
        Ok(lines)
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let out = self
            .client
            .get_console_output()
            .instance_id(instance_id)
            .latest(true)
            .send()
            .await
            .ok()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out.output()?.trim())
            .ok()?;
        let text = String::from_utf8_lossy(&raw);
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(CONSOLE_LINES)..].join("\n"))
    }
}
