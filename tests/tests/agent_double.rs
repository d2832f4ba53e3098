//! The kata-agent double behaves like the real kata-agent (4.1) where the
//! project depends on it (design.md, "Facts about the real Kata
//! components"): unknown methods and services get the real codes,
//! GetOOMEvent stays pending until DestroySandbox answers it with 13, and
//! the agent process exits after DestroySandbox.

use peerpod_protocols::agent::CreateContainerRequest;
use peerpod_protocols::protobuf::Message;
use peerpod_tests::agent_double::{read_records, OOM_DESTROYED_MESSAGE, TEST_ECHO_SERVICE};
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::{raw_call, read_response, request_frame};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The double binary on a socket in `dir`; killed when dropped.
struct Double {
    child: tokio::process::Child,
    socket: std::path::PathBuf,
    record: std::path::PathBuf,
}

async fn start(dir: &std::path::Path) -> Double {
    let socket = dir.join("agent.sock");
    let record = dir.join("records.jsonl");
    let child = tokio::process::Command::new(bin_path("kata-agent-double"))
        .arg("--socket")
        .arg(&socket)
        .arg("--record")
        .arg(&record)
        .kill_on_drop(true)
        .spawn()
        .expect("start kata-agent-double");
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            return Double {
                child,
                socket,
                record,
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the double did not listen on {}", socket.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_and_services_get_the_real_agents_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let r = raw_call(&d.socket, "grpc.AgentService", "SomeFutureCall", b"x")
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::UNIMPLEMENTED, "{}", r.message);
    let r = raw_call(&d.socket, "grpc.NoSuchService", "Check", b"")
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::INVALID_ARGUMENT, "{}", r.message);
    // Methods the double does serve still answer.
    let r = raw_call(&d.socket, "grpc.Health", "Check", b"")
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let r = raw_call(&d.socket, TEST_ECHO_SERVICE, "Echo", b"abc")
        .await
        .unwrap();
    assert_eq!(
        (r.code, r.payload.as_slice()),
        (ttrpc::Code::OK, &b"abc"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_event_is_pending_until_destroy_sandbox_then_the_agent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path()).await;
    let mut oom = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    oom.write_all(&request_frame(1, "grpc.AgentService", "GetOOMEvent", &[]))
        .await
        .unwrap();
    for _ in 0..500 {
        if read_records(&d.record)
            .iter()
            .any(|r| r.method == "GetOOMEvent")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Pending: no answer while the sandbox lives.
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut oom)).await;
    assert!(early.is_err(), "GetOOMEvent answered early: {early:?}");

    // A container (no network namespace in its spec: the agent's own).
    let mut c = CreateContainerRequest::new();
    c.container_id = "c1".into();
    let r = raw_call(
        &d.socket,
        "grpc.AgentService",
        "CreateContainer",
        &c.write_to_bytes().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);

    let r = raw_call(&d.socket, "grpc.AgentService", "DestroySandbox", b"")
        .await
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::OK, "{}", r.message);
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut oom))
        .await
        .expect("GetOOMEvent answered at DestroySandbox")
        .unwrap();
    assert_eq!(r.code, ttrpc::Code::INTERNAL, "{}", r.message);
    assert_eq!(r.message, OOM_DESTROYED_MESSAGE);
    let status = tokio::time::timeout(Duration::from_secs(10), d.child.wait())
        .await
        .expect("the agent exits after DestroySandbox")
        .unwrap();
    assert!(status.success(), "{status}");
}
