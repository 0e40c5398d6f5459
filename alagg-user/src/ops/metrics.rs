//! The optional Prometheus endpoint (`[metrics] listen = "ADDR:PORT"`): `GET /metrics` answers
//! the [`Snapshot`] in the text exposition format 0.0.4 ([`Snapshot::render_prometheus`]).
//!
//! A minimal HTTP/1.1 server on a std `TcpListener`, enough for a Prometheus scraper or `curl`:
//! one thread accepts, and each connection is answered on a thread of its own (at most
//! [`MAX_CLIENTS`](super::serve::MAX_CLIENTS) at once, [`super::serve`]), one request each
//! (`Connection: close`), so a client that connects and sends nothing never holds another's
//! scrape. The whole request head must arrive within [`TIMEOUT`] (a client sending it a byte at
//! a time is cut off then too) and be at most [`MAX_HEAD`] bytes; the body of a request, if any,
//! is ignored. `GET` or `HEAD` of `/metrics` (any query string) is 200, other paths 404, other
//! methods 405, anything unparsable 400 (RFC 9110, RFC 9112). The server holds no state between
//! requests, so a bad client costs at most its own thread for its timeout. Dropping the [`MetricsServer`] stops it.

#![deny(unsafe_code)]

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{serve::serve_snapshots, snapshot::Snapshot};

/// Longest request head read; longer heads are answered 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its whole request head, and to take each part of the
/// answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics endpoint failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    /// The address could not be listened on.
    #[error(
        "[metrics] listen = \"{addr}\": cannot listen: {source}; choose a free address and port"
    )]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The failure.
        source: io::Error,
    },
    /// The server thread could not start.
    #[error("starting the metrics thread failed: {0}")]
    Thread(io::Error),
}

/// A running metrics endpoint. Dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0 picks a free port; see [`MetricsServer::local_addr`]) and
    /// answers scrapes with `snapshot()`.
    pub(crate) fn start(
        addr: SocketAddr,
        snapshot: impl Fn() -> Snapshot + Send + 'static,
    ) -> Result<MetricsServer, MetricsError> {
        let listen_error = |source| MetricsError::Listen { addr, source };
        let listener = TcpListener::bind(addr).map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("alagg-metrics".into())
                .spawn(move || serve(&listener, &stop, snapshot))
                .map_err(MetricsError::Thread)?
        };
        tracing::info!(%local, "metrics served at http://{local}/metrics");
        Ok(MetricsServer {
            local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually listened on.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept with a connection of our own; the thread sees the flag and returns.
        // If that fails the thread stays blocked until the process ends: do not wait for it.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        if TcpStream::connect_timeout(&wake, TIMEOUT).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The server thread: accepts connections until `stop`, each answered on a thread of its own.
fn serve(
    listener: &TcpListener,
    stop: &AtomicBool,
    snapshot: impl Fn() -> Snapshot + Send + 'static,
) {
    serve_snapshots(listener.incoming(), stop, "metrics", (snapshot, answer));
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (`head`: `HEAD /metrics`, the same without the body).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not HTTP.
    Bad,
}

/// Parses a request head (the request line is all that matters).
fn parse(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Request::Bad;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == "/metrics" {
        Request::Metrics { head }
    } else {
        Request::NotFound
    }
}

/// Reads the request head: up to the blank line, at most [`MAX_HEAD`] bytes, all of it within
/// [`TIMEOUT`]. `None` when it is too long.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let room = (MAX_HEAD - head.len()).min(chunk.len());
        let read = stream.read(chunk.get_mut(..room).unwrap_or(&mut []))?;
        if read == 0 {
            // The client closed before the end of the head: answer what there is.
            return Ok(Some(head));
        }
        head.extend_from_slice(chunk.get(..read).unwrap_or(&[]));
    }
}

/// Answers one connection.
fn answer(mut stream: TcpStream, snapshot: &dyn Fn() -> Snapshot) -> io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let (status, body, head_only) = match read_head(&mut stream)? {
        None => ("431 Request Header Fields Too Large", String::new(), false),
        Some(head) if head.is_empty() => return Ok(()),
        Some(head) => match parse(&head) {
            Request::Metrics { head } => ("200 OK", snapshot().render_prometheus(), head),
            Request::NotFound => (
                "404 Not Found",
                "not found; try /metrics\n".to_owned(),
                false,
            ),
            Request::MethodNotAllowed => ("405 Method Not Allowed", "use GET\n".to_owned(), false),
            Request::Bad => ("400 Bad Request", "bad request\n".to_owned(), false),
        },
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::net::Shutdown;

    use super::*;
    use crate::ops::snapshot::LinkSnapshot;

    fn server() -> MetricsServer {
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), || Snapshot {
            uptime_secs: 3.0,
            links: vec![LinkSnapshot {
                interface: "eth1".into(),
                status: "up".into(),
                ..LinkSnapshot::default()
            }],
            ..Snapshot::default()
        })
        .unwrap()
    }

    /// Sends `request` raw and returns the whole response.
    fn exchange(server: &MetricsServer, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may answer and close before reading everything we send.
        let _ = stream.write_all(request);
        let _ = stream.shutdown(Shutdown::Write);
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    #[test]
    fn get_metrics_is_the_prometheus_text() {
        let server = server();
        assert_ne!(server.local_addr().port(), 0);
        let response = exchange(
            &server,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        );
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("\nalagg_up 1\n"), "{body}");
        assert!(body.contains("alagg_uptime_seconds 3\n"), "{body}");
        assert!(body.contains("alagg_link_up{link=\"eth1\"} 1\n"), "{body}");
    }

    #[test]
    fn requests_are_answered_by_kind() {
        let server = server();
        let cases: [(&[u8], &str); 8] = [
            (b"GET /metrics?x=1 HTTP/1.0\n\n", "HTTP/1.1 200 OK"),
            (b"GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (b"\x00\xff garbage \x01\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (b"GET /metrics HTTP/1.1\r\nX: y", "HTTP/1.1 200 OK"),
            (&[b'a'; MAX_HEAD * 2], "HTTP/1.1 431"),
        ];
        for (request, status) in cases {
            let response = exchange(&server, request);
            assert!(
                response.starts_with(status),
                "{:?} answered {response:?}",
                String::from_utf8_lossy(&request[..request.len().min(40)])
            );
        }
        // HEAD: the headers only.
        let response = exchange(&server, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("\r\n\r\n"), "{response}");
    }

    #[test]
    fn garbage_and_silent_clients_do_not_kill_the_server() {
        let server = server();
        let _ = exchange(&server, b"\r\n\r\n\r\n");
        let _ = exchange(&server, b"");
        drop(TcpStream::connect(server.local_addr()).unwrap());
        let response = exchange(&server, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    }

    #[test]
    fn a_silent_client_does_not_hold_other_scrapes() {
        // The limit is only seen while the silent clients are still held (less than TIMEOUT
        // since they connected): on a machine so loaded that the scrape took longer, the
        // attempt cannot judge it and is made again.
        for _ in 0..3 {
            if silent_clients_then_a_scrape_and_one_too_many() {
                return;
            }
        }
        panic!("three attempts too slow to judge the connection limit");
    }

    /// One attempt of [`a_silent_client_does_not_hold_other_scrapes`]; false if it came too
    /// late to judge the limit.
    fn silent_clients_then_a_scrape_and_one_too_many() -> bool {
        let server = server();
        let started = Instant::now();
        // Connected, never sending a byte: each holds a connection until the server's timeout.
        // With the slow one and the scrape, the most answered at once.
        let silent: Vec<TcpStream> = (0..crate::ops::serve::MAX_CLIENTS - 2)
            .map(|_| TcpStream::connect(server.local_addr()).unwrap())
            .collect();
        // A slow one: a byte now and then, never the end of its head.
        let mut slow = TcpStream::connect(server.local_addr()).unwrap();
        slow.write_all(b"GET /met").unwrap();
        // Well under TIMEOUT: answered while the others are still held.
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_read_timeout(Some(TIMEOUT / 2)).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(
            read.is_ok() && response.starts_with("HTTP/1.1 200 OK"),
            "a scrape behind silent clients: {read:?} {response:?}"
        );
        // Beyond the most clients at once, a connection is closed at once rather than queued.
        let more: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(server.local_addr()).unwrap())
            .collect();
        let mut extra = TcpStream::connect(server.local_addr()).unwrap();
        let judged = started.elapsed() < TIMEOUT / 4;
        extra.set_read_timeout(Some(TIMEOUT / 2)).unwrap();
        let mut rest = Vec::new();
        match extra.read_to_end(&mut rest) {
            Ok(0) => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
            other if judged => panic!("a connection beyond the limit: {other:?} {rest:?}"),
            _ => return false,
        }
        drop((silent, slow, more));
        true
    }

    #[test]
    fn a_client_sending_its_head_byte_by_byte_is_cut_off_at_the_timeout() {
        let server = server();
        let mut slow = TcpStream::connect(server.local_addr()).unwrap();
        slow.set_read_timeout(Some(TIMEOUT * 3)).unwrap();
        let started = Instant::now();
        let mut closed = false;
        for byte in b"GET /metrics HTTP/1.1\r\nX-Padding: "
            .iter()
            .cycle()
            .take(400)
        {
            if slow.write_all(&[*byte]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if started.elapsed() > TIMEOUT * 3 {
                break;
            }
        }
        let mut rest = Vec::new();
        let eof = closed || slow.read_to_end(&mut rest).is_ok_and(|_| rest.is_empty());
        assert!(
            eof,
            "the server still waits on a head sent byte by byte: {rest:?}"
        );
        assert!(
            started.elapsed() < TIMEOUT * 3,
            "not cut off at the timeout"
        );
    }

    #[test]
    fn parse_table() {
        let cases: [(&[u8], Request); 6] = [
            (
                b"GET /metrics HTTP/1.1\r\n",
                Request::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n",
                Request::Metrics { head: true },
            ),
            (b"GET /metricsx HTTP/1.1\r\n", Request::NotFound),
            (b"DELETE /metrics HTTP/1.1\r\n", Request::MethodNotAllowed),
            (b"GET metrics HTTP/1.1\r\n", Request::Bad),
            (b"GET /metrics SMTP\r\n", Request::Bad),
        ];
        for (head, expected) in cases {
            assert_eq!(parse(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let server = server();
        let error = MetricsServer::start(server.local_addr(), Snapshot::default).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&server.local_addr().to_string()) && message.contains("[metrics]"),
            "{message}"
        );
    }

    #[test]
    fn drop_stops_the_server() {
        let server = server();
        let addr = server.local_addr();
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after drop"
        );
    }
}
