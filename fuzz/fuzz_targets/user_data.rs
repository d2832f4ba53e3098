//! The user-data parser (the VM's first look at the adaptor's document):
//! arbitrary bytes, and arbitrary YAML bodies behind a `#cloud-config`
//! header. Parse or a clear error; what parses re-renders to a document
//! that parses the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpod_vmconfig::userdata::UserData;

fuzz_target!(|data: &[u8]| {
    let mut doc = b"#cloud-config\n".to_vec();
    doc.extend_from_slice(data);
    for input in [data, &doc[..]] {
        if let Ok(ud) = UserData::parse(input) {
            let again = UserData::parse(&ud.to_cloud_config()).expect("re-parse");
            assert!(again == ud);
        }
    }
});
