//! Reads the per-cloud user-data fixtures next to this file (see
//! README.md): included with `#[path]` by the provider tests and the
//! forwarder's user-data tests, so both halves use the same facts and the
//! same encoding code.
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::Value;

/// The fixture of `cloud` (`aws`, `azure`, `gcp`).
pub fn fixture(cloud: &str) -> Value {
    let text = match cloud {
        "aws" => include_str!("aws.json"),
        "azure" => include_str!("azure.json"),
        "gcp" => include_str!("gcp.json"),
        other => panic!("no user-data fixture for cloud {other:?}"),
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{cloud}.json: {e}"))
}

/// The string at `pointer` (a JSON pointer) of the fixture.
pub fn text<'a>(f: &'a Value, pointer: &str) -> &'a str {
    f.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("fixture has no string at {pointer}"))
}

/// The number at `pointer` of the fixture.
pub fn number(f: &Value, pointer: &str) -> u64 {
    f.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("fixture has no number at {pointer}"))
}

/// `raw` encoded as `encoding` (`base64` or `raw`).
pub fn encode(encoding: &str, raw: &[u8]) -> Vec<u8> {
    match encoding {
        "base64" => base64::engine::general_purpose::STANDARD
            .encode(raw)
            .into_bytes(),
        "raw" => raw.to_vec(),
        other => panic!("unknown encoding {other:?} in a user-data fixture"),
    }
}

/// `data` decoded from `encoding`; base64 may carry line breaks.
pub fn decode(encoding: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    match encoding {
        "base64" => {
            let compact: Vec<u8> = data
                .iter()
                .copied()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("not base64: {e}"))
        }
        "raw" => Ok(data.to_vec()),
        other => panic!("unknown encoding {other:?} in a user-data fixture"),
    }
}

/// What the VM's metadata service serves for a value the cloud API got
/// as `written` (in the fixture's `write.encoding`).
pub fn served(f: &Value, written: &[u8]) -> Result<Vec<u8>, String> {
    let raw = decode(text(f, "/write/encoding"), written)?;
    Ok(encode(text(f, "/read/body_encoding"), &raw))
}
