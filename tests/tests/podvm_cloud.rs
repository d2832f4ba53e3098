//! The cloud pod VM disk (`podvm-image/build.sh --variant debian`), built
//! once per run (cached by the hash of its inputs): its layout read back
//! independently of the tools that wrote it (GPT and FAT/ext4 structures
//! parsed here; mtools and debugfs for the files), the Azure VHD and GCE
//! tar conversions, and a boot through UEFI firmware under QEMU TCG as an
//! EC2 instance, to the forwarder answering a Health check over mutual TLS
//! with the user data read from an IMDSv2 stand-in.
//!
//! These tests need root, mmdebstrap, dosfstools, mtools, fdisk,
//! e2fsprogs, qemu, ovmf and socat (`scripts/setup.sh --podvm-debian`) and
//! network access to the Debian archive; they fail, never skip, without.

use cloud_api_adaptor::ca::NodeCa;
use peerpod_tests::cloud_disk::{aws_imds, debian_image, require_facilities, HttpStandIn, UefiVm};
use peerpod_tests::harness::{read_response, request_frame};
use peerpod_vmconfig::userdata::UserData;
use peerpod_vmconfig::ForwarderConfig;
use rustls::pki_types::ServerName;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

fn image() -> PathBuf {
    require_facilities();
    debian_image().unwrap_or_else(|e| panic!("building the debian pod VM image: {e}"))
}

fn read_at(f: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(f).unwrap();
    file.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0; len];
    file.read_exact(&mut b).unwrap();
    b
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A GPT GUID as text (the first three fields are little-endian on disk).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{}-{}",
        u32le(b, 0),
        u16le(b, 4),
        u16le(b, 6),
        b[8..10]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>(),
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

struct Part {
    type_guid: String,
    first_lba: u64,
    last_lba: u64,
    name: String,
}

impl Part {
    fn offset(&self) -> u64 {
        self.first_lba * 512
    }
    fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * 512
    }
}

/// The protective MBR, the primary and backup GPT headers and the used
/// partition entries, parsed from the disk's bytes.
fn gpt(disk: &Path) -> Vec<Part> {
    let len = std::fs::metadata(disk).unwrap().len();
    let mbr = read_at(disk, 0, 512);
    assert_eq!(
        &mbr[510..512],
        &[0x55, 0xAA],
        "no boot signature in the MBR"
    );
    assert_eq!(mbr[446 + 4], 0xEE, "the MBR is not GPT's protective MBR");
    let hdr = read_at(disk, 512, 512);
    assert_eq!(&hdr[0..8], b"EFI PART", "no primary GPT header at LBA 1");
    let backup_lba = u64le(&hdr, 32);
    assert_eq!(
        backup_lba,
        len / 512 - 1,
        "backup header not at the last LBA"
    );
    assert_eq!(
        &read_at(disk, backup_lba * 512, 8)[..],
        b"EFI PART",
        "no backup GPT header"
    );
    let (entries_lba, n, size) = (u64le(&hdr, 72), u32le(&hdr, 80), u32le(&hdr, 84));
    let table = read_at(disk, entries_lba * 512, (n * size) as usize);
    table
        .chunks(size as usize)
        .filter(|e| e[0..16].iter().any(|&x| x != 0))
        .map(|e| Part {
            type_guid: guid(&e[0..16]),
            first_lba: u64le(e, 32),
            last_lba: u64le(e, 40),
            name: String::from_utf16_lossy(
                &e[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&c| c != 0)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_disk_is_a_uefi_bootable_gpt_disk() {
    let dir = image();
    let disk = dir.join("disk.raw");
    let len = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(len % (1 << 30), 0, "GCE wants a whole number of GiB: {len}");

    let parts = gpt(&disk);
    assert_eq!(parts.len(), 2, "ESP and root");
    let (esp, root) = (&parts[0], &parts[1]);
    assert_eq!(esp.type_guid, ESP_TYPE, "partition 1 is the ESP");
    assert_eq!(
        root.type_guid, ROOT_X86_64_TYPE,
        "partition 2 is an x86-64 root"
    );
    assert_eq!(root.name, "podvm-root");
    for p in &parts {
        assert_eq!(p.offset() % MIB, 0, "{} not 1 MiB aligned", p.name);
    }
    assert!(
        esp.offset() + esp.size() <= root.offset(),
        "partitions overlap"
    );
    assert!(
        root.offset() + root.size() <= len - 33 * 512,
        "root overlaps the backup GPT"
    );

    // The ESP: FAT32 with the removable-media loader path, systemd-boot's
    // entry, and the kernel and initrd it names.
    let boot = read_at(&disk, esp.offset(), 512);
    assert_eq!(&boot[82..90], b"FAT32   ", "the ESP is not FAT32");
    assert_eq!(&boot[510..512], &[0x55, 0xAA]);
    let img = format!("{}@@{}", disk.display(), esp.offset());
    let tmp = tempfile::tempdir().unwrap();
    let efi = tmp.path().join("BOOTX64.EFI");
    run(
        "mcopy",
        &[
            "-i",
            &img,
            "::/EFI/BOOT/BOOTX64.EFI",
            &efi.to_string_lossy(),
        ],
    );
    let pe = std::fs::read(&efi).unwrap();
    assert_eq!(&pe[0..2], b"MZ");
    let at = u32le(&pe, 0x3c) as usize;
    assert_eq!(&pe[at..at + 4], b"PE\0\0");
    assert_eq!(u16le(&pe, at + 4), 0x8664, "BOOTX64.EFI is not x86-64");
    assert_eq!(u16le(&pe, at + 24), 0x20b, "BOOTX64.EFI is not PE32+");
    assert_eq!(
        u16le(&pe, at + 24 + 68),
        10,
        "BOOTX64.EFI is not an EFI application"
    );
    assert!(
        pe.windows(12).any(|w| w == b"systemd-boot"),
        "BOOTX64.EFI is not systemd-boot"
    );
    let loader = run("mtype", &["-i", &img, "::/loader/loader.conf"]);
    assert!(loader.contains("default podvm.conf"), "{loader}");
    assert!(
        loader.contains("editor no"),
        "the command line must not be editable: {loader}"
    );
    let entry = run("mtype", &["-i", &img, "::/loader/entries/podvm.conf"]);
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options in the entry: {entry}"));
    let cmdline = std::fs::read_to_string(dir.join("cmdline")).unwrap();
    assert_eq!(
        options.trim(),
        cmdline.trim(),
        "entry and cmdline file differ"
    );
    for want in [
        "root=LABEL=podvm-root",
        "console=ttyS0,115200n8",
        "panic=-1",
    ] {
        assert!(
            options.split_whitespace().any(|o| o == want),
            "{want} missing: {options}"
        );
    }
    for (name, file) in [("vmlinuz", "/vmlinuz"), ("initrd.img", "/initrd.img")] {
        assert!(
            entry.contains(&format!(" {file}\n")),
            "entry does not load {file}: {entry}"
        );
        let got = tmp.path().join(name);
        run(
            "mcopy",
            &["-i", &img, &format!("::{file}"), &got.to_string_lossy()],
        );
        assert!(
            std::fs::read(&got).unwrap() == std::fs::read(dir.join(name)).unwrap(),
            "{file} on the ESP is not the build's {name}"
        );
    }

    // The root: ext4 labelled podvm-root with our binaries, units enabled,
    // the agent's config, and no getty.
    let sb = read_at(&disk, root.offset() + 1024, 1024);
    assert_eq!(u16le(&sb, 0x38), 0xEF53, "partition 2 is not ext2/3/4");
    assert_eq!(&sb[0x78..0x78 + 11], b"podvm-root\0");
    let fs = format!("{}?offset={}", disk.display(), root.offset());
    let debugfs = |req: &str| run("debugfs", &["-R", req, &fs]);
    let bins = debugfs("ls -l /usr/local/bin");
    for b in [
        "agent-protocol-forwarder",
        "process-user-data",
        "kata-agent",
    ] {
        assert!(bins.contains(b), "/usr/local/bin/{b} missing: {bins}");
    }
    let wants = debugfs("ls /etc/systemd/system/multi-user.target.wants");
    for u in [
        "peerpod-user-data.service",
        "kata-agent.service",
        "agent-protocol-forwarder.service",
        "systemd-networkd.service",
    ] {
        assert!(wants.contains(u), "{u} not enabled: {wants}");
    }
    for masked in ["serial-getty@.service", "getty@.service"] {
        let st = debugfs(&format!("stat /etc/systemd/system/{masked}"));
        assert!(st.contains("/dev/null"), "{masked} is not masked: {st}");
    }
    let unit = debugfs("cat /etc/systemd/system/peerpod-user-data.service");
    assert!(
        unit.lines()
            .any(|l| l.starts_with("After=") && l.contains("network-online.target")),
        "the user-data step must wait for the network (metadata services): {unit}"
    );
    let agent_unit = debugfs("cat /etc/systemd/system/kata-agent.service");
    assert!(
        agent_unit.contains("--config /etc/kata-agent/agent-config.toml"),
        "{agent_unit}"
    );
    let cfg = debugfs("cat /etc/kata-agent/agent-config.toml");
    assert!(
        cfg.contains("server_addr = \"unix:///run/kata-containers/agent.sock\""),
        "{cfg}"
    );
    assert!(cfg.contains("guest_components_procs = \"none\""), "{cfg}");
}

#[test]
fn debian_disk_converts_to_azure_vhd_and_gce_tar() {
    let dir = image();
    let raw = dir.join("disk.raw");
    let raw_len = std::fs::metadata(&raw).unwrap().len();

    // Azure: a fixed VHD is the disk's bytes followed by a 512-byte footer
    // ("conectix", disk type 2 = fixed, current size = the data's size),
    // whose virtual size is a whole number of MiB.
    let vhd = dir.join("disk.vhd");
    let vhd_len = std::fs::metadata(&vhd).unwrap().len();
    assert_eq!(vhd_len, raw_len + 512, "a fixed VHD is data + footer");
    let footer = read_at(&vhd, vhd_len - 512, 512);
    assert_eq!(&footer[0..8], b"conectix", "no VHD footer");
    let be32 = |at: usize| u32::from_be_bytes(footer[at..at + 4].try_into().unwrap());
    let be64 = |at: usize| u64::from_be_bytes(footer[at..at + 8].try_into().unwrap());
    assert_eq!(be32(60), 2, "disk type is not fixed");
    assert_eq!(be64(48), raw_len, "VHD current size is not the disk's");
    assert_eq!(be64(48) % MIB, 0, "Azure wants a whole number of MiB");
    let info = run(
        "qemu-img",
        &["info", "-f", "vpc", "--output=json", &vhd.to_string_lossy()],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(raw_len), "{info}");
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "vpc",
            "-F",
            "raw",
            &vhd.to_string_lossy(),
            &raw.to_string_lossy(),
        ],
    );

    // GCE: gzip'd tar, oldgnu format, exactly one member disk.raw.
    let tgz = dir.join("podvm-gce.tar.gz");
    let gz = read_at(&tgz, 0, 2);
    assert_eq!(gz, [0x1f, 0x8b], "not gzip");
    let mut head = vec![0; 512];
    let mut unzip = Command::new("gzip")
        .args(["-dc", &tgz.to_string_lossy()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    unzip.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let _ = unzip.kill();
    let _ = unzip.wait();
    assert_eq!(&head[0..9], b"disk.raw\0", "first member is not disk.raw");
    assert_eq!(
        &head[257..265],
        b"ustar  \0",
        "not the (old) GNU tar format"
    );
    let list = run("tar", &["-tvzf", &tgz.to_string_lossy()]);
    let members: Vec<&str> = list.lines().collect();
    assert_eq!(members.len(), 1, "{list}");
    let size: u64 = members[0]
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in {list}"));
    assert_eq!(size, raw_len, "disk.raw in the tar has another size");
    assert!(members[0].ends_with(" disk.raw"), "{list}");
}

/// A Health check through the forwarder published on 127.0.0.1:`port`;
/// Ok(()) when the agent behind it answered OK.
async fn health(port: u16, ca: &NodeCa, name: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let client = ca.client_config().map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(&request_frame(1, "grpc.Health", "Check", &[]))
        .await
        .map_err(|e| format!("write: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(10), read_response(&mut tls)).await {
        Ok(Ok(r)) if r.code == ttrpc::Code::OK => Ok(()),
        Ok(Ok(r)) => Err(format!("agent answered {:?}", r.code)),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_disk_boots_through_uefi_as_an_ec2_instance_to_the_forwarder() {
    let dir = image();
    let state = tempfile::tempdir().unwrap();
    let ca = NodeCa::load_or_create(state.path()).unwrap();
    let name = "podvm-uefi-test";
    let ud = UserData {
        forwarder: ForwarderConfig::new("uefi-boot", Some(ca.issue_server(name).unwrap())),
        initdata: None,
        registry_auth: None,
    };
    let imds = aws_imds(ud.to_cloud_config()).unwrap();
    let mut vm = UefiVm::boot_as_ec2(&dir.join("disk.raw"), imds.addr).unwrap();
    let deadline = Duration::from_secs(300);
    let mut last: String;
    let ready = loop {
        if let Some(why) = vm.exited() {
            panic!("{why}\nconsole:\n{}", vm.console_text());
        }
        match health(vm.forwarder_port, &ca, name).await {
            Ok(()) => break vm.started.elapsed(),
            Err(e) => last = e,
        }
        if vm.started.elapsed() > deadline {
            panic!(
                "no Health answer through the forwarder in {deadline:?} (last: {last})\nconsole:\n{}",
                vm.console_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("UEFI boot (TCG) to the forwarder answering: {ready:?}");
    let console = vm.console_text();
    // Where the time went (kernel uptime stamps; before "Linux version" is
    // the firmware and systemd-boot).
    for l in console.lines().filter(|l| {
        [
            "Linux version",
            "reading user data",
            "user data written",
            "forwarder listening",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("  console: {}", l.chars().take(120).collect::<String>());
    }
    // Firmware → systemd-boot → the entry's kernel: systemd-boot passes the
    // entry's initrd as initrd= on the command line it gives the kernel.
    assert!(
        console.contains("BdsDxe: starting Boot"),
        "not booted by the firmware:\n{console}"
    );
    assert!(
        console.contains("Command line: initrd=\\initrd.img root=LABEL=podvm-root"),
        "the kernel was not started by systemd-boot's entry:\n{console}"
    );
    assert!(
        console.contains("reading user data from: aws"),
        "the VM did not recognise EC2 from its DMI strings:\n{console}"
    );
    assert!(
        !console.contains("login:"),
        "a getty is running on the console"
    );
    let seen = imds.requests();
    assert!(!seen.is_empty(), "the VM never called the metadata service");
    assert_eq!(
        seen[0].method, "PUT",
        "IMDSv2 starts with a token: {seen:?}"
    );
    assert_eq!(seen[0].path, "/latest/api/token");
    assert!(
        seen.iter().any(|r| r.method == "GET"
            && r.path == "/latest/user-data"
            && r.header("X-aws-ec2-metadata-token") == Some(peerpod_tests::cloud_disk::IMDS_TOKEN)),
        "no user-data GET with the session token: {seen:?}"
    );
}

/// The image's Azure "provisioning ready" step (`azure-ready`, run by
/// `azure-ready.service`) against a WireServer stand-in serving a goal
/// state of Azure's shape: the first goal-state request fails (the
/// WireServer is often not ready at first boot) and is retried; the health
/// report carries the goal state's incarnation, container id and role
/// instance id in state Ready, with the protocol version header.
#[test]
fn azure_ready_reports_the_goal_state_ready_to_the_wireserver() {
    let goal_state = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/azure-wireserver-goalstate.xml"),
    )
    .unwrap();
    let ws = HttpStandIn::start(move |req, n| {
        if req.header("x-ms-version") != Some("2012-11-30") {
            return (400, b"missing x-ms-version".to_vec());
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/machine/?comp=goalstate") if n == 0 => (503, Vec::new()),
            ("GET", "/machine/?comp=goalstate") => (200, goal_state.clone()),
            ("POST", "/machine/?comp=health") => (200, Vec::new()),
            _ => (404, Vec::new()),
        }
    })
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../podvm-image/debian/rootfs/usr/local/lib/peerpod/azure-ready");
    let out = Command::new("sh")
        .arg(&script)
        .env("AZURE_WIRESERVER", ws.addr.to_string())
        .env("AZURE_READY_DEADLINE", "60")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = ws.requests();
    let methods: Vec<_> = seen.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "POST"], "{seen:?}");
    let post = &seen[2];
    assert_eq!(post.header("Content-Type"), Some("text/xml;charset=utf-8"));
    let body = String::from_utf8_lossy(&post.body);
    for want in [
        "<GoalStateIncarnation>3</GoalStateIncarnation>",
        "<ContainerId>4a6e2a7d-1c0f-4f64-9d5e-7b3e20c1a9f8</ContainerId>",
        "<InstanceId>0c9d7e32-5b7a-4e0b-8f1d-2a6c4e8b9d10._podvm-sb1-0</InstanceId>",
        "<Health><State>Ready</State></Health>",
    ] {
        assert!(body.contains(want), "{want} not in the report: {body}");
    }
    assert!(body.starts_with("<?xml"), "{body}");
}

/// A goal state without the ids is not answered with a report that Azure
/// would refuse: the step says what is missing and fails at its deadline.
#[test]
fn azure_ready_refuses_a_goal_state_without_ids() {
    let ws = HttpStandIn::start(|req, _| match req.method.as_str() {
        "GET" => (
            200,
            b"<GoalState><Incarnation>1</Incarnation></GoalState>".to_vec(),
        ),
        _ => (200, Vec::new()),
    })
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../podvm-image/debian/rootfs/usr/local/lib/peerpod/azure-ready");
    let out = Command::new("sh")
        .arg(&script)
        .env("AZURE_WIRESERVER", ws.addr.to_string())
        .env("AZURE_READY_DEADLINE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without incarnation, container id or instance id"),
        "{stderr}"
    );
    assert!(
        ws.requests().iter().all(|r| r.method == "GET"),
        "a report was sent"
    );
}
