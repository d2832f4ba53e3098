//! The request rewriter on arbitrary ttrpc `Request` envelopes: decoding
//! CreateContainer/CreateSandbox must fail cleanly or re-encode a message
//! that decodes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpod_relay::rewrite::apply;
use peerpod_relay::CreateContainerRewriter;

fuzz_target!(|data: &[u8]| {
    let rw = CreateContainerRewriter {
        pod_netns: Some("/run/netns/podns".into()),
        drop_sandbox_dns: true,
    };
    if let Ok(Some(out)) = apply(&rw, data) {
        // A rewritten envelope is itself a valid request of the same method.
        assert_eq!(
            peerpod_relay::rewrite::peek_method(&out),
            peerpod_relay::rewrite::peek_method(data)
        );
    }
});
