//! Instance-type choice shared by the cloud providers: the pod's
//! `machine_type` annotation if the operator allows it, else the smallest
//! allowed type that fits the pod's vCPU and memory requests, else the
//! configured default. One function, so AWS, Azure and GCP agree.

use crate::error::{ErrorKind, ProviderError};

/// The size of an instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// What the pod asked for and what the operator allows.
#[derive(Debug, Clone, Copy)]
pub struct SizeRequest<'a> {
    /// The `…hypervisor.machine_type` annotation.
    pub machine_type: Option<&'a str>,
    /// The `…hypervisor.default_gpus` annotation.
    pub gpus: Option<u32>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// The allowed list (`PODVM_INSTANCE_TYPES` and its kin); may be empty.
    pub allowed: &'a [String],
    /// The default type (`PODVM_INSTANCE_TYPE` and its kin).
    pub default: &'a str,
    /// The name of the allowed-list setting, for messages.
    pub allowed_key: &'a str,
}

/// Picks the instance type. `size_of` gives the size of a type when known
/// (types without a known size are never picked for fit).
pub fn select_instance_type(
    req: &SizeRequest<'_>,
    size_of: impl Fn(&str) -> Option<Size>,
) -> Result<String, ProviderError> {
    let mut all = instance_type_candidates(req, size_of)?;
    // Never empty: every branch below yields at least one type.
    Ok(all.swap_remove(0))
}

/// The types worth trying, best first: the first is what
/// [`select_instance_type`] picks; the others are the larger allowed types
/// that also fit, for a provider to fall back on when the cloud has no
/// capacity for the first. Never empty on success.
pub fn instance_type_candidates(
    req: &SizeRequest<'_>,
    size_of: impl Fn(&str) -> Option<Size>,
) -> Result<Vec<String>, ProviderError> {
    // GPUs: the sizes known here say nothing about accelerators, so a GPU
    // pod must name its (allowed) GPU instance type itself.
    if let Some(g) = req.gpus.filter(|g| *g > 0) {
        if req.machine_type.is_none_or(|t| t.trim().is_empty()) {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "the pod asks for {g} GPU(s) (default_gpus annotation, from nvidia.com/gpu) \
                     but names no instance type: set its \
                     io.katacontainers.config.hypervisor.machine_type annotation to a GPU \
                     instance type allowed in {}",
                    req.allowed_key
                ),
            ));
        }
    }
    let allowed: Vec<&str> = if req.allowed.is_empty() {
        vec![req.default]
    } else {
        req.allowed.iter().map(String::as_str).collect()
    };
    if let Some(t) = req.machine_type.filter(|t| !t.trim().is_empty()) {
        if allowed.contains(&t) {
            return Ok(vec![t.to_string()]);
        }
        return Err(ProviderError::new(
            ErrorKind::InvalidRequest,
            format!(
                "instance type {t:?} from the pod's machine_type annotation is not allowed; \
                 allowed ({}): {}",
                req.allowed_key,
                allowed.join(", ")
            ),
        ));
    }
    if (req.vcpus.is_some() || req.memory_mib.is_some()) && !req.allowed.is_empty() {
        let want_cpu = req.vcpus.unwrap_or(0);
        let want_mem = req.memory_mib.unwrap_or(0);
        let mut fits: Vec<(Size, &str)> = allowed
            .iter()
            .filter_map(|t| size_of(t).map(|s| (s, *t)))
            .filter(|(s, _)| s.vcpus >= want_cpu && s.memory_mib >= want_mem)
            .collect();
        fits.sort_by_key(|(s, t)| (s.vcpus, s.memory_mib, t.to_string()));
        return match fits.is_empty() {
            false => Ok(fits.into_iter().map(|(_, t)| t.to_string()).collect()),
            true => Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "no instance type in {} fits {} vCPUs and {} MiB: {}",
                    req.allowed_key,
                    want_cpu,
                    want_mem,
                    allowed.join(", ")
                ),
            )),
        };
    }
    Ok(vec![req.default.to_string()])
}

/// Creates with each candidate type in turn (best first, as
/// [`instance_type_candidates`] gives them) while the cloud answers
/// "no capacity for this type here", calling `before_next` with the
/// refused type before trying the next one (to remove what a refused
/// create left). Returns the type that worked and what `create` made;
/// any other error, or no capacity for the last candidate, ends the
/// search, naming every type tried (`what`: "instance types", …).
// Plain closures returning futures, not async closures: their futures
// must stay `Send` inside the providers' `async_trait` methods.
pub async fn create_with_capacity_fallback<T, Create, CreateFut, Next, NextFut>(
    candidates: &[String],
    what: &str,
    mut create: Create,
    mut before_next: Next,
) -> Result<(String, T), ProviderError>
where
    Create: FnMut(String) -> CreateFut,
    CreateFut: std::future::Future<Output = Result<T, ProviderError>>,
    Next: FnMut(String) -> NextFut,
    NextFut: std::future::Future<Output = ()>,
{
    for (i, candidate) in candidates.iter().enumerate() {
        match create(candidate.clone()).await {
            Ok(made) => return Ok((candidate.clone(), made)),
            Err(e) if e.kind == ErrorKind::InsufficientCapacity && i + 1 < candidates.len() => {
                tracing::warn!(%candidate, next = %candidates[i + 1], error = %e, "no capacity for this type; trying the next allowed type that fits");
                before_next(candidate.clone()).await;
            }
            Err(mut e) => {
                if i > 0 {
                    e.message = format!(
                        "{} ({what} tried: {})",
                        e.message,
                        candidates[..=i].join(", ")
                    );
                }
                return Err(e);
            }
        }
    }
    Err(ProviderError::new(
        ErrorKind::InvalidRequest,
        format!("no {what} to try"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(t: &str) -> Option<Size> {
        let (vcpus, memory_mib) = match t {
            "m6a.large" => (2, 8192),
            "m6a.xlarge" => (4, 16384),
            "c6a.xlarge" => (4, 8192),
            "m6a.2xlarge" => (8, 32768),
            _ => return None,
        };
        Some(Size { vcpus, memory_mib })
    }

    #[test]
    fn selection_table() {
        let list: Vec<String> = [
            "m6a.2xlarge",
            "m6a.xlarge",
            "c6a.xlarge",
            "m6a.large",
            "mystery",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let none: Vec<String> = Vec::new();
        // (annotation, vcpus, MiB, allowed, expected type or error text)
        type Row<'a> = (
            Option<&'a str>,
            Option<u32>,
            Option<u64>,
            &'a [String],
            Result<&'a str, &'a str>,
        );
        let rows: Vec<Row> = vec![
            (None, None, None, &none, Ok("m6a.large")),
            (None, None, None, &list, Ok("m6a.large")),
            (Some("m6a.xlarge"), None, None, &list, Ok("m6a.xlarge")),
            (Some("m6a.xlarge"), Some(64), None, &list, Ok("m6a.xlarge")),
            (Some("p5.48xlarge"), None, None, &list, Err("not allowed")),
            (Some("m6a.xlarge"), None, None, &none, Err("not allowed")),
            (Some("m6a.large"), None, None, &none, Ok("m6a.large")),
            (None, Some(1), None, &list, Ok("m6a.large")),
            (None, Some(3), None, &list, Ok("c6a.xlarge")),
            (None, Some(3), Some(9000), &list, Ok("m6a.xlarge")),
            (None, None, Some(20000), &list, Ok("m6a.2xlarge")),
            (
                None,
                Some(16),
                None,
                &list,
                Err("no instance type in PODVM_INSTANCE_TYPES fits 16 vCPUs"),
            ),
            (None, Some(16), None, &none, Ok("m6a.large")),
            (Some(""), None, None, &list, Ok("m6a.large")),
        ];
        for (machine_type, vcpus, memory_mib, allowed, want) in rows {
            let req = SizeRequest {
                machine_type,
                gpus: None,
                vcpus,
                memory_mib,
                allowed,
                default: "m6a.large",
                allowed_key: "PODVM_INSTANCE_TYPES",
            };
            let got = select_instance_type(&req, sizes);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{req:?}"),
                (Err(w), Err(e)) => {
                    assert!(e.message.contains(w), "{req:?}: {}", e.message);
                    assert_eq!(e.kind, ErrorKind::InvalidRequest);
                }
                (w, g) => panic!("{req:?}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn gpu_pods_must_name_their_type() {
        let list: Vec<String> = vec!["m6a.large".into(), "g5.xlarge".into()];
        let req = |machine_type, gpus| SizeRequest {
            machine_type,
            gpus,
            vcpus: Some(2),
            memory_mib: None,
            allowed: &list,
            default: "m6a.large",
            allowed_key: "PODVM_INSTANCE_TYPES",
        };
        let e = select_instance_type(&req(None, Some(1)), sizes).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(
            e.message.contains("1 GPU(s)")
                && e.message.contains("machine_type")
                && e.message.contains("PODVM_INSTANCE_TYPES"),
            "{}",
            e.message
        );
        assert_eq!(
            select_instance_type(&req(Some("g5.xlarge"), Some(1)), sizes).unwrap(),
            "g5.xlarge"
        );
        assert!(
            select_instance_type(&req(None, Some(0)), sizes).is_ok(),
            "zero GPUs is none"
        );
    }

    #[test]
    fn candidates_are_the_fitting_types_smallest_first() {
        let list: Vec<String> = ["m6a.2xlarge", "m6a.xlarge", "c6a.xlarge", "m6a.large"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let req = |machine_type, vcpus| SizeRequest {
            machine_type,
            gpus: None,
            vcpus,
            memory_mib: None,
            allowed: &list,
            default: "m6a.large",
            allowed_key: "PODVM_INSTANCE_TYPES",
        };
        assert_eq!(
            instance_type_candidates(&req(None, Some(3)), sizes).unwrap(),
            vec!["c6a.xlarge", "m6a.xlarge", "m6a.2xlarge"]
        );
        // A type the pod named is the only candidate; so is the default.
        assert_eq!(
            instance_type_candidates(&req(Some("m6a.xlarge"), Some(3)), sizes).unwrap(),
            vec!["m6a.xlarge"]
        );
        assert_eq!(
            instance_type_candidates(&req(None, None), sizes).unwrap(),
            vec!["m6a.large"]
        );
    }

    #[tokio::test]
    async fn fallback_moves_on_only_for_capacity_and_names_what_was_tried() {
        let list: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let no_capacity =
            |t: &str| ProviderError::new(ErrorKind::InsufficientCapacity, format!("none of {t}"));
        let mut cleaned = Vec::new();
        let (t, made) = create_with_capacity_fallback(
            &list,
            "types",
            |t: String| async move {
                if t == "c" {
                    Ok(7)
                } else {
                    Err(no_capacity(&t))
                }
            },
            |t: String| {
                cleaned.push(t);
                async {}
            },
        )
        .await
        .unwrap();
        assert_eq!((t.as_str(), made), ("c", 7));
        assert_eq!(cleaned, vec!["a", "b"]);
        let e = create_with_capacity_fallback(
            &list,
            "types",
            |t: String| async move { Err::<(), _>(no_capacity(&t)) },
            |_| async {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InsufficientCapacity);
        assert_eq!(e.message, "none of c (types tried: a, b, c)");
        // Any other error stops at once, and a first-try error is unchanged.
        let e = create_with_capacity_fallback(
            &list,
            "types",
            |_| async { Err::<(), _>(ProviderError::new(ErrorKind::QuotaExceeded, "quota")) },
            |_| async {},
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::QuotaExceeded, "quota")
        );
        assert!(
            create_with_capacity_fallback(&[], "types", |_| async { Ok(()) }, |_| async {})
                .await
                .is_err()
        );
    }
}
