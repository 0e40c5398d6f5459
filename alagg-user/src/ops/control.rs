//! The control socket: a Unix stream socket through which `alagg status` asks a running
//! instance for its counters.
//!
//! One instance per TUN name and network namespace: the socket is `/run/alagg/<tun>.sock`
//! ([`socket_path`]; under `/run/alagg/net-<inode>/` in another namespace), in a
//! directory made `0700` when created, and is itself `0600`, so only root talks to it (it is
//! bound under a temporary name, restricted, then renamed into place, so it is never reachable
//! with looser permissions). A socket file nobody answers on is stale (a killed instance) and is
//! replaced; one that answers belongs to a live instance, and [`ControlServer::start`] refuses.
//!
//! Protocol, one exchange per connection: the client sends one line, `status`; the server answers
//! one line of JSON, the [`Snapshot`], or `{"error": "..."}` for anything else. Both sides
//! bound the line length and time out ([`TIMEOUT`]), so a hung peer never hangs the other.
//!
//! The server is one thread that accepts connections, each answered on a thread of its own
//! ([`super::serve`]), so a silent client never holds another. Dropping the
//! [`ControlServer`] wakes it (by connecting to it), joins it and removes the socket file, unless
//! the file has been replaced by another instance's in the meantime.

#![deny(unsafe_code)]

use std::{
    fs::{self, DirBuilder},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{serve::serve_snapshots, snapshot::Snapshot};

/// How long either side waits for the other to read or write.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How long the server waits for a request line: a client sends it at once; a silent one holds
/// only its own thread ([`super::serve`]) that long.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest request line the server reads.
const MAX_REQUEST: u64 = 256;

/// Longest reply line the client reads.
const MAX_REPLY: u64 = 16 << 20;

/// The control socket of the instance whose TUN device is `tun` in this network namespace:
/// `<run dir>/<tun>.sock`, the run dir being `/run/alagg` in the host's own namespace
/// ([`crate::sys::run_dir`]).
pub fn socket_path(tun: &str) -> PathBuf {
    socket_path_in(&crate::sys::run_dir(), tun)
}

/// The control socket of the instance whose TUN device is `tun`, under `dir`: `<dir>/<tun>.sock`.
pub fn socket_path_in(dir: &Path, tun: &str) -> PathBuf {
    dir.join(format!("{tun}.sock"))
}

/// Control socket failures, each naming the socket and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing answers on the socket: no instance runs with this TUN name.
    #[error(
        "no alagg is running with TUN {} (no socket at {}); start one with `alagg up --config FILE`",
        tun_of(path),
        path.display()
    )]
    NotRunning {
        /// The socket looked for.
        path: PathBuf,
    },
    /// The socket exists but is not ours to open.
    #[error("permission denied on {}: run as root", path.display())]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// A live instance already answers on the socket.
    #[error(
        "another alagg is running with this TUN name ({}, pid {}; socket {}); stop it first or \
         choose another [tun] name",
        tun_of(path),
        pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
        path.display()
    )]
    AlreadyRunning {
        /// The socket it answers on.
        path: PathBuf,
        /// Its process id, when it said.
        pid: Option<u32>,
    },
    /// Something other than a socket is in the way.
    #[error("{} exists and is not a socket; remove it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The instance did not answer in time.
    #[error("alagg at {} did not answer within {TIMEOUT:?}; it may be stuck", path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
    },
    /// The instance answered with an error.
    #[error("alagg at {} answered: {message}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Its error message.
        message: String,
    },
    /// The answer was not a snapshot.
    #[error("alagg at {} answered something unreadable ({reason}); is it the same version?", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The server thread could not start.
    #[error("starting the control socket thread failed: {0}")]
    Thread(io::Error),
}

/// The TUN name a socket path stands for (its file stem), for messages.
fn tun_of(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// Asks the instance at `path` for its counters.
pub fn query(path: &Path) -> Result<Snapshot, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|error| connect_error(path, error))?;
    let io = |what| {
        move |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::Timeout {
                path: path.to_owned(),
            },
            _ => ControlError::Io {
                what,
                path: path.to_owned(),
                source,
            },
        }
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(io("setting timeouts on"))?;
    stream.write_all(b"status\n").map_err(io("writing to"))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REPLY))
        .read_line(&mut line)
        .map_err(io("reading from"))?;
    let protocol = |reason: String| ControlError::Protocol {
        path: path.to_owned(),
        reason,
    };
    if !line.ends_with('\n') {
        return Err(protocol(if line.is_empty() {
            "no answer".to_owned()
        } else {
            "truncated answer".to_owned()
        }));
    }
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| protocol(e.to_string()))?;
    if let Some(message) = value.get("error") {
        return Err(ControlError::Refused {
            path: path.to_owned(),
            message: message
                .as_str()
                .map_or_else(|| message.to_string(), str::to_owned),
        });
    }
    serde_json::from_value(value).map_err(|e| protocol(e.to_string()))
}

/// Maps a failed connect to what it means for the user.
fn connect_error(path: &Path, error: io::Error) -> ControlError {
    let path = path.to_owned();
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning { path }
        }
        io::ErrorKind::PermissionDenied => ControlError::PermissionDenied { path },
        _ => ControlError::Io {
            what: "connecting to",
            path,
            source: error,
        },
    }
}

/// A running control socket server. Dropping it stops the thread and removes the socket.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, to recognise it at drop.
    identity: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Serves `snapshot()` on the socket at `path`: creates its directory (`0700`) if missing,
    /// replaces a stale socket file, refuses if a live instance answers there, and binds a
    /// `0600` socket.
    pub fn start(
        path: impl Into<PathBuf>,
        snapshot: impl Fn() -> Snapshot + Send + 'static,
    ) -> Result<ControlServer, ControlError> {
        let path = path.into();
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| ControlError::Io { what, path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating the directory", dir))?;
        }
        remove_stale(&path)?;

        // Bound under a private name, restricted, then moved into place: never reachable with
        // the umask's permissions.
        let mut temporary = path.clone().into_os_string();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        let _ = fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary).map_err(io("binding", &temporary))?;
        let placed = fs::set_permissions(&temporary, fs::Permissions::from_mode(0o600))
            .map_err(io("restricting", &temporary))
            .and_then(|()| fs::rename(&temporary, &path).map_err(io("renaming to", &path)))
            .and_then(|()| fs::symlink_metadata(&path).map_err(io("inspecting", &path)));
        let metadata = match placed {
            Ok(metadata) => metadata,
            Err(error) => {
                let _ = fs::remove_file(&temporary);
                return Err(error);
            }
        };
        let identity = (metadata.dev(), metadata.ino());

        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("alagg-control".into())
                .spawn(move || serve(&listener, &stop, snapshot))
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                let _ = fs::remove_file(&path);
                return Err(ControlError::Thread(error));
            }
        };
        Ok(ControlServer {
            path,
            identity,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at our path is still the socket we bound.
    fn still_ours(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if !self.still_ours() {
            // Someone replaced the file: connecting would reach them, not our thread, which
            // stays blocked in accept until the process ends. Leave both alone.
            tracing::warn!(path = %self.path.display(), "control socket was replaced; not removed");
            return;
        }
        // Wake the accept; the thread sees the flag and returns.
        if UnixStream::connect(&self.path).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "removing the control socket");
        }
    }
}

/// Removes the socket file at `path` if it is stale; fails if a live instance answers on it.
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    match fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Io {
                what: "inspecting",
                path: path.to_owned(),
                source,
            });
        }
        Ok(metadata) if !metadata.file_type().is_socket() => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ControlError::AlreadyRunning {
            path: path.to_owned(),
            pid: query(path).ok().map(|snapshot| snapshot.pid),
        }),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            match fs::remove_file(path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => Err(ControlError::Io {
                    what: "removing the stale socket",
                    path: path.to_owned(),
                    source: error,
                }),
                _ => Ok(()),
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ControlError::Io {
            what: "probing the socket",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The server thread: accepts connections until `stop`, each answered on a thread of its own.
fn serve(
    listener: &UnixListener,
    stop: &AtomicBool,
    snapshot: impl Fn() -> Snapshot + Send + 'static,
) {
    serve_snapshots(
        listener.incoming(),
        stop,
        "control socket",
        (snapshot, answer),
    );
}

fn answer(stream: UnixStream, snapshot: &dyn Fn() -> Snapshot) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&snapshot()),
        "" => return Ok(()),
        other => {
            let shown: String = other.chars().take(40).collect();
            serde_json::to_string(&serde_json::json!({
                "error": format!("unknown request {shown:?}; the only request is \"status\""),
            }))
        }
    }
    .map_err(io::Error::other)?;
    let mut writer = &stream;
    writer.write_all(reply.as_bytes())?;
    writer.write_all(b"\n")?;
    writer.flush()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "alagg-control-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn snapshot(pid: u32) -> impl Fn() -> Snapshot + Send + 'static {
        move || Snapshot {
            pid,
            tun: "alagg-t".into(),
            uptime_secs: 12.5,
            ..Snapshot::default()
        }
    }

    #[test]
    fn answers_status_with_the_snapshot() {
        let dir = TempDir::new("status");
        let path = socket_path_in(&dir.0.join("run"), "alagg-t");
        let server = ControlServer::start(&path, snapshot(4242)).unwrap();
        for _ in 0..3 {
            assert_eq!(query(&path).unwrap(), snapshot(4242)());
        }
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        let dir_mode = fs::metadata(dir.0.join("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700, "directory mode {dir_mode:o}");
        assert_eq!(server.path(), path);
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
        assert!(matches!(query(&path), Err(ControlError::NotRunning { .. })));
    }

    #[test]
    fn silent_clients_do_not_hold_a_status_query() {
        let dir = TempDir::new("silent");
        let path = socket_path_in(&dir.0, "alagg-t");
        let _server = ControlServer::start(&path, snapshot(7)).unwrap();
        // Answered in turn, these would hold a query for 15 x REQUEST_TIMEOUT, past its own
        // TIMEOUT.
        let silent: Vec<UnixStream> = (0..crate::ops::serve::MAX_CLIENTS - 1)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(query(&path).unwrap(), snapshot(7)());
        drop(silent);
    }

    #[test]
    fn unknown_requests_get_an_error_and_the_server_goes_on() {
        let dir = TempDir::new("unknown");
        let path = socket_path_in(&dir.0, "alagg-t");
        let _server = ControlServer::start(&path, snapshot(1)).unwrap();
        let requests: [&[u8]; 3] = [b"stats\n", b"\n", &[0xff; 1000]];
        for request in requests {
            let mut stream = UnixStream::connect(&path).unwrap();
            stream.write_all(request).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if request == b"stats\n" {
                let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
                let message = value["error"].as_str().unwrap();
                assert!(message.contains("\"stats\""), "{message}");
            }
        }
        // A client that connects and says nothing does not block others for long.
        let _silent = UnixStream::connect(&path).unwrap();
        assert_eq!(query(&path).unwrap().pid, 1);
    }

    #[test]
    fn a_second_server_on_the_same_path_is_refused() {
        let dir = TempDir::new("twice");
        let path = socket_path_in(&dir.0, "alagg-t");
        let _first = ControlServer::start(&path, snapshot(777)).unwrap();
        let error = ControlServer::start(&path, snapshot(888)).unwrap_err();
        assert!(
            matches!(error, ControlError::AlreadyRunning { pid: Some(777), .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("another alagg is running with this TUN name")
                && message.contains("pid 777"),
            "{message}"
        );
        // The first one still serves.
        assert_eq!(query(&path).unwrap().pid, 777);
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = TempDir::new("stale");
        fs::create_dir_all(&dir.0).unwrap();
        let path = socket_path_in(&dir.0, "alagg-t");
        // A socket file whose listener is gone, as a killed instance leaves it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(matches!(query(&path), Err(ControlError::NotRunning { .. })));
        let _server = ControlServer::start(&path, snapshot(5)).unwrap();
        assert_eq!(query(&path).unwrap().pid, 5);
    }

    #[test]
    fn something_else_in_the_way_is_left_alone() {
        let dir = TempDir::new("file");
        fs::create_dir_all(&dir.0).unwrap();
        let path = socket_path_in(&dir.0, "alagg-t");
        fs::write(&path, "precious").unwrap();
        let error = ControlServer::start(&path, snapshot(5)).unwrap_err();
        assert!(
            matches!(error, ControlError::NotASocket { .. }),
            "{error:?}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn query_without_an_instance_says_how_to_start_one() {
        let dir = TempDir::new("missing");
        let path = socket_path_in(&dir.0, "site-a");
        let error = query(&path).unwrap_err();
        assert!(
            matches!(error, ControlError::NotRunning { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("no alagg is running with TUN site-a")
                && message.contains(&path.display().to_string())
                && message.contains("alagg up --config"),
            "{message}"
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = TempDir::new("silent");
        fs::create_dir_all(&dir.0).unwrap();
        let path = socket_path_in(&dir.0, "alagg-t");
        // Listens but never accepts: the connection completes (backlog), the answer never comes.
        let _listener = UnixListener::bind(&path).unwrap();
        let error = query(&path).unwrap_err();
        assert!(matches!(error, ControlError::Timeout { .. }), "{error:?}");
    }

    #[test]
    fn default_path_is_under_run_alagg() {
        // `/run/alagg/alagg0.sock` in the host's namespace, `/run/alagg/net-<inode>/...` in
        // another; either way beside the instance's undo journal.
        let path = socket_path("alagg0");
        assert!(path.starts_with(crate::sys::RUN_DIR), "{}", path.display());
        assert_eq!(path, crate::sys::run_dir().join("alagg0.sock"));
    }
}
