//! What the Events on a pod say: reason, type and the note `kubectl
//! describe pod` shows, for each step of a pod VM's life. Notes carry the
//! cloud's own message when a start failed, with anything that looks like
//! a secret (PEM blocks, bearer tokens, `password=`-style pairs, long
//! base64 runs) cut out, and are kept within the API's 1 KiB note limit.

use crate::reporter::{Activity, Notice};
use kube::runtime::events::EventType;

/// events.k8s.io/v1 refuses notes longer than this many bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

pub const REASON_CREATING: &str = "PodVMCreating";
pub const REASON_RUNNING: &str = "PodVMRunning";
pub const REASON_START_FAILED: &str = "PodVMStartFailed";
pub const REASON_DELETED: &str = "PodVMDeleted";

/// One Event's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventText {
    pub type_: EventType,
    pub reason: &'static str,
    /// What the reporter did (events.k8s.io `action`).
    pub action: &'static str,
    pub note: String,
}

fn size(vcpus: Option<u32>, memory_mib: Option<u64>) -> String {
    match (vcpus, memory_mib) {
        (None, None) => "no size requested: the provider's default".into(),
        (Some(c), None) => format!("{c} vCPUs requested"),
        (None, Some(m)) => format!("{m} MiB requested"),
        (Some(c), Some(m)) => format!("{c} vCPUs, {m} MiB requested"),
    }
}

/// The Event for one notice.
pub fn describe(n: &Notice) -> EventText {
    let vm = &n.instance_name;
    let (type_, reason, action, note) = match &n.activity {
        Activity::Creating {
            provider,
            vcpus,
            memory_mib,
        } => (
            EventType::Normal,
            REASON_CREATING,
            "StartVM",
            format!(
                "creating pod VM {vm} with provider {provider} ({})",
                size(*vcpus, *memory_mib)
            ),
        ),
        Activity::InstanceCreated { instance_id } => (
            EventType::Normal,
            "PodVMCreated",
            "StartVM",
            format!("pod VM {vm} created: instance {instance_id}, booting"),
        ),
        Activity::Running {
            took,
            instance_id,
            instance_type,
            ip,
        } => {
            let mut s = format!(
                "pod VM {vm} running after {:.1} s: instance {instance_id}",
                took.as_secs_f64()
            );
            if let Some(t) = instance_type {
                s.push_str(&format!(", type {t}"));
            }
            if let Some(ip) = ip {
                s.push_str(&format!(", IP {ip}"));
            }
            (EventType::Normal, REASON_RUNNING, "StartVM", s)
        }
        Activity::StartFailed { phase, message } => (
            EventType::Warning,
            REASON_START_FAILED,
            "StartVM",
            format!("pod VM {vm} failed in phase \"{phase}\": {message}"),
        ),
        Activity::Deleted { instance_id } => (
            EventType::Normal,
            REASON_DELETED,
            "StopVM",
            match instance_id {
                Some(i) => format!("pod VM {vm} (instance {i}) deleted"),
                None => format!("pod VM {vm} deleted (no instance was running)"),
            },
        ),
    };
    EventText {
        type_,
        reason,
        action,
        note: truncate(&redact(&note), MAX_NOTE_BYTES),
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MARK: &str = " […]";
    let mut end = max.saturating_sub(MARK.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

const REDACTED: &str = "[redacted]";
/// Keys whose value is cut out in `key=value` / `key: value` pairs.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "access_key",
    "client_secret",
    "authorization",
];
/// A run of base64 characters at least this long is taken for key material.
const LONG_BLOB: usize = 100;

/// Removes what may be a secret from a message meant for an Event.
pub fn redact(s: &str) -> String {
    let s = redact_pem(s);
    let s = redact_words(&s);
    redact_blobs(&s)
}

fn redact_pem(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("-----BEGIN ") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 11..];
        match after.find("-----END ") {
            Some(e) => {
                let tail = &after[e + 9..];
                // Past the END line's closing dashes.
                let close = tail.find("-----").map(|c| c + 5).unwrap_or(tail.len());
                rest = &tail[close..];
            }
            None => rest = "",
        }
        out.push_str(REDACTED);
    }
    out.push_str(rest);
    out
}

fn redact_words(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hide_next = false;
    for (i, word) in s.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let lower = word.to_ascii_lowercase();
        if lower == "bearer" || lower == "basic" {
            out.push_str(word);
            hide_next = true;
            continue;
        }
        if hide_next && !word.is_empty() {
            out.push_str(REDACTED);
            hide_next = false;
            continue;
        }
        let pair = lower
            .find(['=', ':'])
            .map(|p| (&lower[..p], p))
            .filter(|(k, _)| {
                let k = k.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
                SECRET_KEYS.iter().any(|s| k.ends_with(s))
            });
        match pair {
            Some((_, p)) if p + 1 < word.len() => {
                out.push_str(&word[..=p]);
                out.push_str(REDACTED);
            }
            Some(_) => {
                out.push_str(word);
                hide_next = true;
            }
            None => out.push_str(word),
        }
    }
    out
}

fn redact_blobs(s: &str) -> String {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-');
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= LONG_BLOB {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if is_b64(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notice(activity: Activity) -> Notice {
        Notice {
            sandbox_id: "0123456789abcdef".into(),
            pod: "nginx".into(),
            namespace: "default".into(),
            instance_name: "podvm-nginx-01234567".into(),
            activity,
        }
    }

    #[test]
    fn each_step_has_its_reason_and_facts() {
        let t = describe(&notice(Activity::Creating {
            provider: "aws".into(),
            vcpus: Some(2),
            memory_mib: Some(4096),
        }));
        assert_eq!((t.reason, t.type_), (REASON_CREATING, EventType::Normal));
        assert_eq!(
            t.note,
            "creating pod VM podvm-nginx-01234567 with provider aws (2 vCPUs, 4096 MiB requested)"
        );
        let t = describe(&notice(Activity::Running {
            took: Duration::from_millis(12_340),
            instance_id: "i-0abc".into(),
            instance_type: Some("m6a.large".into()),
            ip: Some("10.0.0.5".parse().unwrap()),
        }));
        assert_eq!(t.reason, REASON_RUNNING);
        assert_eq!(
            t.note,
            "pod VM podvm-nginx-01234567 running after 12.3 s: instance i-0abc, type m6a.large, IP 10.0.0.5"
        );
        let t = describe(&notice(Activity::StartFailed {
            phase: "provider create".into(),
            message: "InsufficientInstanceCapacity: no m6a.large in us-east-1a".into(),
        }));
        assert_eq!(
            (t.reason, t.type_),
            (REASON_START_FAILED, EventType::Warning)
        );
        assert!(t.note.contains("\"provider create\""), "{}", t.note);
        assert!(
            t.note
                .contains("InsufficientInstanceCapacity: no m6a.large"),
            "{}",
            t.note
        );
        let t = describe(&notice(Activity::Deleted {
            instance_id: Some("i-0abc".into()),
        }));
        assert_eq!(t.reason, REASON_DELETED);
        assert_eq!(t.action, "StopVM");
        assert!(t.note.contains("i-0abc"));
    }

    #[test]
    fn long_notes_fit_the_api_limit() {
        let t = describe(&notice(Activity::StartFailed {
            phase: "agent ready".into(),
            message: "é".repeat(2000),
        }));
        assert!(t.note.len() <= MAX_NOTE_BYTES, "{}", t.note.len());
        assert!(t.note.ends_with("[…]"));
    }

    #[test]
    fn secrets_are_cut_out() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----";
        let blob = "A".repeat(150);
        let msg = format!(
            "bad user data {key} then Authorization: Bearer eyJhbGciOi.x.y and password=hunter2 \
             client_secret: s3cr3t token=abc blob {blob} kept: i-0abc"
        );
        let r = redact(&msg);
        for secret in [
            "MIIEvQIBADANBgkq",
            "eyJhbGciOi",
            "hunter2",
            "s3cr3t",
            "abc blob",
            &blob,
        ] {
            assert!(!r.contains(secret), "{secret} left in {r}");
        }
        assert!(r.contains("bad user data [redacted] then"), "{r}");
        assert!(r.contains("kept: i-0abc"), "{r}");
        assert!(r.contains("password=[redacted]"), "{r}");
    }
}
