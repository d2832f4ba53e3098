//! TCP keepalive on the adaptor's connections to the pod VMs. A VM that
//! vanishes without a FIN or RST (deleted behind our back, its host or
//! network gone) would otherwise leave every idle connection to it open
//! for hours — and with it the shim's long polls (GetOOMEvent waits for
//! the sandbox's life) hanging. With keepalive the kernel probes an idle
//! connection after `idle`, every `interval`, and gives up after `count`
//! unanswered probes; `TCP_USER_TIMEOUT` gives the same bound to data
//! sent but never acknowledged. The relay then answers every pending call
//! with UNAVAILABLE. A live VM's kernel answers the probes itself, so a
//! busy or stopped forwarder process is never mistaken for a dead VM.

use std::time::Duration;

/// Keepalive settings (the flags `--keepalive-idle`, `--keepalive-interval`,
/// `--keepalive-count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveSettings {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

impl Default for KeepaliveSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}

impl KeepaliveSettings {
    /// The longest a dead peer goes unnoticed: idle + interval × count.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// Turns keepalive on for `tcp` with `k`, and bounds unacknowledged data
/// by the same time.
pub fn apply(tcp: &tokio::net::TcpStream, k: &KeepaliveSettings) -> std::io::Result<()> {
    let s = socket2::SockRef::from(tcp);
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count),
    )?;
    s.set_tcp_user_timeout(Some(k.detection_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_reach_the_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let k = KeepaliveSettings {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(2),
            count: 4,
        };
        apply(&c, &k).unwrap();
        let s = socket2::SockRef::from(&c);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(15)));
        assert_eq!(k.detection_time(), Duration::from_secs(15));
    }
}
