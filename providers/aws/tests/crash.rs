//! The crash test with the AWS provider against moto: the real
//! `cloud-api-adaptor aws` binary is SIGKILLed at random points of
//! create/start/stop cycles and started again each time. No VM runs
//! behind moto's instances, so no sandbox ever becomes ready: every
//! instance the adaptor launched must end terminated — by the failed
//! StartVM, by recovery of a start the kill interrupted, or by a resumed
//! teardown — and none may be left running once the adaptor is ready again.

mod common;

use aws_sdk_ec2::types::Filter;
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use common::{net, Moto};
use peerpod_tests::bins::bin_path;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "aws-crash-node";

struct Adaptor {
    dir: tempfile::TempDir,
    moto_url: String,
    ami: String,
    subnet: String,
    probe_port: u16,
    child: Option<Child>,
}

impl Drop for Adaptor {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Adaptor {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("hv.sock")
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("adaptor.log"))
            .unwrap();
        let child = Command::new(bin_path("cloud-api-adaptor"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--pods-dir")
            .arg(self.dir.path().join("pods"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--node-name", NODE, "--limit-per-node", "100"])
            .args(["aws", "--podvm-ami-id", &self.ami])
            .args(["--aws-subnet-id", &self.subnet])
            .args(["--aws-endpoint-url", &self.moto_url])
            .args(["--aws-region", "us-east-1", "--aws-ip-wait-seconds", "10"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "PEERPOD_PROBE_LISTEN",
                format!("127.0.0.1:{}", self.probe_port),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start cloud-api-adaptor aws (built with --features aws)");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("adaptor.log")).unwrap_or_default()
    }

    /// Waits for `/readyz` (recovery finished, socket served).
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the adaptor exited ({status}):\n{}", self.log());
            }
            if readyz(self.probe_port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the adaptor was not ready within 30 s:\n{}", self.log());
    }
}

async fn readyz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}

/// This node's instances moto still has pending or running.
async fn live_instances(c: &aws_sdk_ec2::Client) -> Vec<String> {
    let out = c
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:peerpod-node")
                .values(NODE)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect()
}

async fn all_instances(c: &aws_sdk_ec2::Client) -> usize {
    let out = c
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:peerpod-node")
                .values(NODE)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

fn records(state: &Path) -> usize {
    std::fs::read_dir(state.join("sandboxes"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_aws_adaptor_leaves_no_running_instance() {
    let moto = Moto::start();
    let client = aws_sdk_ec2::Client::new(&moto.sdk().await);
    let n = net(&client).await;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test (aws/moto) seed {seed} (CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let probe_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut a = Adaptor {
        dir: tempfile::tempdir().unwrap(),
        moto_url: moto.url.clone(),
        ami: n.ami.clone(),
        subnet: n.subnet.clone(),
        probe_port,
        child: None,
    };
    a.start();
    a.wait_ready().await;

    let ids: Vec<String> = (0..6).map(|i| format!("awscrash{i}")).collect();
    let (cycles, mut kills) = (40, 0);
    for cycle in 0..cycles {
        let id = &ids[rng.random_range(0..ids.len())];
        // Kill somewhere in this cycle: while CreateVM/StartVM runs (the
        // launch, the wait for an address, readiness) or while StopVM's
        // teardown terminates the instance.
        // Every fourth cycle at least, so the run always crashes often.
        let kill_after = (cycle % 4 == 0 || rng.random_bool(0.25))
            .then(|| Duration::from_millis(rng.random_range(0..2500)));
        let socket = a.socket();
        let id2 = id.clone();
        let work = tokio::spawn(async move {
            let Ok(h) = Hypervisor::connect(&socket).await else {
                return;
            };
            let _ = h
                .create_vm(&id2, shim_annotations("web", "crash"), "")
                .await;
            let _ = h.start_vm(&id2, Duration::from_millis(1500)).await;
            let _ = h.stop_vm(&id2).await;
        });
        match kill_after {
            Some(after) => {
                tokio::time::sleep(after).await;
                a.kill();
                kills += 1;
                let _ = work.await;
                a.start();
                a.wait_ready().await;
            }
            None => {
                let _ = work.await;
            }
        }
        if cycle % 10 == 9 {
            println!("cycle {}: {kills} kills so far", cycle + 1);
        }
    }
    // One last kill with work in flight, then a clean start.
    let socket = a.socket();
    let last = tokio::spawn(async move {
        if let Ok(h) = Hypervisor::connect(&socket).await {
            let _ = h
                .create_vm("awscrashlast", shim_annotations("web", "crash"), "")
                .await;
            let _ = h.start_vm("awscrashlast", Duration::from_secs(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.kill();
    kills += 1;
    let _ = last.await;
    a.start();
    a.wait_ready().await;
    println!(
        "{cycles} cycles, {kills} kills; {} instances launched in all",
        all_instances(&client).await
    );
    assert!(
        kills >= 8,
        "the run must really crash the adaptor ({kills} kills)"
    );
    assert!(
        all_instances(&client).await > 0,
        "the adaptor launched instances"
    );

    // Recovered and ready: interrupted starts were swept, interrupted
    // teardowns resume; within a bounded time nothing of ours runs.
    let started = Instant::now();
    let mut left = live_instances(&client).await;
    while !left.is_empty() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = live_instances(&client).await;
    }
    assert!(
        left.is_empty(),
        "instances left running after recovery: {left:?}\n{}",
        a.log()
    );

    // The shim stops what it started; every record goes.
    let h = Hypervisor::connect(&a.socket()).await.unwrap();
    for id in ids.iter().map(String::as_str).chain(["awscrashlast"]) {
        h.stop_vm(id).await.unwrap();
    }
    let state = a.dir.path().join("state");
    let started = Instant::now();
    while records(&state) > 0 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        records(&state),
        0,
        "every sandbox record removed after StopVM"
    );
    assert!(live_instances(&client).await.is_empty());
    a.kill();
}
