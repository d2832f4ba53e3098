//! Liveness of running sandboxes. Once StartVM has answered, nothing
//! else notices a VM or kata-agent that dies: the sandbox would stay
//! `running` for ever while every call of the shim fails. A watch sends
//! `grpc.Health/Check` to each running sandbox's forwarder on a long
//! interval, over a connection of its own to the same upstream the relay
//! uses (the shim's connections are never touched), and after
//! `failures` consecutive failed checks marks the sandbox `failed`, closes
//! its agent socket (so the shim learns it at once), counts it and logs
//! why. One slow or lost check is not enough: a VM under load may miss a
//! beat.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Liveness settings (`--liveness-interval`, `--liveness-failures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessSettings {
    /// Time between two checks of a sandbox; zero turns the watch off.
    pub interval: Duration,
    /// Consecutive failed checks before the sandbox is marked failed.
    pub failures: u32,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            failures: 3,
        }
    }
}

/// What a check result means for the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// Failed `n` times in a row, fewer than the limit.
    Suspect(u32),
    /// Reached the limit: mark it failed.
    Dead,
}

/// Consecutive failures per sandbox.
#[derive(Debug, Default)]
pub struct Tracker {
    fails: Mutex<HashMap<String, u32>>,
}

impl Tracker {
    /// Records one check of sandbox `id`.
    pub fn record(&self, id: &str, ok: bool, limit: u32) -> Verdict {
        let mut m = self.fails.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            m.remove(id);
            return Verdict::Alive;
        }
        let n = m.entry(id.to_string()).or_insert(0);
        *n += 1;
        if *n >= limit.max(1) {
            m.remove(id);
            Verdict::Dead
        } else {
            Verdict::Suspect(*n)
        }
    }

    /// Drops what is known about sandboxes not in `running`.
    pub fn retain(&self, running: &[String]) {
        let mut m = self.fails.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|id, _| running.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_consecutive_failures_count() {
        let t = Tracker::default();
        assert_eq!(t.record("a", false, 3), Verdict::Suspect(1));
        assert_eq!(t.record("a", false, 3), Verdict::Suspect(2));
        assert_eq!(t.record("a", true, 3), Verdict::Alive);
        assert_eq!(t.record("a", false, 3), Verdict::Suspect(1));
        assert_eq!(t.record("b", false, 3), Verdict::Suspect(1));
        assert_eq!(t.record("a", false, 3), Verdict::Suspect(2));
        assert_eq!(t.record("a", false, 3), Verdict::Dead);
        assert_eq!(
            t.record("a", false, 3),
            Verdict::Suspect(1),
            "counted afresh"
        );
        t.retain(&["a".to_string()]);
        assert_eq!(
            t.record("b", false, 3),
            Verdict::Suspect(1),
            "b was forgotten"
        );
        assert_eq!(
            t.record("c", false, 0),
            Verdict::Dead,
            "a limit of 0 acts as 1"
        );
    }
}
