//! The agent relay, end to end through a running sandbox: shim-side unix
//! socket → adaptor relay → mutual TLS → forwarder process → agent double.

use peerpod_protocols::agent::GuestDetailsRequest;
use peerpod_protocols::protobuf::Message;
use peerpod_tests::agent_double::{read_records, TEST_ECHO_SERVICE};
use peerpod_tests::harness::{raw_call, read_response, request_frame, TestDaemon};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_agent_byte_identical_including_unknown_methods() {
    let d = TestDaemon::start(true).await;
    let (sock, instance) = d.running_sandbox("relay1").await;

    let r = raw_call(&sock, "grpc.Health", "Check", &[]).await.unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);

    let mut gd = GuestDetailsRequest::new();
    gd.mem_block_size = true;
    let mut gd_bytes = gd.write_to_bytes().unwrap();
    // A field no part of the relay knows about (number 2040, bytes).
    gd_bytes.extend_from_slice(&[0xc2, 0x7f, 0x03, b'a', b'b', b'c']);
    let r = raw_call(&sock, "grpc.AgentService", "GetGuestDetails", &gd_bytes)
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let reply =
        peerpod_protocols::agent::GuestDetailsResponse::parse_from_bytes(&r.payload).unwrap();
    assert_eq!(reply.mem_block_size_bytes, 128 << 20);

    // A method no part of the relay knows about reaches the agent, whose
    // answer (the real agent's UNIMPLEMENTED, naming the method) comes
    // back: the relay itself never answers with 12.
    let future: Vec<u8> = vec![
        0x0a, 0x03, b'a', b'b', b'c', 0xf8, 0x7f, 0x01, 0x42, 0x00, 0xff,
    ];
    let r = raw_call(&sock, "grpc.AgentService", "SomeFutureCall", &future)
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::UNIMPLEMENTED, "{}", r.message);
    assert!(r.message.contains("SomeFutureCall"), "{}", r.message);
    // And a payload of unknown layout comes back unchanged.
    let r = raw_call(&sock, TEST_ECHO_SERVICE, "Echo", &future)
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    assert_eq!(r.payload, future, "echo comes back unchanged");

    let seen = read_records(&d.provider.record_file(&instance));
    let find = |m: &str| {
        seen.iter()
            .rev()
            .find(|r| r.method == m)
            .map(|r| r.payload())
    };
    assert_eq!(find("GetGuestDetails").unwrap(), gd_bytes);
    assert_eq!(find("Echo").unwrap(), future);
    d.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_on_many_connections() {
    let d = TestDaemon::start(true).await;
    let (sock, _) = d.running_sandbox("conc1").await;
    // 8 connections, 8 calls in flight on each, all written before any
    // answer is read: the relay must multiplex, not serialise.
    let mut conns = Vec::new();
    for c in 0..8u32 {
        let sock = sock.clone();
        conns.push(tokio::spawn(async move {
            let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(s);
            for i in 0..8u32 {
                let stream = 2 * i + 1;
                let body = format!("conn{c}-call{i}").into_bytes();
                wr.write_all(&request_frame(stream, TEST_ECHO_SERVICE, "Echo", &body))
                    .await
                    .unwrap();
            }
            let mut got = std::collections::HashMap::new();
            for _ in 0..8 {
                let r = read_response(&mut rd).await.unwrap();
                assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
                got.insert(r.stream_id, r.payload);
            }
            for i in 0..8u32 {
                assert_eq!(got[&(2 * i + 1)], format!("conn{c}-call{i}").into_bytes());
            }
        }));
    }
    for c in conns {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .unwrap()
            .unwrap();
    }
    d.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_and_oversized_frame() {
    let d = TestDaemon::start(true).await;
    let (sock, _) = d.running_sandbox("big1").await;
    // 3 MiB goes through both ways.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = raw_call(&sock, TEST_ECHO_SERVICE, "Echo", &big)
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    assert!(r.payload == big, "3 MiB echo differs");

    // A long poll holds another connection meanwhile; it must stay open.
    let mut waiting = tokio::net::UnixStream::connect(&sock).await.unwrap();
    waiting
        .write_all(&request_frame(1, "grpc.AgentService", "WaitProcess", &[]))
        .await
        .unwrap();

    // Over the 4 MiB limit: an error response, not a dropped daemon.
    let huge = vec![7u8; 5 * 1024 * 1024];
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(&request_frame(9, TEST_ECHO_SERVICE, "Echo", &huge))
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.stream_id, 9);
    assert_eq!(r.code, ttrpc::Code::RESOURCE_EXHAUSTED, "{}", r.message);
    // The same connection and others keep working.
    s.write_all(&request_frame(11, "grpc.Health", "Check", &[]))
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.unwrap().code, ttrpc::Code::OK);
    let r = raw_call(&sock, "grpc.Health", "Check", &[]).await.unwrap();
    assert_eq!(r.code, ttrpc::Code::OK);
    // The long poll is still pending (no answer, no close).
    let pending =
        tokio::time::timeout(Duration::from_millis(300), read_response(&mut waiting)).await;
    assert!(pending.is_err(), "long poll must stay pending: {pending:?}");
    d.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_going_away_mid_call_is_an_error_not_a_hang() {
    let d = TestDaemon::start(true).await;
    let (sock, instance) = d.running_sandbox("gone1").await;
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(&request_frame(1, "grpc.AgentService", "WaitProcess", &[]))
        .await
        .unwrap();
    // Make sure the call is in flight at the agent before killing.
    let rec = d.provider.record_file(&instance);
    for _ in 0..200 {
        if read_records(&rec).iter().any(|r| r.method == "WaitProcess") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(d.provider.kill_forwarder(&instance).await);
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .expect("the caller gets an answer, not a hang");
    match r {
        Ok(resp) => {
            assert_eq!(resp.stream_id, 1);
            assert_eq!(resp.code, ttrpc::Code::UNAVAILABLE, "{}", resp.message);
        }
        Err(e) => panic!("expected an error response, got a bare {e}"),
    }
    d.stop_all().await;
}

/// StopVM while a call is pending (runtime-rs keeps a GetOOMEvent pending
/// for the sandbox's life): the caller gets UNAVAILABLE, not a bare close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_pending_at_stop_vm_is_answered_unavailable() {
    let d = TestDaemon::start(true).await;
    let (sock, instance) = d.running_sandbox("pend1").await;
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(&request_frame(3, "grpc.AgentService", "GetOOMEvent", &[]))
        .await
        .unwrap();
    let rec = d.provider.record_file(&instance);
    for _ in 0..500 {
        if read_records(&rec).iter().any(|r| r.method == "GetOOMEvent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        read_records(&rec).iter().any(|r| r.method == "GetOOMEvent"),
        "the call reached the agent"
    );
    d.manager().stop_vm("pend1").await.expect("StopVM");
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .expect("the caller gets an answer, not a hang");
    match r {
        Ok(resp) => {
            assert_eq!(resp.stream_id, 3);
            assert_eq!(resp.code, ttrpc::Code::UNAVAILABLE, "{}", resp.message);
            assert!(resp.message.contains("stopping"), "{}", resp.message);
        }
        Err(e) => panic!("expected an UNAVAILABLE answer, got a bare {e}"),
    }
    d.manager().wait_teardowns().await;
}

/// Readiness checks and relayed shim connections end with a proper TLS
/// close: the forwarder logs no connection that ended with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_sees_clean_closes_only() {
    let d = TestDaemon::start(true).await;
    let (sock, instance) = d.running_sandbox("clean1").await;
    for _ in 0..3 {
        let r = raw_call(&sock, "grpc.Health", "Check", &[]).await.unwrap();
        assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    }
    let log = d
        .provider
        .record_file(&instance)
        .with_file_name("forwarder.log");
    // The relayed connections have ended at the forwarder once it logged
    // their end or nothing more arrives; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("listening"), "{text}");
    assert!(
        !text.contains("ended with an error"),
        "the forwarder saw unclean closes:\n{text}"
    );
    d.stop_all().await;
}
