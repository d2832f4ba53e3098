//! Named network namespaces under `/run/netns` (so `ip netns` lists them),
//! made and entered on dedicated OS threads: `unshare`/`setns` change the
//! calling *thread's* namespace, which must never be a tokio worker.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::io;
use std::path::PathBuf;

pub const NETNS_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn on_thread<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Creates the namespace `name` (blocking; call from `spawn_blocking`).
pub fn create(name: &str) -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let target = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    let t = target.clone();
    let made = on_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    made
}

/// Removes the namespace `name`; an absent one is not an error.
pub fn remove(name: &str) -> io::Result<()> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens the namespace (for `setns` in a child or moving a link into it).
pub fn open(name: &str) -> io::Result<File> {
    File::open(path(name))
}

/// Runs `f` on a fresh thread that has entered the namespace `name`.
pub fn run_in<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    let ns = open(name)?;
    on_thread(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
}
