//! Shared by the AWS tests: a moto server guard and a VPC/subnet/security
//! group with an AMI moto knows.

#![allow(dead_code)]

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
    /// Starts moto, or returns None (with the reason printed) where it is
    /// not installed — except in CI, where that is a failure.
    pub fn start() -> Option<Moto> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spawn = |prog: &str, pre: &[&str]| {
            Command::new(prog)
                .args(pre)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[]).or_else(|_| spawn("python3", &["-m", "moto.server"]));
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI must have moto (scripts/setup.sh installs it): {e}"
                );
                eprintln!("SKIPPED: moto_server not installed (pip install 'moto[server]'): {e}");
                return None;
            }
        };
        let mut m = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..150 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(m);
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not listen on {port} within 15 s");
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

/// A VPC, subnet and security group in moto, and an AMI moto knows.
pub struct Net {
    pub subnet: String,
    pub sg: String,
    pub ami: String,
}

pub async fn net(c: &aws_sdk_ec2::Client) -> Net {
    let vpc = c
        .create_vpc()
        .cidr_block("10.50.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let sub = c
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.50.1.0/24")
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
