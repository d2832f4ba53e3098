//! Reading provider settings given as text — flags or env vars, often from
//! a ConfigMap where an empty value means "not set": one error type that
//! names the offending key, and the parsers every provider's config shares.

use std::collections::BTreeMap;

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct ConfigError {
    /// The flag's env name (`PODVM_AMI_ID`, `GCP_ZONE`, …).
    pub key: &'static str,
    pub why: String,
}

/// The error for `key`.
pub fn bad(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        why: why.into(),
    }
}

/// The value, trimmed; `None` when absent or blank.
pub fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, any case); empty means false.
pub fn parse_bool(key: &'static str, v: &Option<String>) -> Result<bool, ConfigError> {
    match non_empty(v).map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some(other) => Err(bad(key, format!("{other:?} is not true or false"))),
    }
}

/// A comma list; blanks dropped.
pub fn parse_list(v: &Option<String>) -> Vec<String> {
    non_empty(v)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `k=v,k2=v2` (keys and values trimmed, keys non-empty); `check` applies
/// the cloud's own rules to each pair and says what is wrong.
pub fn parse_tags(
    key: &'static str,
    v: &Option<String>,
    check: impl Fn(&str, &str) -> Result<(), String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in parse_list(v) {
        let (k, val) = item
            .split_once('=')
            .ok_or_else(|| bad(key, format!("{item:?} is not key=value")))?;
        let (k, val) = (k.trim(), val.trim());
        if k.is_empty() {
            return Err(bad(key, format!("{item:?} has an empty key")));
        }
        check(k, val).map_err(|why| bad(key, format!("{k:?}: {why}")))?;
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn blanks_are_unset_and_bad_values_name_the_key() {
        assert_eq!(non_empty(&s("  ")), None);
        assert_eq!(non_empty(&s(" x ")), Some("x".into()));
        assert!(!parse_bool("K", &None).unwrap());
        assert!(parse_bool("K", &s("YES")).unwrap());
        assert_eq!(
            parse_bool("DISABLECVM", &s("maybe")).unwrap_err().key,
            "DISABLECVM"
        );
        assert_eq!(parse_list(&s("a, ,b,")), vec!["a", "b"]);
    }

    #[test]
    fn tags_parse_and_the_cloud_rule_applies() {
        let ok = |_: &str, _: &str| Ok(());
        let t = parse_tags("TAGS", &s("team=qa, cost = 42"), ok).unwrap();
        assert_eq!(t.get("cost").map(String::as_str), Some("42"));
        for bad_input in ["novalue", "=x"] {
            assert_eq!(
                parse_tags("TAGS", &s(bad_input), ok).unwrap_err().key,
                "TAGS"
            );
        }
        let no_upper = |k: &str, _: &str| {
            if k.chars().any(|c| c.is_ascii_uppercase()) {
                Err("lowercase only".to_string())
            } else {
                Ok(())
            }
        };
        let e = parse_tags("TAGS", &s("Team=qa"), no_upper).unwrap_err();
        assert!(e.why.contains("lowercase only"), "{e}");
    }
}
