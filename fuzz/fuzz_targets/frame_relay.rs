//! The ttrpc frame decoder as the relay runs it: arbitrary bytes from the
//! shim side (headers with any length, type, flags; truncated frames;
//! payloads the CreateContainer/CreateSandbox rewriter decodes) through a
//! real `relay_connection` toward an agent that never answers. It must
//! neither panic nor hang, and must end when the shim side closes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpod_relay::{relay_connection, CreateContainerRewriter, RelayOptions, RelayOutcome};
use std::sync::{Arc, OnceLock};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    runtime().block_on(async move {
        let down = tokio::io::join(std::io::Cursor::new(data), tokio::io::sink());
        // The agent side: a pipe whose far end stays open and says nothing.
        let (up, _agent) = tokio::io::duplex(16 << 20);
        let mut opts = RelayOptions::new("fuzz");
        opts.max_payload = 64 * 1024;
        let rw = Arc::new(CreateContainerRewriter {
            pod_netns: Some("/run/netns/podns".into()),
            drop_sandbox_dns: true,
        });
        let out = relay_connection(down, up, opts, rw).await;
        assert!(
            matches!(
                out,
                RelayOutcome::DownstreamClosed | RelayOutcome::DownstreamError(_)
            ),
            "the relay must end with the shim side: {out:?}"
        );
    });
});
