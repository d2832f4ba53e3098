//! The provider conformance kit (providers/conformance) against the
//! libvirt provider on real libvirt + QEMU (TCG) booting the minimal pod
//! VM image, in the isolated network and pool of `LibvirtEnv`. The
//! stand-in's abilities: a kernel file that vanished (the volume is made
//! and the domain defined, its start fails: the failed create) and what
//! libvirt still holds (domains and their QEMU logs, volumes, console logs,
//! DHCP reservations of the test). Concurrency is 4 domains, not 20: each
//! is a TCG guest of 512 MiB on a shared 2-core machine. libvirt cannot be
//! told to stop answering (`deadline`) or to fail with chosen errors
//! (`error_kinds`). Needs root and libvirt (`scripts/setup.sh --libvirt`).
#![cfg(feature = "libvirt")]

use async_trait::async_trait;
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use peerpod_provider_conformance::{basic_request, run_all, Fixture};
use peerpod_provider_libvirt::LibvirtProvider;
use peerpod_tests::libvirt_env::LibvirtEnv;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct LibvirtFixture {
    env: LibvirtEnv,
    provider: Arc<dyn Provider>,
    /// Same pool and network, a kernel that does not exist.
    broken: Arc<dyn Provider>,
    armed: AtomicBool,
}

#[async_trait]
impl Fixture for LibvirtFixture {
    fn provider(&self) -> Arc<dyn Provider> {
        if self.armed.load(Ordering::SeqCst) {
            self.broken.clone()
        } else {
            self.provider.clone()
        }
    }

    fn unknown_instance_id(&self) -> String {
        format!("podvm-never-created-{}", self.env.token)
    }

    /// Names carry the environment's token, so its clean-up finds them.
    fn request(&self, name: &str, owner: OwnerTags) -> InstanceRequest {
        basic_request(&format!("{name}{}", self.env.token), owner)
    }

    fn concurrency(&self) -> usize {
        4
    }

    /// libvirt's calls run on the blocking pool: an abandoned create may
    /// still define and start its domain for a while.
    fn settle(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        self.armed.store(true, Ordering::SeqCst);
        // libvirt reports the missing kernel as a system error (stat:
        // ENOENT), which the provider treats as retryable: libvirt's error
        // does not tell a missing file from a passing I/O failure.
        Ok(ErrorKind::Transient)
    }

    async fn clear(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    async fn leftovers(&self, _node: &str) -> Vec<String> {
        self.env.leftovers(&self.env.token)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libvirt_provider_passes_the_conformance_kit() {
    let env = LibvirtEnv::required();
    peerpod_tests::harness::init_logging();
    let provider: Arc<dyn Provider> = Arc::new(LibvirtProvider::new(env.config()));
    let mut cfg = env.config();
    if let peerpod_provider_libvirt::Boot::Kernel { kernel, .. } = &mut cfg.boot {
        *kernel = env.pool_dir.join("no-such-vmlinuz");
    }
    let f = LibvirtFixture {
        broken: Arc::new(LibvirtProvider::new(cfg)),
        provider,
        env,
        armed: AtomicBool::new(false),
    };
    let report = run_all(&f).await;
    println!("{report}");
    report.assert_passed(&["error_kinds", "deadline"]);
}
