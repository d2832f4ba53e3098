//! The instance's processes: started inside its network namespace, in a
//! session of their own (they outlive a SIGKILLed adaptor, like a VM
//! outlives it), and stopped by pid with a check that the pid still
//! belongs to the process we started (pids are reused).

use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A process we started, identified beyond its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub what: String,
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat (start time in clock ticks).
    pub start_time: u64,
}

/// (state, start time) of a pid, from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcRef {
    /// Whether this very process is still running (not a zombie, not a
    /// reused pid).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    pub async fn stop(&self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if !self.alive() {
            return;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.alive() {
            tracing::warn!(what = %self.what, pid = self.pid, "did not stop on SIGTERM; killing");
            let _ = kill(pid, Signal::SIGKILL);
            for _ in 0..200 {
                if !self.alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Starts `program args` inside the namespace behind `netns`, output
/// appended to `log`. The child is not kept: tokio reaps it if it exits
/// while we run; after a restart, init does.
pub fn spawn_in(
    what: &str,
    netns: &std::fs::File,
    program: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, String)],
    log: &Path,
) -> std::io::Result<ProcRef> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let fd = netns.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (setns, setsid) run between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other(format!("{what} exited at once")))?;
    let start_time = stat(pid).map(|(_, s)| s).unwrap_or(0);
    drop(child);
    Ok(ProcRef {
        what: what.to_string(),
        pid,
        start_time,
    })
}
