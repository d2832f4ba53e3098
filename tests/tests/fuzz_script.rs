//! `scripts/fuzz.sh` fails the run when a fuzz target fails, whatever the
//! target printed: a libFuzzer exit status other than 0 (crash, leak,
//! timeout, out of memory) or an input left in `artifacts/<target>/`.
//! The script's decisions are tested here with a stand-in `cargo` on
//! PATH that answers `cargo fuzz build|list|run` as cargo-fuzz does and
//! exits as told (a real crash needs a sanitizer build of the targets,
//! which the fuzz smoke run in scripts/test.sh does).

use std::path::{Path, PathBuf};
use std::process::Command;

const STUB: &str = r#"#!/bin/sh
case "$1 $2" in
"fuzz build") exit 0 ;;
"fuzz list") echo target_a ;;
"fuzz run")
    echo "INFO: Seed: 1"
    if [ -n "$STUB_ARTIFACT" ]; then mkdir -p artifacts/target_a && echo x > artifacts/target_a/crash-1; fi
    exit "${STUB_EXIT:-0}" ;;
*) echo "unexpected cargo call: $*" >&2; exit 2 ;;
esac
"#;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz.sh")
}

/// Runs fuzz.sh with the stand-in; its exit success and stderr.
fn run(exit: i32, artifact: bool) -> (bool, String) {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["cargo", "cargo-fuzz"] {
        let p = bin.join(name);
        std::fs::write(&p, STUB).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let fuzz_dir = d.path().join("fuzz");
    std::fs::create_dir_all(&fuzz_dir).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .arg("1")
        .env("PATH", path)
        .env("FUZZ_DIR", &fuzz_dir)
        .env("CARGO_TARGET_DIR", d.path().join("target"))
        .env("STUB_EXIT", exit.to_string());
    if artifact {
        cmd.env("STUB_ARTIFACT", "1");
    }
    let out = cmd.output().expect("bash scripts/fuzz.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_clean_run_passes() {
    let (ok, err) = run(0, false);
    assert!(ok, "{err}");
    assert!(err.contains("no crash"), "{err}");
}

#[test]
fn a_failing_target_fails_the_run_even_when_its_output_matches_nothing() {
    // libFuzzer's exit status on a crash / timeout / OOM, no artifact.
    for code in [1, 70, 77] {
        let (ok, err) = run(code, false);
        assert!(!ok, "exit {code} passed:\n{err}");
        assert!(err.contains("target_a FAILED"), "{err}");
    }
}

#[test]
fn a_failing_input_left_in_artifacts_fails_the_run() {
    let (ok, err) = run(0, true);
    assert!(!ok, "{err}");
    assert!(err.contains("artifacts/target_a"), "{err}");
}
