//! The committed PeerPod CRD is a valid apiextensions.k8s.io/v1 object, as
//! checked by PyPI `kubernetes-validate --strict` against the Kubernetes
//! 1.33 schemas (the oldest API k8s-openapi 0.29 targets) and the newest
//! it knows. Needs `kubernetes-validate` (scripts/setup.sh --tests): the
//! test fails, not skips, without it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(peerpod_kube::peerpod::CRD_PATH)
}

fn validate(file: &Path, version: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let out = cmd.arg(file).output().unwrap_or_else(|e| {
        panic!("kubernetes-validate not runnable ({e}): run scripts/setup.sh --tests (python3 -m pip install kubernetes-validate)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn committed_crd_passes_strict_validation() {
    for version in [Some("1.33"), None] {
        let (ok, text) = validate(&crd_path(), version);
        assert!(ok, "kubernetes-validate {version:?}: {text}");
        assert!(
            text.contains("customresourcedefinition/peerpods.confidentialcontainers.org"),
            "{text}"
        );
    }
}

/// The validator is strict for real: the same CRD with a field
/// apiextensions.k8s.io/v1 does not have is refused.
#[test]
fn strict_validation_refuses_an_unknown_field() {
    let yaml = std::fs::read_to_string(crd_path()).unwrap();
    let broken = yaml.replace(
        "  scope: Namespaced\n",
        "  scope: Namespaced\n  replicas: 2\n",
    );
    assert_ne!(broken, yaml);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let (ok, text) = validate(&file, Some("1.33"));
    assert!(!ok, "an unknown field passed: {text}");
    assert!(text.contains("replicas"), "{text}");
}
