//! The forwarder config parser on arbitrary documents: parse or a clear
//! error; what parses re-serialises to a document that parses the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpod_vmconfig::ForwarderConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = ForwarderConfig::parse(data) {
        let again = ForwarderConfig::parse(&cfg.to_bytes()).expect("re-parse");
        assert_eq!(again, cfg);
    }
});
