//! The pod VM's name, the same on every provider:
//! `podvm-<pod name>-<first 8 characters of the sandbox id>`, cut to the
//! cloud's length limit. Operators and the Go adaptor's e2e suite find VMs
//! by it.

/// The first 8 characters of a sandbox id (all of it when shorter).
pub fn short_sandbox_id(sandbox_id: &str) -> &str {
    match sandbox_id.char_indices().nth(8) {
        Some((i, _)) => &sandbox_id[..i],
        None => sandbox_id,
    }
}

/// Lower-cases and replaces every character outside `[a-z0-9-]` by `-`.
fn dns_chars(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Builds the instance name, keeping the sandbox suffix whole when the pod
/// name must be shortened to fit `max_len`. Characters outside
/// `[a-z0-9-]` are replaced by `-` (pod names are DNS-1123 already, this
/// guards the rest) and the result never ends in `-` before the suffix.
pub fn instance_name(pod_name: &str, sandbox_id: &str, max_len: usize) -> String {
    let suffix = dns_chars(short_sandbox_id(sandbox_id));
    let suffix = suffix.trim_matches('-');
    let suffix = if suffix.is_empty() { "0" } else { suffix };
    let clean = dns_chars(pod_name);
    let fixed = "podvm-".len() + 1 + suffix.len();
    let room = max_len.saturating_sub(fixed);
    let mut pod: String = clean.chars().take(room).collect();
    while pod.ends_with('-') {
        pod.pop();
    }
    if pod.is_empty() {
        format!("podvm-{suffix}")
    } else {
        format!("podvm-{pod}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_has_pod_and_short_id() {
        assert_eq!(
            instance_name("nginx", "0123456789abcdef", 63),
            "podvm-nginx-01234567"
        );
    }

    #[test]
    fn long_pod_name_is_cut_but_suffix_kept() {
        let pod = "a".repeat(100);
        let n = instance_name(&pod, "deadbeefcafe", 63);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-deadbeef"), "{n}");
    }

    #[test]
    fn odd_characters_are_replaced_and_no_double_dash_at_cut() {
        assert_eq!(instance_name("My_Pod", "abc", 63), "podvm-my-pod-abc");
        assert_eq!(instance_name("ab-", "12345678", 20), "podvm-ab-12345678");
    }

    #[test]
    fn name_is_a_dns_name_whatever_the_sandbox_id() {
        assert_eq!(instance_name("web", "restart-one", 63), "podvm-web-restart");
        assert_eq!(instance_name("web", "AB_cd.EF9", 63), "podvm-web-ab-cd-ef");
        assert_eq!(instance_name("web", "--------x", 63), "podvm-web-0");
    }

    #[test]
    fn short_id_of_short_input() {
        assert_eq!(short_sandbox_id("abc"), "abc");
        assert_eq!(short_sandbox_id("0123456789"), "01234567");
    }
}
