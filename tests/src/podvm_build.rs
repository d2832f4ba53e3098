//! Runs `podvm-image/build.sh` with the workspace's binaries next to the
//! running test (forwarder, process-user-data, the kata-agent double) and
//! the build cache of the same target directory, for the fixtures of the
//! minimal libvirt image and the cloud disk.

use crate::bins::bin_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Builds (or reuses from the cache) a pod VM image with `args` added to
/// the binaries' paths; returns the output directory the script printed
/// last. `what` names the image in the log line.
pub fn build_podvm_image(args: &[&str], what: &str) -> Result<PathBuf, String> {
    let fwd = bin_path("agent-protocol-forwarder");
    let target = fwd
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let script = crate::bins::workspace_root().join("podvm-image/build.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .arg("--kata-agent")
        .arg(bin_path("kata-agent-double"))
        .arg("--forwarder")
        .arg(&fwd)
        .arg("--user-data-bin")
        .arg(bin_path("process-user-data"))
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or_default().trim().to_string();
    eprintln!("{what} {dir} ready in {:?}", started.elapsed());
    Ok(PathBuf::from(dir))
}
