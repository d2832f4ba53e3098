//! Finds the workspace's binaries (agent-protocol-forwarder,
//! cloud-api-adaptor, kata-agent-double) next to the running test or bench
//! executable, and the workspace's own files. `scripts/test.sh` builds the
//! binaries before the tests run.

use std::path::{Path, PathBuf};

/// The workspace root (this crate is `tests/`): where the scripts, the
/// chart and the example plugins are.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The path of a workspace binary; panics with a clear message when it
/// was not built (a test fixture, so a panic is the right report).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, which scripts/test.sh does)",
        p.display()
    );
    p
}
