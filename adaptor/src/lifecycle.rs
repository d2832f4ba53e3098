//! Sandbox life-cycle events for observers outside the manager (Kubernetes
//! Events on the pod, PeerPod objects, …). The manager calls every
//! observer synchronously at each step, so an observer must never block or
//! await: it queues the event and does its work elsewhere. An observer
//! that is slow or broken can therefore never delay StartVM or StopVM.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// One step in a sandbox's life, with the pod it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxEvent {
    pub sandbox_id: String,
    /// The pod's name and namespace, from the CRI sandbox annotations.
    pub pod: String,
    pub namespace: String,
    /// The pod VM's deterministic name (`podvm-<pod>-<short id>`).
    pub instance_name: String,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// StartVM is asking the provider for a VM of (at least) this size.
    Creating {
        provider: String,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    },
    /// The provider made the VM; it is booting (not ready yet).
    InstanceCreated {
        instance_id: String,
        instance_type: Option<String>,
        ip: Option<IpAddr>,
        took: Duration,
    },
    /// The agent answered end to end: the pod's VM serves.
    Running {
        /// From the start of StartVM.
        took: Duration,
        instance_id: String,
        instance_type: Option<String>,
        ip: Option<IpAddr>,
    },
    /// StartVM failed; `phase` names the step, `message` keeps the cloud's
    /// own words. Whatever was created has been (or is being) deleted.
    StartFailed {
        phase: &'static str,
        message: String,
    },
    /// The sandbox is gone: its instance (if any) was deleted and its
    /// tunnel and files removed.
    Deleted { instance_id: Option<String> },
}

impl EventKind {
    /// A short stable name (`Creating`, `Running`, …) for logs and event
    /// reasons.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Creating { .. } => "Creating",
            EventKind::InstanceCreated { .. } => "InstanceCreated",
            EventKind::Running { .. } => "Running",
            EventKind::StartFailed { .. } => "StartFailed",
            EventKind::Deleted { .. } => "Deleted",
        }
    }
}

/// Receives every [`SandboxEvent`]. Called on the manager's own tasks:
/// must return at once (queue the event, never block or await).
pub trait SandboxObserver: Send + Sync {
    fn on_event(&self, event: &SandboxEvent);
}

/// The observers of one manager.
#[derive(Default)]
pub struct Observers(std::sync::RwLock<Vec<Arc<dyn SandboxObserver>>>);

impl Observers {
    pub fn add(&self, o: Arc<dyn SandboxObserver>) {
        if let Ok(mut v) = self.0.write() {
            v.push(o);
        }
    }

    /// Hands `event` to every observer.
    pub fn emit(&self, event: SandboxEvent) {
        let list: Vec<Arc<dyn SandboxObserver>> = match self.0.read() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        tracing::debug!(sandbox = %event.sandbox_id, event = event.kind.name(), "sandbox event");
        for o in list {
            o.on_event(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<SandboxEvent>>);
    impl SandboxObserver for Recorder {
        fn on_event(&self, e: &SandboxEvent) {
            self.0.lock().unwrap().push(e.clone());
        }
    }

    #[test]
    fn every_observer_gets_every_event() {
        let obs = Observers::default();
        let a = Arc::new(Recorder(Mutex::new(Vec::new())));
        let b = Arc::new(Recorder(Mutex::new(Vec::new())));
        obs.add(a.clone());
        obs.add(b.clone());
        let ev = SandboxEvent {
            sandbox_id: "s".into(),
            pod: "p".into(),
            namespace: "ns".into(),
            instance_name: "podvm-p-s".into(),
            kind: EventKind::Deleted { instance_id: None },
        };
        obs.emit(ev.clone());
        assert_eq!(a.0.lock().unwrap().as_slice(), std::slice::from_ref(&ev));
        assert_eq!(b.0.lock().unwrap().as_slice(), &[ev]);
    }
}
