//! A directory of JSON records, one file per name, written crash-safe:
//! what the sandbox store (`state`) and the warm pool store (`pool::store`)
//! both keep. A record file holds its old or its new content after a
//! crash, never a mix; a corrupt file is reported and skipped, never fatal
//! for the others, and stays on disk for the operator.

use peerpod_fsutil::write_atomic;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory; names are the callers' (checked by them: a name becomes
/// a file name).
#[derive(Debug, Clone)]
pub struct RecordDir {
    dir: PathBuf,
}

impl RecordDir {
    /// Opens `dir`, creating it (and its parents) private to root.
    pub fn open(dir: PathBuf) -> Result<Self, RecordError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Persists `record` as `<name>.json` (crash-safe, mode 0600).
    pub fn save<T: Serialize>(&self, name: &str, record: &T) -> Result<(), RecordError> {
        let path = self.path(name);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(io(&path))
    }

    /// Removes `<name>.json` (absent: done), durably.
    pub fn remove(&self, name: &str) -> Result<(), RecordError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every record that parses, and what went wrong with the others.
    /// Only a directory that cannot be read fails the whole call.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<(Vec<T>, Vec<RecordError>), RecordError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
                    Ok(r) => ok.push(r),
                    Err(source) => bad.push(RecordError::Corrupt { path, source }),
                },
                Err(e) => bad.push(io(&path)(e)),
            }
        }
        Ok((ok, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_loads_removes_and_reports_corrupt_files() {
        let d = tempfile::tempdir().unwrap();
        let r = RecordDir::open(d.path().join("a/b")).unwrap();
        assert_eq!(
            std::fs::metadata(r.dir()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        r.save("one", &vec![1u32, 2]).unwrap();
        r.save("two", &vec![3u32]).unwrap();
        std::fs::write(r.dir().join("bad.json"), b"{not json").unwrap();
        std::fs::write(r.dir().join("ignored.tmp"), b"x").unwrap();
        let mode = std::fs::metadata(r.dir().join("one.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (mut ok, bad): (Vec<Vec<u32>>, _) = r.load_all().unwrap();
        ok.sort();
        assert_eq!(ok, vec![vec![1, 2], vec![3]]);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("bad.json"), "{}", bad[0]);
        r.remove("one").unwrap();
        r.remove("one").unwrap();
        let (ok, _): (Vec<Vec<u32>>, _) = r.load_all().unwrap();
        assert_eq!(ok, vec![vec![3]]);
    }
}
