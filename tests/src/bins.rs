//! Finds the workspace's binaries (agent-protocol-forwarder,
//! cloud-api-adaptor, kata-agent-double) next to the running test or bench
//! executable. `scripts/test.sh` builds them before the tests run.

use std::path::PathBuf;

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
