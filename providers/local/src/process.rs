//! The instance's processes: started inside its network namespace
//! (`setns` in `pre_exec`) in a session of their own (`setsid`), so they
//! outlive a SIGKILLed adaptor as a VM outlives it; reaped by a plain
//! thread, never by the async runtime. Stopped by pid — also after an
//! adaptor restart, when they are no longer our children — with a check
//! that the pid still belongs to the process we started (its start time,
//! field 22 of `/proc/<pid>/stat`), and signalled through a pidfd so a
//! reused pid is never hit.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A process we started, identified beyond its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    /// `kata-agent` or `forwarder`.
    pub what: String,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot).
    pub start_time: u64,
}

/// Parses (state, start time) out of the text of `/proc/<pid>/stat`.
fn parse_stat(s: &str) -> Option<(char, u64)> {
    // The command name may hold spaces and parens: fields start after the
    // last ')'. Field 3 (state) is the first after it, field 22 the 20th.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// (state, start time) of a pid.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn running(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Some((state, start)) if start == start_time && state != 'Z' && state != 'X')
}

impl ProcRef {
    /// Whether this very process is still running (not a zombie, not a
    /// reused pid).
    pub fn alive(&self) -> bool {
        running(self.pid, self.start_time)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// For logs and errors: `kata-agent`, `forwarder`.
    pub what: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    pub cwd: PathBuf,
}

/// Starts the process inside the namespace behind `netns` (blocking:
/// fork + exec; call from `spawn_blocking`). A thread waits for it, so it
/// never lingers as a zombie while we run; after an adaptor restart init
/// reaps it.
pub fn spawn_in(spec: &Spawn, netns: &std::fs::File) -> io::Result<ProcRef> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.log)?;
    let err = out.try_clone()?;
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (setns, setsid) run between
    // fork and exec; `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // Read before the reaper can collect it (a zombie still has its stat).
    let start_time = stat(pid).map(|(_, s)| s).unwrap_or(0);
    reap(child, spec.what.clone());
    Ok(ProcRef {
        what: spec.what.clone(),
        pid,
        start_time,
    })
}

/// Collects `child` once it exits, so it never lingers as a zombie while
/// we run. On a tokio runtime that is a task waiting on the child's pidfd
/// (cheap at hundreds of instances); otherwise a thread blocked in wait.
fn reap(mut child: std::process::Child, what: String) {
    let pid = child.id();
    let report = move |r: io::Result<std::process::ExitStatus>| match r {
        Ok(status) => tracing::info!(what = %what, pid, %status, "instance process exited"),
        Err(e) => tracing::warn!(what = %what, pid, error = %e, "waiting for instance process"),
    };
    if let (Ok(rt), Ok(fd)) = (tokio::runtime::Handle::try_current(), pidfd_open(pid)) {
        rt.spawn(async move {
            // A pidfd turns readable when its process exits.
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged
            // until the AsyncFd (which owns it) is dropped.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            match registered {
                Ok(afd) => {
                    let _ = afd.readable().await;
                    report(child.wait());
                }
                Err(_) => {
                    // Detached: the blocking wait outlives this task.
                    drop(tokio::task::spawn_blocking(move || report(child.wait())));
                }
            }
        });
        return;
    }
    let reaper = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || report(child.wait()));
    if let Err(e) = reaper {
        // Not fatal: the process runs; it stays a zombie after it exits.
        tracing::warn!(pid, error = %e, "no reaper thread for instance process");
    }
}

/// A process to stop, held by a pidfd where the kernel offers one (so a
/// signal cannot reach a process that reused the pid), else by pid and
/// start time.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    start_time: u64,
    pidfd: Option<OwnedFd>,
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened, owned descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Target {
    /// Holds `pid` if `check` (run after the pidfd is open, so it judges
    /// the very process the pidfd refers to) accepts it.
    fn open(pid: u32, check: impl Fn(u32) -> Option<u64>) -> Option<Self> {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
            Err(_) => None, // old kernel: fall back to pid + start time
        };
        let start_time = check(pid)?;
        Some(Self {
            pid,
            start_time,
            pidfd,
        })
    }

    /// The recorded process, if it still runs.
    pub fn recorded(p: &ProcRef) -> Option<Self> {
        Self::open(p.pid, |pid| {
            running(pid, p.start_time).then_some(p.start_time)
        })
    }

    fn exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, zero timeout.
                let n = unsafe { libc::poll(&mut pfd, 1, 0) };
                n != 0 || !running(self.pid, self.start_time)
            }
            None => !running(self.pid, self.start_time),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: plain syscall on a valid pidfd; no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
            None => {
                if running(self.pid, self.start_time) {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(self.pid as libc::pid_t, sig) };
                }
            }
        }
    }
}

/// Every process whose network namespace is the one with identity
/// `ns` (device, inode) — including any we started but could not record
/// before a crash, and their children.
pub fn in_netns(ns: (u64, u64)) -> Vec<Target> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let inside = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| (m.dev(), m.ino()) == ns)
            .unwrap_or(false)
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && inside(*pid))
        // Checked again once the pidfd is open: then it is that process.
        .filter_map(|pid| Target::open(pid, |pid| inside(pid).then(|| stat(pid))?.map(|(_, s)| s)))
        .collect()
}

/// SIGTERM to all, SIGKILL to those still running after `grace`; returns
/// the pids that did not go away even then.
pub async fn stop_all(targets: Vec<Target>, grace: Duration) -> Vec<u32> {
    if targets.is_empty() {
        return Vec::new();
    }
    for t in &targets {
        t.signal(libc::SIGTERM);
    }
    let mut left = wait_gone(targets, grace).await;
    if left.is_empty() {
        return Vec::new();
    }
    for t in &left {
        tracing::warn!(pid = t.pid, "did not stop on SIGTERM; killing");
        t.signal(libc::SIGKILL);
    }
    left = wait_gone(left, Duration::from_secs(2)).await;
    left.iter().map(|t| t.pid).collect()
}

async fn wait_gone(mut targets: Vec<Target>, limit: Duration) -> Vec<Target> {
    let deadline = Instant::now() + limit;
    loop {
        targets.retain(|t| !t.exited());
        if targets.is_empty() || Instant::now() >= deadline {
            return targets;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let line =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_stat_is_readable_and_a_wrong_start_time_is_not_us() {
        let me = std::process::id();
        let (state, start) = stat(me).unwrap();
        assert_ne!(state, 'Z');
        let p = ProcRef {
            what: "me".into(),
            pid: me,
            start_time: start,
        };
        assert!(p.alive());
        let reused = ProcRef {
            start_time: start + 1,
            ..p
        };
        assert!(!reused.alive(), "same pid, other start time: not ours");
        assert!(Target::recorded(&reused).is_none());
    }

    #[tokio::test]
    async fn stop_terminates_then_kills() {
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = |what: &str, script: &str| Spawn {
            what: what.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            log: dir.path().join(format!("{what}.log")),
            cwd: dir.path().to_path_buf(),
        };
        assert!(
            nix::unistd::geteuid().is_root(),
            "setns needs CAP_SYS_ADMIN: run the tests as root"
        );
        /// Kills what the test started, should it fail half-way.
        struct Guard(Vec<ProcRef>);
        impl Drop for Guard {
            fn drop(&mut self) {
                for p in self.0.iter().filter(|p| p.alive()) {
                    // SAFETY: plain syscall on a process this test started.
                    unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        let mut guard = Guard(Vec::new());
        let polite = spawn_in(&spec("polite", "exec sleep 1000"), &ns).unwrap();
        guard.0.push(polite.clone());
        let stubborn = spawn_in(
            &spec(
                "stubborn",
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            ),
            &ns,
        )
        .unwrap();
        guard.0.push(stubborn.clone());
        // Let the stubborn shell install its trap.
        for _ in 0..200 {
            if std::fs::read_to_string(dir.path().join("stubborn.log"))
                .unwrap_or_default()
                .contains("ready")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(polite.alive() && stubborn.alive());
        let targets: Vec<Target> = [&polite, &stubborn]
            .into_iter()
            .filter_map(Target::recorded)
            .collect();
        assert_eq!(targets.len(), 2);
        let left = stop_all(targets, Duration::from_millis(300)).await;
        assert!(left.is_empty(), "{left:?}");
        assert!(!polite.alive() && !stubborn.alive());
        // Stopping what is gone is a no-op.
        assert!(Target::recorded(&polite).is_none());
    }
}
