//! The adaptor's OCI image, end to end without Docker: install/image/build.sh
//! makes it from Debian packages and the workspace's binaries (the debug
//! builds the test suite has; releases use --build), a private containerd
//! imports it with `ctr images import`, runs `cloud-api-adaptor --version`
//! and `peerpod-ctrl --version` (the same binary under a linked name)
//! from it, then runs it as the chart does (no subcommand, the provider
//! from CLOUD_PROVIDER) with the local provider and a host directory
//! mounted at /run/peerpod: the remote hypervisor socket appears on the
//! host and answers Version. Sizes are printed; the Debian layer is held
//! to a budget, and a release image to the 40 MiB target.

use peerpod_tests::bins::bin_path;
use peerpod_tests::bins::workspace_root;
use peerpod_tests::containerd::{require_tool, Containerd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// The compressed sizes of the image's layers, in order (from the OCI
/// archive's index and manifest), and its config.
fn layers(archive: &Path) -> (Vec<u64>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-xf")
        .arg(archive)
        .status()
        .unwrap();
    assert!(st.success());
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        let p = dir.path().join("blobs/sha256").join(hex);
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    let sizes = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    (sizes, config)
}

#[test]
fn image_builds_imports_runs_and_serves_its_socket() {
    for t in ["mmdebstrap", "umoci", "python3", "readelf", "strip"] {
        require_tool(t);
    }
    let adaptor = bin_path("cloud-api-adaptor");
    let bin_dir = adaptor.parent().unwrap().to_path_buf();
    let agent = bin_path("kata-agent-double");
    let links_libvirt = String::from_utf8_lossy(
        &Command::new("readelf")
            .arg("-d")
            .arg(&adaptor)
            .output()
            .unwrap()
            .stdout,
    )
    .contains("libvirt.so");
    let flavor = if links_libvirt { "libvirt" } else { "cloud" };
    let target_dir = bin_dir.parent().unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("image.oci.tar");
    let tag = format!("test-{}", std::process::id());
    let out = Command::new(workspace_root().join("install/image/build.sh"))
        .args([
            "--flavor",
            flavor,
            "--tag",
            &tag,
            "--repository",
            "localhost/peerpods/test",
        ])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&archive)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut last = stdout.lines().rev();
    assert_eq!(last.next(), Some(archive.to_str().unwrap()));
    let suffix = if links_libvirt { "-libvirt" } else { "" };
    let image = format!("localhost/peerpods/test:{tag}{suffix}");
    assert_eq!(last.next(), Some(image.as_str()));

    // Two layers (Debian, then our binaries), the entrypoint the chart uses.
    let (sizes, config) = layers(&archive);
    assert_eq!(sizes.len(), 2, "Debian layer + binaries layer: {sizes:?}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/cloud-api-adaptor"])
    );
    assert_eq!(
        config["config"]["Labels"]["io.peerpods.image.flavor"],
        flavor
    );
    let total: u64 = sizes.iter().sum();
    let release = bin_dir.ends_with("release");
    eprintln!(
        "image {image} ({} binaries): Debian layer {:.1} MiB, binaries {:.1} MiB, total {:.1} MiB compressed",
        if release { "release" } else { "debug" },
        sizes[0] as f64 / MIB as f64,
        sizes[1] as f64 / MIB as f64,
        total as f64 / MIB as f64
    );
    // The Debian part: glibc, libgcc and the CA bundle (cloud: 3.3 MiB
    // measured), plus libvirt's client library and what it links (libvirt:
    // 32.8 MiB measured; ICU's data, which libxml2 links, is 30 MiB of it
    // unpacked).
    let base_budget = if links_libvirt { 36 * MIB } else { 4 * MIB };
    assert!(
        sizes[0] <= base_budget,
        "Debian layer {} bytes > {base_budget}",
        sizes[0]
    );
    if release && !links_libvirt {
        assert!(total <= 40 * MIB, "release image {total} bytes > 40 MiB");
    }

    let ctd = Containerd::start();
    let imported = ctd.ctr_ok(&["images", "import", archive.to_str().unwrap()]);
    assert!(imported.contains(&image), "{imported}");
    let listed = ctd.ctr_ok(&["images", "ls", "-q"]);
    assert!(listed.lines().any(|l| l == image), "{listed}");

    let id = format!("version-{}", std::process::id());
    ctd.track(&id);
    let version = ctd.ctr_ok(&["run", "--rm", &image, &id, "cloud-api-adaptor", "--version"]);
    assert_eq!(
        version.trim(),
        format!("cloud-api-adaptor {}", env!("CARGO_PKG_VERSION"))
    );
    // The controller is the same binary under its own name (a link).
    let id = format!("ctrl-version-{}", std::process::id());
    ctd.track(&id);
    let version = ctd.ctr_ok(&["run", "--rm", &image, &id, "peerpod-ctrl", "--version"]);
    assert_eq!(
        version.trim(),
        format!("peerpod-ctrl {}", env!("CARGO_PKG_VERSION"))
    );

    // As the chart runs it: no arguments (the image's entrypoint), the
    // provider from CLOUD_PROVIDER, /run/peerpod from the host.
    let run_dir = work.path().join("run-peerpod");
    std::fs::create_dir_all(&run_dir).unwrap();
    let id = format!("local-{}", std::process::id());
    ctd.track(&id);
    let mount_run = format!(
        "type=bind,src={},dst=/run/peerpod,options=rbind:rw",
        run_dir.display()
    );
    // The local provider's instances run a kata-agent: the test double,
    // which is a fixture and not part of the image.
    let mount_agent = format!(
        "type=bind,src={},dst=/usr/local/bin/kata-agent-double,options=rbind:ro",
        agent.display()
    );
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--mount",
        &mount_run,
        "--mount",
        &mount_agent,
        "--env",
        "CLOUD_PROVIDER=local",
        "--env",
        "PEERPOD_PROBE_LISTEN=off",
        "--env",
        "NODE_NAME=image-test",
        &image,
        &id,
    ]);
    let socket = run_dir.join("hypervisor.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = loop {
        if socket.exists() {
            let v = rt.block_on(async {
                let h = cloud_api_adaptor::client::Hypervisor::connect(&socket).await?;
                h.version().await
            });
            if let Ok(v) = v {
                break v;
            }
        }
        let tasks = ctd.ctr_ok(&["tasks", "ls"]);
        assert!(
            Instant::now() < deadline && !tasks.contains("STOPPED"),
            "the adaptor in the image did not serve {} (tasks: {tasks})",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(answered, cloud_api_adaptor::service::API_VERSION);
    ctd.remove(&id);
}
