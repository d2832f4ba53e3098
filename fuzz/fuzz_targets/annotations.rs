//! The CreateVM annotation parser on arbitrary annotation maps: each entry
//! is a key chosen among the ones we read (or free text) and an arbitrary
//! value. It must return a spec or an error naming an annotation, never
//! panic.

#![no_main]

use cloud_api_adaptor::annotations::{self as a, PodSpec};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const KEYS: &[&str] = &[
    a::SANDBOX_NAME,
    a::SANDBOX_NAMESPACE,
    a::MACHINE_TYPE,
    a::IMAGE,
    a::DEFAULT_VCPUS,
    a::DEFAULT_MEMORY,
    a::INITDATA,
    a::DEFAULT_GPUS,
    a::DEFAULT_GPU_MODEL,
];

fuzz_target!(|data: &[u8]| {
    let mut map = HashMap::new();
    // Entries: <key selector byte><value bytes>, separated by 0xff.
    for entry in data.split(|b| *b == 0xff) {
        let Some((sel, value)) = entry.split_first() else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        let key = match KEYS.get(*sel as usize % (KEYS.len() + 1)) {
            Some(k) => k.to_string(),
            None => format!("free.key/{sel}"),
        };
        map.insert(key, value);
    }
    match PodSpec::from_annotations(&map) {
        Ok(spec) => {
            assert!(!spec.pod_name.is_empty());
            if let Some(v) = spec.vcpus {
                assert!(v > 0);
            }
        }
        Err(e) => assert!(e.to_string().contains("io."), "error names the annotation: {e}"),
    }
});
