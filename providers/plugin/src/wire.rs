//! Conversions between the provider API types (`providers/api`) and the
//! plugin protocol's messages (`peerpod.provider.v1`), both directions:
//! the adaptor's client and the server helper use the same code, so the
//! two ends cannot disagree on a field. Reading a message from the other
//! side checks what the types cannot (an address that is not an IP, an
//! error kind this build does not know).

use peerpod_protocols::provider_v1 as pb;
use peerpod_provider_api::{ErrorKind, Instance, InstanceRequest, OwnerTags, ProviderError};
use std::net::IpAddr;

/// The wire value of an error kind.
pub fn kind_to_pb(k: ErrorKind) -> pb::ErrorKind {
    match k {
        ErrorKind::Throttled => pb::ErrorKind::Throttled,
        ErrorKind::QuotaExceeded => pb::ErrorKind::QuotaExceeded,
        ErrorKind::InsufficientCapacity => pb::ErrorKind::InsufficientCapacity,
        ErrorKind::NotFound => pb::ErrorKind::NotFound,
        ErrorKind::InvalidConfig => pb::ErrorKind::InvalidConfig,
        ErrorKind::InvalidRequest => pb::ErrorKind::InvalidRequest,
        ErrorKind::PermissionDenied => pb::ErrorKind::PermissionDenied,
        ErrorKind::Transient => pb::ErrorKind::Transient,
        ErrorKind::Permanent => pb::ErrorKind::Permanent,
    }
}

/// The error kind of a wire value. Unspecified, and values a newer
/// plugin may send that this build does not know, read as `Permanent`
/// (never retried: the safe reading of an unknown failure).
pub fn kind_from_pb(v: i32) -> ErrorKind {
    match pb::ErrorKind::try_from(v).unwrap_or(pb::ErrorKind::Unspecified) {
        pb::ErrorKind::Throttled => ErrorKind::Throttled,
        pb::ErrorKind::QuotaExceeded => ErrorKind::QuotaExceeded,
        pb::ErrorKind::InsufficientCapacity => ErrorKind::InsufficientCapacity,
        pb::ErrorKind::NotFound => ErrorKind::NotFound,
        pb::ErrorKind::InvalidConfig => ErrorKind::InvalidConfig,
        pb::ErrorKind::InvalidRequest => ErrorKind::InvalidRequest,
        pb::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        pb::ErrorKind::Transient => ErrorKind::Transient,
        pb::ErrorKind::Permanent | pb::ErrorKind::Unspecified => ErrorKind::Permanent,
    }
}

pub fn error_to_pb(e: &ProviderError) -> pb::ProviderError {
    pb::ProviderError {
        kind: kind_to_pb(e.kind) as i32,
        code: e.code.clone(),
        message: e.message.clone(),
    }
}

/// A plugin's error as the adaptor sees it; the cloud's code and message
/// are kept unchanged (the caller adds which plugin said it).
pub fn error_from_pb(e: pb::ProviderError) -> ProviderError {
    let mut out = ProviderError::new(kind_from_pb(e.kind), e.message);
    out.code = e.code;
    out
}

pub fn owner_to_pb(o: &OwnerTags) -> pb::OwnerTags {
    pb::OwnerTags {
        cluster: o.cluster.clone(),
        node: o.node.clone(),
        sandbox_id: o.sandbox_id.clone(),
    }
}

pub fn owner_from_pb(o: Option<pb::OwnerTags>) -> OwnerTags {
    let o = o.unwrap_or_default();
    OwnerTags {
        cluster: o.cluster,
        node: o.node,
        sandbox_id: o.sandbox_id,
    }
}

pub fn request_to_pb(r: InstanceRequest) -> pb::InstanceRequest {
    pb::InstanceRequest {
        name: r.name,
        owner: Some(owner_to_pb(&r.owner)),
        extra_tags: r.extra_tags,
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        image: r.image,
        machine_type: r.machine_type,
        user_data: r.user_data,
        gpus: r.gpus,
        gpu_model: r.gpu_model,
    }
}

/// The request a plugin received; `None` when the message carried none.
pub fn request_from_pb(r: Option<pb::InstanceRequest>) -> Result<InstanceRequest, ProviderError> {
    let r = r.ok_or_else(|| {
        ProviderError::new(
            ErrorKind::InvalidRequest,
            "CreateInstance without a request",
        )
    })?;
    Ok(InstanceRequest {
        name: r.name,
        owner: owner_from_pb(r.owner),
        extra_tags: r.extra_tags,
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        image: r.image,
        machine_type: r.machine_type,
        user_data: r.user_data,
        gpus: r.gpus,
        gpu_model: r.gpu_model,
    })
}

pub fn instance_to_pb(i: Instance) -> pb::Instance {
    pb::Instance {
        id: i.id,
        name: i.name,
        ips: i.ips.iter().map(IpAddr::to_string).collect(),
        tags: i.tags,
        instance_type: i.instance_type,
    }
}

/// An instance a plugin reported. An empty id or an address that is not
/// an IP is the plugin's bug: refused with a message naming the instance
/// and the value, never passed on.
pub fn instance_from_pb(i: pb::Instance) -> Result<Instance, ProviderError> {
    if i.id.trim().is_empty() {
        return Err(ProviderError::new(
            ErrorKind::Permanent,
            format!("the plugin reported instance {:?} without an id", i.name),
        )
        .with_code("PluginBadReply"));
    }
    let mut ips = Vec::with_capacity(i.ips.len());
    for a in &i.ips {
        let ip: IpAddr = a.trim().parse().map_err(|_| {
            ProviderError::new(
                ErrorKind::Permanent,
                format!(
                    "the plugin reported instance {} with address {a:?}, which is not an IP address",
                    i.id
                ),
            )
            .with_code("PluginBadReply")
        })?;
        ips.push(ip);
    }
    Ok(Instance {
        id: i.id,
        name: i.name,
        ips,
        tags: i.tags,
        instance_type: i.instance_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const KINDS: [ErrorKind; 9] = [
        ErrorKind::Throttled,
        ErrorKind::QuotaExceeded,
        ErrorKind::InsufficientCapacity,
        ErrorKind::NotFound,
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidRequest,
        ErrorKind::PermissionDenied,
        ErrorKind::Transient,
        ErrorKind::Permanent,
    ];

    #[test]
    fn every_error_kind_survives_the_wire_with_code_and_message() {
        for k in KINDS {
            let e = ProviderError::new(k, format!("cloud said {}", k.as_str())).with_code("C-1");
            let back = error_from_pb(error_to_pb(&e));
            assert_eq!(back, e);
            assert_eq!(back.retryable(), k.retryable());
        }
        // Unknown and unspecified kinds are never retried.
        assert_eq!(kind_from_pb(0), ErrorKind::Permanent);
        assert_eq!(kind_from_pb(99), ErrorKind::Permanent);
        let e = error_from_pb(pb::ProviderError {
            kind: 3,
            code: None,
            message: "m".into(),
        });
        assert_eq!(e.kind, ErrorKind::InsufficientCapacity);
        assert_eq!(e.code, None);
    }

    #[test]
    fn requests_and_instances_round_trip() {
        let mut extra = BTreeMap::new();
        extra.insert("team".to_string(), "a".to_string());
        let req = InstanceRequest {
            name: "podvm-web-12345678".into(),
            owner: OwnerTags {
                cluster: "c1".into(),
                node: "n1".into(),
                sandbox_id: "12345678abc".into(),
            },
            extra_tags: extra.clone(),
            vcpus: Some(2),
            memory_mib: Some(4096),
            image: Some("img".into()),
            machine_type: None,
            gpus: Some(1),
            gpu_model: Some("nvidia-h100".into()),
            user_data: b"#cloud-config\n".to_vec(),
        };
        assert_eq!(
            request_from_pb(Some(request_to_pb(req.clone()))).unwrap(),
            req
        );
        assert_eq!(
            request_from_pb(None).unwrap_err().kind,
            ErrorKind::InvalidRequest
        );

        let inst = Instance {
            id: "i-1".into(),
            name: "podvm-web-12345678".into(),
            ips: vec!["10.0.0.4".parse().unwrap(), "fd00::4".parse().unwrap()],
            tags: extra,
            instance_type: Some("m6a.large".into()),
        };
        assert_eq!(
            instance_from_pb(instance_to_pb(inst.clone())).unwrap(),
            inst
        );
    }

    #[test]
    fn bad_instances_from_a_plugin_are_named() {
        let mut bad = instance_to_pb(Instance {
            id: "i-9".into(),
            name: "n".into(),
            ips: vec![],
            tags: BTreeMap::new(),
            instance_type: None,
        });
        bad.ips.push("10.0.0.300".into());
        let e = instance_from_pb(bad.clone()).unwrap_err();
        assert!(
            e.message.contains("i-9") && e.message.contains("10.0.0.300"),
            "{e}"
        );
        bad.ips.clear();
        bad.id = " ".into();
        let e = instance_from_pb(bad).unwrap_err();
        assert!(e.message.contains("without an id"), "{e}");
    }
}
