//! The config drive: an ISO 9660 image labelled `cidata` holding
//! `user-data` (our #cloud-config document) and `meta-data` (NoCloud), the
//! layout cloud-init and our `process-user-data --source config-drive`
//! read.
//!
//! The image is made in memory by the `hadris-iso` crate, with Rock Ridge
//! and Joliet names so `user-data` keeps its lower-case, hyphenated name on
//! every reader. Nothing touches the host's disk on the way (the user data
//! carries the VM's TLS key) and it takes well under a millisecond; running
//! `xorriso` on a temporary directory, as before, took ~110 ms, and now and
//! then over a second.

use crate::error::Error;
use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::rrip::RripOptions;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File, InputFiles, IsoImageWriter};
use std::sync::Arc;

/// The volume label NoCloud looks for.
pub const LABEL: &str = "cidata";

/// The NoCloud `meta-data` document for an instance.
pub fn meta_data(instance: &str) -> String {
    format!("instance-id: {instance}\nlocal-hostname: {instance}\n")
}

/// Images are padded with zeros to at least this size. busybox's volume-id
/// probe (the minimal image's `findfs LABEL=cidata`) reads the first 68 KiB
/// of a device in one go and gives up on anything smaller; mkisofs-style
/// tools pad 300 KiB for old readers' read-ahead, too.
pub const MIN_IMAGE_BYTES: usize = 256 * 1024;

/// Builds the ISO image.
pub fn build(instance: &str, user_data: &[u8]) -> Result<Vec<u8>, Error> {
    let files = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: vec![
            File::File {
                name: Arc::new("meta-data".into()),
                contents: meta_data(instance).into_bytes(),
            },
            File::File {
                name: Arc::new("user-data".into()),
                contents: user_data.to_vec(),
            },
        ],
    };
    let options = IsoFormatOptions {
        volume_name: LABEL.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: None,
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        // The label stays lower case, as NoCloud wants it.
        strict_charset: false,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level1 {
                supports_lowercase: false,
                supports_rrip: true,
            },
            joliet: Some(JolietLevel::Level3),
            rock_ridge: Some(RripOptions {
                // Our own modes: the files are data, read-only for all.
                preserve_permissions: false,
                ..RripOptions::default()
            }),
            ..CreationFeatures::default()
        },
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(user_data.len() + 64 * 1024));
    IsoImageWriter::create(&mut out, files, options).map_err(|e| Error::Tool {
        step: "make the config drive".into(),
        why: e.to_string(),
    })?;
    let mut image = out.into_inner();
    if image.len() < MIN_IMAGE_BYTES {
        image.resize(MIN_IMAGE_BYTES, 0);
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// The primary volume descriptor sits at sector 16: type 1, "CD001",
    /// the volume id at byte 40.
    #[test]
    fn iso_has_the_cidata_label_and_both_files() {
        let ud = b"#cloud-config\nwrite_files: []\n";
        let iso = build("podvm-a-1", ud).expect("iso");
        assert!(iso.len() >= MIN_IMAGE_BYTES, "padded for busybox's probe");
        assert_eq!(iso.len() % 2048, 0);
        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(pvd[0], 1);
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(
            std::str::from_utf8(&pvd[40..72]).unwrap().trim_end(),
            "cidata"
        );
        let find = |needle: &[u8]| iso.windows(needle.len()).any(|w| w == needle);
        assert!(find(ud), "user data content is in the image");
        assert!(find(meta_data("podvm-a-1").as_bytes()));
        // Rock Ridge name entries keep the exact file names.
        assert!(find(b"user-data") && find(b"meta-data"));
    }

    /// An independent reader (xorriso, with Rock Ridge) sees both files
    /// under their exact names with their exact contents. The guest kernel
    /// reading it is covered by the libvirt end-to-end test.
    #[test]
    fn xorriso_reads_back_the_files() {
        let xorriso = Path::new("/usr/bin/xorriso");
        assert!(
            xorriso.exists(),
            "/usr/bin/xorriso is not installed: run scripts/setup.sh --libvirt"
        );
        let dir = tempfile::tempdir().unwrap();
        // Big enough to span several sectors.
        let ud: Vec<u8> = format!("#cloud-config\n# {}\n", "x".repeat(70_000)).into_bytes();
        let path = dir.path().join("cidata.iso");
        std::fs::write(&path, build("podvm-b-2", &ud).unwrap()).unwrap();
        for (name, want) in [
            ("user-data", ud.clone()),
            ("meta-data", meta_data("podvm-b-2").into_bytes()),
        ] {
            let to = dir.path().join(name);
            let out = Command::new(xorriso)
                .arg("-indev")
                .arg(&path)
                .args(["-osirrox", "on", "-extract"])
                .arg(format!("/{name}"))
                .arg(&to)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "xorriso -extract /{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(std::fs::read(&to).unwrap(), want, "{name}");
        }
    }
}
