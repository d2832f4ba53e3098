//! Recovery after a (re)start: every persisted sandbox is reloaded.
//! Running ones get their agent socket and relay back (or are marked
//! failed when the provider no longer lists their instance), interrupted
//! starts are cleaned up, interrupted teardowns resume, and sandboxes whose
//! pod network namespace vanished while the adaptor was down are stopped.

use super::{check_sandbox_id, Manager, ManagerError, Sandbox};
use crate::agent_socket::{AgentSocket, Target};
use crate::state::Phase;
use std::collections::HashSet;
use std::sync::Arc;

impl Manager {
    /// Ids of every instance carrying this node's owner tag; `None` when
    /// the provider cannot list (then nothing is concluded from absence).
    async fn node_instance_ids(&self) -> Option<HashSet<String>> {
        match self.provider.list_instances(&self.owner("")).await {
            Ok(v) => Some(v.into_iter().map(|i| i.id).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "listing this node's instances at start-up failed; running sandboxes are recovered unchecked");
                None
            }
        }
    }

    /// Reloads every persisted sandbox after a (re)start: running ones get
    /// their agent socket and relay back (or are marked failed when the
    /// provider no longer lists their instance), interrupted starts are
    /// cleaned up, interrupted teardowns resume.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ManagerError> {
        let (records, bad) = self.store.load_all()?;
        for e in bad {
            tracing::error!(error = %e, "skipping an unreadable sandbox record (left on disk for inspection)");
        }
        let n = records.len();
        let listed = self.node_instance_ids().await;
        // What the sandbox records own, before recovery changes them (a
        // pool record naming one of these lost the race with its sandbox).
        let owned_ids: HashSet<String> = records
            .iter()
            .filter_map(|r| r.instance_id.clone())
            .collect();
        let owned_pool: HashSet<String> =
            records.iter().filter_map(|r| r.pool_vm.clone()).collect();
        for mut r in records {
            let id = r.id.clone();
            if check_sandbox_id(&id).is_err() {
                tracing::error!(sandbox = %id, "skipping a record with an invalid id");
                continue;
            }
            if let Some(n) = &r.network {
                self.nets.mark_held(n);
            }
            let netns_gone = r
                .netns_path
                .as_ref()
                .is_some_and(|p| !std::path::Path::new(p).exists());
            if netns_gone && r.phase != Phase::Stopping {
                tracing::warn!(sandbox = %id, netns = ?r.netns_path, "the pod's network namespace is gone (pod deleted while the adaptor was down): stopping the sandbox");
                r.phase = Phase::Stopping;
                self.store.save(&r)?;
            }
            if r.phase == Phase::Provisioning {
                tracing::warn!(sandbox = %id, "adaptor stopped during StartVM; deleting what it may have created");
                self.delete_owned_instances(&id, r.instance_id.as_deref())
                    .await;
                r.phase = Phase::Failed;
                r.instance_id = None;
                r.instance_ip = None;
                r.last_error = Some("adaptor restarted during StartVM".into());
                self.store.save(&r)?;
            }
            if let (Phase::Running, Some(listed)) = (r.phase, &listed) {
                if !r.instance_id.as_ref().is_some_and(|i| listed.contains(i)) {
                    tracing::warn!(sandbox = %id, instance_id = ?r.instance_id, "the pod VM of a running sandbox is gone (deleted while the adaptor was down): marking the sandbox failed");
                    r.phase = Phase::Failed;
                    r.last_error = Some(format!(
                        "pod VM {} disappeared while the adaptor was down",
                        r.instance_id.as_deref().unwrap_or("(none)")
                    ));
                    r.instance_id = None;
                    r.instance_ip = None;
                    self.store.save(&r)?;
                }
            }
            let target = match r.phase {
                Phase::Running => match r.instance_ip.map(|ip| self.upstream(&r.instance_name, ip))
                {
                    Some(Ok(up)) => Target::Ready(up),
                    _ => Target::Closed,
                },
                Phase::Created => Target::Pending,
                _ => Target::Closed,
            };
            let phase = r.phase;
            let sb = Sandbox::new(r);
            self.insert(&id, sb.clone());
            if phase == Phase::Stopping {
                tracing::info!(sandbox = %id, "resuming an interrupted teardown");
                sb.stop_requested.send_replace(true);
                self.spawn_teardown(id, sb);
                continue;
            }
            match AgentSocket::serve(&self.cfg.agent_socket(&id), target, self.relay_options(&id)) {
                Ok(s) => {
                    if let Ok(mut slot) = sb.socket.lock() {
                        *slot = Some(s);
                    }
                    tracing::info!(sandbox = %id, phase = phase.as_str(), "sandbox recovered");
                }
                Err(e) => {
                    tracing::error!(sandbox = %id, error = %e, "cannot serve the recovered sandbox's agent socket")
                }
            }
        }
        self.recover_pool(&owned_ids, &owned_pool, listed.as_ref())
            .await;
        Ok(n)
    }
}
