//! A pod VM "booted" on this machine for providers whose VMs never boot
//! in tests (moto, the Azure and GCE stand-ins): their instances get
//! loopback addresses, so a test reads an instance's user data back from
//! the stand-in and runs what the VM would — the user-data document's
//! forwarder config, a real forwarder on the instance's address and the
//! kata-agent double behind it. The provider path is then exercised end
//! to end, through the cloud API, up to the agent.

use crate::agent_double::{AgentDouble, Recorder};
use peerpod_vmconfig::userdata::UserData;
use std::net::IpAddr;
use std::path::PathBuf;

/// A running fake VM; dropping it stops the forwarder (call
/// [`FakeVm::stop`] to stop the agent double too).
pub struct FakeVm {
    pub dir: tempfile::TempDir,
    /// The config file the forwarder was started from (a bind rewrites it).
    pub config_path: PathBuf,
    pub agent: Option<AgentDouble>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVm {
    /// Boots `user_data` (a `#cloud-config` the adaptor built) with its
    /// forwarder listening on `ip:port`.
    pub async fn boot(user_data: &[u8], ip: IpAddr, port: u16) -> Result<Self, String> {
        let doc = UserData::parse(user_data).map_err(|e| format!("user data: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sock = dir.path().join("agent.sock");
        let agent = AgentDouble::start(&sock, Recorder::default())
            .await
            .map_err(|e| format!("agent double: {e}"))?;
        let mut cfg = doc.forwarder;
        cfg.listen = std::net::SocketAddr::new(ip, port).to_string();
        cfg.agent_socket = sock;
        let config_path = dir.path().join("daemon.json");
        std::fs::write(&config_path, cfg.to_bytes()).map_err(|e| e.to_string())?;
        let fwd = agent_forwarder::Forwarder::bind(&cfg)
            .await
            .map_err(|e| format!("forwarder: {e}"))?
            .with_bind_target(Some(config_path.clone()), "unused-fake-vm-netns");
        let task = tokio::spawn(fwd.serve());
        Ok(Self {
            dir,
            config_path,
            agent: Some(agent),
            task,
        })
    }

    /// What a bind wrote next to the config: the registry credentials.
    pub fn auth_json(&self) -> Option<String> {
        std::fs::read_to_string(self.config_path.with_file_name("auth.json")).ok()
    }

    /// The forwarder's config file now (bootstrap, or bound).
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The config file once a bind to `sandbox` has replaced it (the
    /// forwarder writes it just after answering), or what is there after
    /// 10 s.
    pub async fn bound_config(&self, sandbox: &str) -> String {
        for _ in 0..500 {
            let c = self.config();
            if c.contains(sandbox) {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.config()
    }

    pub async fn stop(mut self) {
        self.task.abort();
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
    }
}
