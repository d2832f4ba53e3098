//! Shared by the AWS tests: a moto server guard, a VPC/subnet/security
//! group with an AMI moto knows, and a recording HTTP proxy in front of
//! moto that can answer RunInstances for chosen instance types with EC2's
//! `InsufficientInstanceCapacity` error (moto never runs out of capacity).

#![allow(dead_code)]

#[path = "../../../../test-fixtures/cloud-userdata/fixture.rs"]
pub mod userdata_fixture;

/// What the instance reads from IMDS (`/latest/user-data`, decoded) given
/// the user data EC2 holds for it (DescribeInstanceAttribute, as
/// RunInstances got it): the shared fixture
/// test-fixtures/cloud-userdata/aws.json says how each side is encoded,
/// the forwarder's IMDS stand-in reads the same file.
pub fn vm_reads(written: &str) -> Vec<u8> {
    let f = userdata_fixture::fixture("aws");
    let served = userdata_fixture::served(&f, written.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "EC2 holds user data that is not {}: {e}",
            userdata_fixture::text(&f, "/write/encoding")
        )
    });
    userdata_fixture::decode(userdata_fixture::text(&f, "/read/body_encoding"), &served).unwrap()
}

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A moto server, killed on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto; fails the test where it is not installed
    /// (scripts/setup.sh installs it).
    pub fn start() -> Moto {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spawn = |prog: &str, pre: &[&str]| {
            Command::new(prog)
                // RunInstances with an unknown image fails as on AWS.
                .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                .args(pre)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[]).or_else(|_| spawn("python3", &["-m", "moto.server"]));
        let child = child.unwrap_or_else(|e| {
            panic!("moto_server is not installed (scripts/setup.sh installs moto[server]): {e}")
        });
        let mut m = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..150 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return m;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not listen on {port} within 15 s");
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        sdk_at(&self.url).await
    }
}

/// The SDK configured for a local endpoint with moto's test credentials.
pub async fn sdk_at(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// A VPC, subnet and security group in moto, and an AMI moto knows. The
/// VPC is in 127.0.0.0/8: the adaptor tests dial the instances' addresses
/// (nothing answers there), and that traffic must stay on this machine.
pub struct Net {
    pub subnet: String,
    pub sg: String,
    pub ami: String,
}

pub async fn net(c: &aws_sdk_ec2::Client) -> Net {
    let vpc = c
        .create_vpc()
        .cidr_block("127.50.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let sub = c
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("127.50.1.0/24")
        .send()
        .await
        .unwrap();
    let subnet = sub.subnet().unwrap().subnet_id().unwrap().to_string();
    let sg = c
        .create_security_group()
        .group_name("podvm")
        .description("peer pods")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    let sg = sg.group_id().unwrap().to_string();
    let imgs = c.describe_images().send().await.unwrap();
    let ami = imgs.images()[0].image_id().unwrap().to_string();
    Net { subnet, sg, ami }
}

impl Net {
    /// The provider settings for this network: its AMI, subnet and
    /// security group, and a 20 s wait for the instance's address.
    pub fn raw_config(&self) -> peerpod_provider_aws::RawAwsConfig {
        peerpod_provider_aws::RawAwsConfig {
            ami_id: Some(self.ami.clone()),
            subnet_id: Some(self.subnet.clone()),
            security_group_ids: Some(self.sg.clone()),
            ip_wait_secs: Some("20".into()),
            ..Default::default()
        }
    }
}

/// An HTTP/1.1 proxy between the SDK and moto: records every request body
/// and refuses RunInstances for the listed instance types as EC2 does
/// when a zone has no capacity. Everything else goes to moto unchanged.
pub struct Ec2Proxy {
    pub url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ec2Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ec2Proxy {
    pub async fn start(moto_url: &str, no_capacity_for: &[&str]) -> Ec2Proxy {
        let upstream = moto_url.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused: Vec<String> = no_capacity_for.iter().map(|s| s.to_string()).collect();
        let rec = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (up, rec, refused) = (upstream.clone(), rec.clone(), refused.clone());
                tokio::spawn(async move {
                    let _ = proxy_connection(conn, &up, &rec, &refused).await;
                });
            }
        });
        Ec2Proxy { url, bodies, task }
    }

    /// The RunInstances request bodies seen so far (form-encoded).
    pub fn run_instances_bodies(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains("Action=RunInstances"))
            .cloned()
            .collect()
    }
}

/// Reads one HTTP message (head + Content-Length body); None at EOF.
async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    r: &mut tokio::io::BufReader<R>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the test proxy handles Content-Length bodies only: {head}"
    );
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Some((head, body)))
}

async fn proxy_connection(
    conn: tokio::net::TcpStream,
    upstream: &str,
    rec: &std::sync::Mutex<Vec<String>>,
    refused: &[String],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = conn.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let up = tokio::net::TcpStream::connect(upstream).await?;
    let (ur, mut uw) = up.into_split();
    let mut ur = tokio::io::BufReader::new(ur);
    while let Some((head, body)) = read_message(&mut r).await? {
        let text = String::from_utf8_lossy(&body).to_string();
        rec.lock().unwrap().push(text.clone());
        let no_capacity = text.contains("Action=RunInstances")
            && refused.iter().any(|t| {
                text.contains(&format!("InstanceType={t}&"))
                    || text.ends_with(&format!("InstanceType={t}"))
            });
        if no_capacity {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                <Code>InsufficientInstanceCapacity</Code><Message>We currently do not have \
                sufficient capacity for the requested instance type in the Availability Zone \
                you requested.</Message></Error></Errors><RequestID>test-proxy</RequestID></Response>";
            // 400 keeps the SDK from retrying the same type (a 5xx would be
            // retried by its standard mode first).
            w.write_all(
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                    xml.len()
                )
                .as_bytes(),
            )
            .await?;
            continue;
        }
        uw.write_all(head.as_bytes()).await?;
        uw.write_all(&body).await?;
        let Some((rhead, rbody)) = read_message(&mut ur).await? else {
            return Ok(());
        };
        w.write_all(rhead.as_bytes()).await?;
        w.write_all(&rbody).await?;
    }
    Ok(())
}
