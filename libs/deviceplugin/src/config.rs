//! What the plugin advertises and where: the device-plugins directory, the
//! kubelet's registration socket, our socket name and the device count.

use std::path::PathBuf;
use std::time::Duration;

/// The kubelet's device plugin directory.
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's Registration socket, in [`DEFAULT_DIR`].
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Our socket's file name in the directory.
pub const DEFAULT_ENDPOINT: &str = "peerpod-vm.sock";
/// The extended resource: one unit per peer pod VM.
pub const RESOURCE_NAME: &str = "kata.peerpods.io/vm";
/// The device plugin API version we speak.
pub const VERSION: &str = "v1beta1";

/// Most devices advertised (the kubelet keeps one entry per device; a
/// limit in the millions is a typo).
const MAX_DEVICES: i64 = 100_000;

/// The plugin's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding `kubelet.sock` and our socket.
    pub dir: PathBuf,
    /// The kubelet's Registration socket (default `<dir>/kubelet.sock`).
    pub kubelet_socket: PathBuf,
    /// Our socket's file name in `dir` (sent as the endpoint).
    pub endpoint: String,
    /// The extended resource name.
    pub resource_name: String,
    /// Devices to advertise: the per-node peer pod limit. Negative:
    /// nothing is advertised and the plugin does not start.
    pub devices: i64,
    /// How often the sockets are checked for a kubelet restart.
    pub watch_interval: Duration,
}

impl Config {
    /// Defaults for `devices` advertised in `dir`.
    pub fn new(dir: impl Into<PathBuf>, devices: i64) -> Self {
        let dir = dir.into();
        Self {
            kubelet_socket: dir.join(KUBELET_SOCKET),
            dir,
            endpoint: DEFAULT_ENDPOINT.into(),
            resource_name: RESOURCE_NAME.into(),
            devices,
            watch_interval: Duration::from_secs(1),
        }
    }

    /// Our socket's full path.
    pub fn endpoint_path(&self) -> PathBuf {
        self.dir.join(&self.endpoint)
    }

    /// The number of devices, or `None` when nothing is to be advertised.
    pub fn device_count(&self) -> Option<usize> {
        usize::try_from(self.devices).ok()
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.devices > MAX_DEVICES {
            return Err(crate::Error::Config(format!(
                "{} devices is more than {MAX_DEVICES}",
                self.devices
            )));
        }
        if self.endpoint.is_empty() || self.endpoint.contains('/') {
            return Err(crate::Error::Config(format!(
                "endpoint {:?} must be a file name in {}",
                self.endpoint,
                self.dir.display()
            )));
        }
        if self.endpoint == KUBELET_SOCKET {
            return Err(crate::Error::Config(format!(
                "endpoint {KUBELET_SOCKET} is the kubelet's own socket"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_means_nothing_advertised() {
        assert_eq!(Config::new("/d", -1).device_count(), None);
        assert_eq!(Config::new("/d", 0).device_count(), Some(0));
        assert_eq!(Config::new("/d", 10).device_count(), Some(10));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = Config::new("/d", 1_000_000)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000000"), "{e}");
        let mut c = Config::new("/d", 1);
        c.endpoint = "a/b.sock".into();
        assert!(c.validate().unwrap_err().to_string().contains("a/b.sock"));
        c.endpoint = KUBELET_SOCKET.into();
        assert!(c.validate().unwrap_err().to_string().contains("kubelet"));
    }

    #[test]
    fn paths_derive_from_the_directory() {
        let c = Config::new("/var/lib/kubelet/device-plugins", 3);
        assert_eq!(
            c.kubelet_socket,
            PathBuf::from("/var/lib/kubelet/device-plugins/kubelet.sock")
        );
        assert_eq!(
            c.endpoint_path(),
            PathBuf::from("/var/lib/kubelet/device-plugins/peerpod-vm.sock")
        );
    }
}
