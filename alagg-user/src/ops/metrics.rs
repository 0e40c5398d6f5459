//! The optional Prometheus endpoint (`[metrics] listen = "ADDR:PORT"`): `GET /metrics` answers
//! the [`Snapshot`] in the Prometheus text exposition format 0.0.4, or in OpenMetrics 1.0 when
//! the client's `Accept` prefers `application/openmetrics-text` ([`Format::negotiate`]); the
//! encoding is `prometheus-client`'s ([`super::prometheus`]).
//!
//! A small HTTP/1.1 server on a std `TcpListener`, enough for a Prometheus scraper or `curl`:
//! the request head is parsed by `httparse` (hyper's parser), and the connection handling is
//! ours because no small synchronous server crate bounds both the time a client may take and
//! the number of clients at once. One thread accepts, and each connection is answered on a
//! thread of its own (at most [`MAX_CLIENTS`](super::serve::MAX_CLIENTS) at once, beyond which
//! a connection is closed at once, [`super::serve`]), one request each (`Connection: close`),
//! so a client that connects and sends nothing never holds another's scrape. The whole request
//! head must arrive within [`TIMEOUT`] (a client sending it a byte at a time is cut off then
//! too) and be at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines; the whole answer must be
//! taken within [`TIMEOUT`] too; the body of a request, if any, is ignored. `GET` or `HEAD` of
//! `/metrics` (any query string) is 200, other paths 404, other methods 405, anything
//! unparsable 400 (RFC 9110, RFC 9112). The server holds no state between requests, so a bad
//! client costs at most its own thread for its timeouts. Dropping the [`MetricsServer`] stops it.

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

use super::{prometheus::Format, serve::serve_snapshots, snapshot::Snapshot};

/// Longest request head read; longer heads are answered 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its whole request head, and to take the whole answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Most header lines a request may have; more are answered 431.
const MAX_HEADERS: usize = 64;

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

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` in `format` (`head`: `HEAD /metrics`, the same without the body).
    Metrics { head: bool, format: Format },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not HTTP/1.x.
    Bad,
    /// A head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] header lines.
    TooLarge,
}

/// Parses the request head received so far (`closed`: the client will send no more). `None`
/// while it is incomplete, or when a closed client sent nothing worth an answer.
fn parse(head: &[u8], closed: bool) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // A client that closed before the end of its head: answer the request line if it came.
        Ok(httparse::Status::Partial) if closed && request.version.is_some() => {}
        Ok(httparse::Status::Partial) if closed && !head.iter().all(u8::is_ascii_whitespace) => {
            return Some(Request::Bad);
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(Request::TooLarge),
        Err(_) => return Some(Request::Bad),
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Some(Request::Bad);
    };
    if !target.starts_with('/') {
        return Some(Request::Bad);
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Some(Request::MethodNotAllowed),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Some(Request::NotFound);
    }
    // Several `Accept` lines are one list (RFC 9110 section 5.3).
    let accept: Vec<&str> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .collect();
    let format = Format::negotiate((!accept.is_empty()).then(|| accept.join(",")).as_deref());
    Some(Request::Metrics { head, format })
}

/// Reads the request head: at most [`MAX_HEAD`] bytes, all of it within [`TIMEOUT`] (a client
/// sending it a byte at a time is cut off then too: the error is `TimedOut` or `WouldBlock`).
/// `None` when the client closed without a request.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Request>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let room = MAX_HEAD.saturating_sub(head.len()).min(chunk.len());
        let read = stream.read(chunk.get_mut(..room).unwrap_or(&mut []))?;
        head.extend_from_slice(chunk.get(..read).unwrap_or(&[]));
        match parse(&head, read == 0) {
            Some(request) => return Ok(Some(request)),
            None if read == 0 => return Ok(None),
            None if head.len() >= MAX_HEAD => return Ok(Some(Request::TooLarge)),
            None => {}
        }
    }
}

/// Writes all of `bytes` by `deadline`, however slowly the client reads.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = bytes.get(written..).unwrap_or(&[]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The content type of the answers other than the metrics.
const PLAIN: &str = "text/plain; charset=utf-8";

/// Answers one connection: one request, then `Connection: close`.
fn answer(mut stream: TcpStream, snapshot: &dyn Fn() -> Snapshot) -> io::Result<()> {
    let Some(request) = read_request(&mut stream)? else {
        return Ok(());
    };
    let plain = |status, body: &str| (status, PLAIN, body.to_owned(), false);
    let (status, content_type, body, head_only) = match request {
        Request::Metrics { head, format } => match snapshot().into_metrics(format) {
            Ok(body) => ("200 OK", format.content_type(), body, head),
            Err(error) => plain(
                "500 Internal Server Error",
                &format!("encoding the metrics failed: {error}\n"),
            ),
        },
        Request::NotFound => plain("404 Not Found", "not found; try /metrics\n"),
        Request::MethodNotAllowed => plain("405 Method Not Allowed", "use GET\n"),
        Request::Bad => plain("400 Bad Request", "bad request\n"),
        Request::TooLarge => plain("431 Request Header Fields Too Large", ""),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    // The answer depends on `Accept` (content negotiation): caches must keep them apart.
    let vary = if status.starts_with("200") {
        "Vary: Accept\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}{vary}\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    write_by(&mut stream, response.as_bytes(), Instant::now() + TIMEOUT)?;
    stream.flush()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
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
        assert!(body.contains("alagg_uptime_seconds 3.0\n"), "{body}");
        assert!(head.contains("Vary: Accept"), "{head}");
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
    fn an_answer_read_slowly_is_cut_at_the_timeout() {
        // An answer of some 20 MB, far more than the sockets' buffers hold, to a client that
        // reads 16 KiB every 100 ms: each write makes progress, so only a deadline over the whole
        // answer (not a timeout per write) stops it, some 2 s after it started.
        let links: Vec<LinkSnapshot> = (0..15_000)
            .map(|i| LinkSnapshot {
                interface: format!("link{i}"),
                status: "up".into(),
                ..LinkSnapshot::default()
            })
            .collect();
        let snapshot = move || Snapshot {
            links: links.clone(),
            ..Snapshot::default()
        };
        let whole = snapshot().into_metrics(Format::Prometheus).unwrap().len();
        assert!(whole > 16_000_000, "an answer of {whole} bytes");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut slow = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let reader = {
            let cut = Arc::clone(&cut);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut got = 0;
                while let Ok(read @ 1..) = slow.read(&mut buf) {
                    got += read;
                    if !cut.load(SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                got
            })
        };
        let (done, answered) = std::sync::mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let _ = done.send((answer(stream, &snapshot), started.elapsed()));
        });
        let (result, after) = answered
            .recv_timeout(TIMEOUT * 5)
            .expect("a slow reader still held its answer after five timeouts");
        cut.store(true, SeqCst);
        let error = result.expect_err("an answer of 16 MB or more read at 160 kB/s was taken");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(after >= TIMEOUT, "cut after {after:?}, before the timeout");
        // The client then sees the end, having got less than the whole answer.
        let got = reader.join().unwrap();
        assert!(got < whole, "{got} of {whole} bytes");
    }

    #[test]
    fn parse_table() {
        let metrics = |head, format| Some(Request::Metrics { head, format });
        let cases: [(&[u8], bool, Option<Request>); 14] = [
            (
                b"GET /metrics HTTP/1.1\r\n\r\n",
                false,
                metrics(false, Format::Prometheus),
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                false,
                metrics(true, Format::Prometheus),
            ),
            (
                b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
                false,
                metrics(false, Format::OpenMetrics),
            ),
            (
                b"GET /metrics HTTP/1.1\r\naccept: text/plain;q=0.1\r\n\
                  ACCEPT: application/openmetrics-text;q=0.2\r\n\r\n",
                false,
                metrics(false, Format::OpenMetrics),
            ),
            // Incomplete: wait for more, unless the client closed.
            (b"GET /metrics HTTP/1.1\r\nX: y", false, None),
            (
                b"GET /metrics HTTP/1.1\r\nX: y",
                true,
                metrics(false, Format::Prometheus),
            ),
            (b"GET /met", false, None),
            (b"GET /met", true, Some(Request::Bad)),
            (b"\r\n", true, None),
            (
                b"GET /metricsx HTTP/1.1\r\n\r\n",
                false,
                Some(Request::NotFound),
            ),
            (
                b"DELETE /metrics HTTP/1.1\r\n\r\n",
                false,
                Some(Request::MethodNotAllowed),
            ),
            (b"GET metrics HTTP/1.1\r\n\r\n", false, Some(Request::Bad)),
            (b"GET /metrics SMTP\r\n\r\n", false, Some(Request::Bad)),
            (
                &[
                    b"GET /metrics HTTP/1.1\r\n".as_slice(),
                    &b"X: y\r\n".repeat(MAX_HEADERS + 1),
                    b"\r\n",
                ]
                .concat(),
                false,
                Some(Request::TooLarge),
            ),
        ];
        for (head, closed, expected) in cases {
            assert_eq!(
                parse(head, closed),
                expected,
                "{:?} closed {closed}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn accept_openmetrics_is_answered_in_openmetrics() {
        let server = server();
        let response = exchange(
            &server,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\
              Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3\r\n\r\n",
        );
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(body.ends_with("\n# EOF\n"), "{body}");
        assert!(
            body.contains("\n# TYPE alagg_link_tx_frames counter\n"),
            "{body}"
        );
        assert!(
            body.contains("\nalagg_link_tx_frames_total{link=\"eth1\"} 0\n"),
            "{body}"
        );
    }

    #[test]
    fn a_silent_and_a_dribbling_client_neither_hold_a_scrape_and_both_are_cut_at_the_timeout() {
        let server = server();
        let started = Instant::now();
        let silent = TcpStream::connect(server.local_addr()).unwrap();
        // A slowloris: a byte of its head every 50 ms, each well within any per-read timeout,
        // never the end of the head.
        let dribbling = {
            let addr = server.local_addr();
            std::thread::spawn(move || {
                let mut slow = TcpStream::connect(addr).unwrap();
                let started = Instant::now();
                for byte in b"GET /metrics HTTP/1.1\r\nX-Padding: ".iter().cycle() {
                    if slow.write_all(&[*byte]).is_err() || started.elapsed() > TIMEOUT * 4 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Cut off: the server closed (a write failed, or we read its end).
                slow.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut rest = Vec::new();
                let cut = slow.read_to_end(&mut rest).is_ok_and(|_| rest.is_empty())
                    || slow.write_all(b"x").is_err();
                (cut, started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        // While both are held, a scrape is answered at once.
        let mut scrape = TcpStream::connect(server.local_addr()).unwrap();
        scrape.set_read_timeout(Some(TIMEOUT / 2)).unwrap();
        scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let read = scrape.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(
            read.is_ok() && response.starts_with("HTTP/1.1 200 OK"),
            "a scrape beside a silent and a dribbling client: {read:?} {response:?}"
        );
        // The silent one is closed by the server once its TIMEOUT is up, not before.
        let mut silent = silent;
        silent.set_read_timeout(Some(TIMEOUT * 3)).unwrap();
        let mut rest = Vec::new();
        let closed = silent.read_to_end(&mut rest);
        assert!(
            matches!(closed, Ok(0))
                || closed
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "the silent client is still held: {closed:?} {rest:?}"
        );
        assert!(started.elapsed() >= TIMEOUT, "cut before the timeout");
        let (cut, after) = dribbling.join().unwrap();
        assert!(cut, "the dribbling client was never cut off");
        assert!(
            after >= TIMEOUT * 9 / 10,
            "the dribbling client was cut after {after:?}, before the timeout"
        );
        assert!(
            after < TIMEOUT * 4,
            "the dribbling client was held {after:?}"
        );
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
