//! The service manager's notification protocol (`sd_notify(3)`), for `Type=notify` units:
//! `READY=1` once the datapath carries traffic, `STATUS=` lines for `systemctl status`,
//! `STOPPING=1`, and `WATCHDOG=1` while the workers make progress (`WatchdogSec=`).
//!
//! A notification is one datagram of `KEY=VALUE` lines to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET`: a path, or an abstract name when it begins with `@`
//! (systemd's `src/libsystemd/sd-daemon/sd-daemon.c`, `sd_notify(3)`). Without the variable
//! (alagg run by hand or under another manager) every call does nothing. The watchdog is on when
//! `$WATCHDOG_USEC` is set and `$WATCHDOG_PID`, if set, is this process (`sd_watchdog_enabled(3)`).
//!
//! The datagram is written here rather than with the `sd-notify` crate because that crate reads
//! the process environment only: the tests point a [`Notifier`] at a socket they make, without
//! changing the environment of a test binary whose tests run on many threads.

#![deny(unsafe_code)]

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Duration,
};

/// Where notifications go: the service manager's socket, or nowhere.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// An unbound socket and the manager's address; `None` when not run by a manager that
    /// listens.
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier of this process: `$NOTIFY_SOCKET`, if set and usable (otherwise a notifier
    /// that does nothing, with a warning when the variable is set but unusable).
    pub(crate) fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier { target: None },
            Some(name) => Notifier::to_socket(&name).unwrap_or_else(|error| {
                tracing::warn!(
                    %error,
                    socket = %name.to_string_lossy(),
                    "NOTIFY_SOCKET is set but cannot be used; the service manager is not told of readiness"
                );
                Notifier { target: None }
            }),
        }
    }

    /// A notifier to the socket `name` (`@name` for an abstract one).
    pub(crate) fn to_socket(name: &OsStr) -> io::Result<Notifier> {
        let bytes = name.as_bytes();
        let address = match bytes.split_first() {
            Some((b'@', abstract_name)) => SocketAddr::from_abstract_name(abstract_name)?,
            Some((b'/', _)) => SocketAddr::from_pathname(name)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            target: Some((socket, address)),
        })
    }

    /// Whether notifications go anywhere.
    pub(crate) fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) in one datagram; nothing
    /// without a manager.
    pub(crate) fn send(&self, state: &str) -> io::Result<()> {
        let Some((socket, address)) = &self.target else {
            return Ok(());
        };
        let sent = socket.send_to_addr(state.as_bytes(), address)?;
        if sent == state.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification sent in part",
            ))
        }
    }

    /// [`Notifier::send`], a failure logged rather than returned: the datapath does not depend
    /// on the manager hearing it (a manager that misses READY=1 fails the start by its timeout).
    pub(crate) fn tell(&self, state: &str) {
        if let Err(error) = self.send(state) {
            tracing::warn!(%error, state, "notifying the service manager");
        }
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.tell(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line.
    pub(crate) fn status(&self, status: &str) {
        self.tell(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub(crate) fn stopping(&self, status: &str) {
        self.tell(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`: the manager's watchdog timer starts over.
    pub(crate) fn watchdog(&self) {
        self.tell("WATCHDOG=1");
    }
}

/// A status as one line: a newline in it would start another assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// The watchdog interval the manager asks for, from `$WATCHDOG_USEC` and `$WATCHDOG_PID`;
/// `None` when there is no watchdog.
pub(crate) fn watchdog_from_env() -> Option<Duration> {
    watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// The watchdog interval from the variables' values: `usec` a positive number of
/// microseconds, and `pid`, if given, this process's id `own_pid`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Whether every worker made progress since the last look: each heartbeat (a count a worker
/// raises every turn of its loop, at least every [`IDLE_WAKEUP`](crate::runtime::worker::IDLE_WAKEUP))
/// is above what it was. Keeps `now` for the next look. A change in the number of workers is
/// not progress.
pub(crate) fn workers_progressed(last: &mut Vec<u64>, now: Vec<u64>) -> bool {
    let progressed = !now.is_empty()
        && now.len() == last.len()
        && now.iter().zip(last.iter()).all(|(n, l)| n > l);
    *last = now;
    progressed
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;

    /// A socket standing for the service manager, at a path in a fresh directory.
    fn manager() -> (UnixDatagram, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "alagg-notify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (socket, path)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifications_arrive_one_datagram_each_at_a_path() {
        let (socket, path) = manager();
        let notifier = Notifier::to_socket(path.as_os_str()).unwrap();
        assert!(notifier.is_active());
        notifier.ready("up: eth1 up,\neth2 down");
        notifier.watchdog();
        notifier.status("links: eth1 up");
        notifier.stopping("stopping");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up: eth1 up, eth2 down");
        assert_eq!(receive(&socket), "WATCHDOG=1");
        assert_eq!(receive(&socket), "STATUS=links: eth1 up");
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_abstract_name_begins_with_at() {
        let name = format!("alagg-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let env = std::ffi::OsString::from_vec(format!("@{name}").into_bytes());
        Notifier::to_socket(&env).unwrap().ready("up");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=up");
    }

    #[test]
    fn without_a_manager_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier { target: None };
        assert!(!notifier.is_active());
        notifier.send("READY=1").unwrap();
        for bad in ["", "relative/path"] {
            assert!(Notifier::to_socket(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_manager_gone_is_an_error_from_send() {
        let (socket, path) = manager();
        let notifier = Notifier::to_socket(path.as_os_str()).unwrap();
        drop(socket);
        std::fs::remove_file(&path).unwrap();
        assert!(notifier.send("READY=1").is_err());
        notifier.tell("READY=1"); // logged, not a panic
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn watchdog_interval_table() {
        let second = Some(Duration::from_secs(1));
        let cases = [
            (None, None, None),
            (Some("1000000"), None, second),
            (Some("1000000"), Some("42"), second),
            (Some("1000000"), Some("43"), None),
            (Some("0"), None, None),
            (Some("x"), None, None),
            (Some("1000000"), Some("x"), None),
        ];
        for (usec, pid, expected) in cases {
            assert_eq!(
                watchdog_interval(usec, pid, 42),
                expected,
                "{usec:?} {pid:?}"
            );
        }
    }

    #[test]
    fn progress_needs_every_worker_to_move() {
        let mut last = vec![];
        assert!(!workers_progressed(&mut last, vec![1, 1]), "first look");
        assert!(workers_progressed(&mut last, vec![2, 5]));
        assert!(!workers_progressed(&mut last, vec![3, 5]), "one stuck");
        assert!(workers_progressed(&mut last, vec![4, 6]));
        assert!(!workers_progressed(&mut last, vec![5]), "one gone");
        assert!(!workers_progressed(&mut last, vec![]), "none");
    }
}
