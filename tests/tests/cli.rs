//! `peerpodctl` as an operator runs it, against a daemon started in the
//! test (and against none, for the error an operator sees then).

use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::TestDaemon;
use std::process::{Command, Output};

fn ctl(d: Option<&TestDaemon>, args: &[&str]) -> Output {
    let mut c = Command::new(bin_path("peerpodctl"));
    match d {
        Some(d) => {
            c.arg("--socket")
                .arg(&d.cfg.socket)
                .arg("--pods-dir")
                .arg(&d.cfg.pods_dir)
                .arg("--state-dir")
                .arg(&d.cfg.state_dir);
        }
        None => {
            c.args([
                "--socket",
                "/nonexistent/peerpod.sock",
                "--pods-dir",
                "/nonexistent/pods",
            ]);
        }
    }
    c.args(args).output().expect("run peerpodctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_check_list_stop() {
    let d = TestDaemon::start(true).await;
    // The CLI blocks; run it off the runtime that serves the daemon.
    let run = |args: Vec<String>| {
        let socket = d.cfg.socket.clone();
        let pods = d.cfg.pods_dir.clone();
        let state = d.cfg.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(bin_path("peerpodctl"))
                .arg("--socket")
                .arg(socket)
                .arg("--pods-dir")
                .arg(pods)
                .arg("--state-dir")
                .arg(state)
                .args(args)
                .output()
                .expect("run peerpodctl")
        })
    };
    let o = run(vec!["version".into()]).await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        cloud_api_adaptor::service::API_VERSION
    );

    let o = run([
        "create",
        "--pod",
        "web",
        "--namespace",
        "shop",
        "--id",
        "cli-sb-1",
        "--vcpus",
        "0.5",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("cli-sb-1 "),
        "{}",
        text(&o)
    );

    let o = run(vec!["check".into(), "cli-sb-1".into()]).await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SERVING"), "{}", text(&o));

    let o = run(vec!["list".into()]).await.unwrap();
    let out = text(&o);
    assert!(
        out.contains("cli-sb-1") && out.contains("shop/web") && out.contains("running"),
        "{out}"
    );

    let o = run(vec!["stop".into(), "cli-sb-1".into()]).await.unwrap();
    assert!(o.status.success(), "{}", text(&o));
    d.manager().wait_teardowns().await;
    let o = run(vec!["list".into()]).await.unwrap();
    assert!(!text(&o).contains("cli-sb-1"), "{}", text(&o));

    // Bad input is named.
    let o = run(["create", "--pod", "web", "--memory", "lots"]
        .map(String::from)
        .to_vec())
    .await
    .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("default_memory") && text(&o).contains("lots"),
        "{}",
        text(&o)
    );
}

#[test]
fn without_a_daemon_the_error_says_so() {
    for args in [&["version"][..], &["stop", "x"], &["check", "x"]] {
        let o = ctl(None, args);
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("is cloud-api-adaptor running?") || t.contains("daemon is not running"),
            "{args:?}: {t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_off_still_works_end_to_end() {
    let d = TestDaemon::start(false).await;
    let (sock, _) = d.running_sandbox("notls1").await;
    let status = cloud_api_adaptor::client::agent_health(&sock, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        status,
        peerpod_protocols::health::health_check_response::ServingStatus::SERVING
    );
    d.stop_all().await;
}
