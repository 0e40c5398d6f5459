//! The accept loop shared by alagg's small servers (the control socket, [`super::control`],
//! and the metrics endpoint, [`super::metrics`]).
//!
//! Each connection is answered on a thread of its own, at most [`MAX_CLIENTS`] at once, so a
//! client that connects and then sends nothing, or sends its request a byte at a time, holds
//! only its own thread (until its server's timeout) and never the next scrape or `alagg status`.
//! Beyond [`MAX_CLIENTS`] a connection is closed at once: the server's memory and threads stay
//! bounded whatever the clients do.

use std::{
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use super::snapshot::Snapshot;

/// Most connections answered at once, per server.
pub(crate) const MAX_CLIENTS: usize = 16;

/// A connection being answered: counted in `active` until dropped (also if `answer` panics).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// How a server answers one connection, given the snapshot source.
type Answer<S> = fn(S, &dyn Fn() -> Snapshot) -> io::Result<()>;

/// [`serve_each`] for the servers of snapshots (control socket, metrics endpoint): `answer`
/// gets the connection and the snapshot source, which is called under a mutex, held only while
/// it runs.
pub(crate) fn serve_snapshots<S: Send + 'static>(
    incoming: impl Iterator<Item = io::Result<S>>,
    stop: &AtomicBool,
    what: &'static str,
    (snapshot, answer): (impl Fn() -> Snapshot + Send + 'static, Answer<S>),
) {
    let snapshot = Mutex::new(snapshot);
    let take = move || (snapshot.lock().unwrap_or_else(PoisonError::into_inner))();
    serve_each(
        incoming,
        stop,
        what,
        Arc::new(move |stream| answer(stream, &take)),
    );
}

/// Takes the connections of `incoming` and answers each with `answer` on a thread of its own,
/// at most [`MAX_CLIENTS`] at once, until `stop` is set (the owner then connects once to wake
/// the loop; connections being answered finish by themselves, bounded by `answer`'s timeouts).
/// A failed client is logged at debug level; a failed accept (EMFILE and the like) is logged
/// and paced, so it never spins.
pub(crate) fn serve_each<S: Send + 'static>(
    incoming: impl Iterator<Item = io::Result<S>>,
    stop: &AtomicBool,
    what: &'static str,
    answer: Arc<dyn Fn(S) -> io::Result<()> + Send + Sync>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in incoming {
        if stop.load(SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "{what} accept");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, SeqCst) >= MAX_CLIENTS {
            active.fetch_sub(1, SeqCst);
            tracing::debug!("{what}: {MAX_CLIENTS} clients already; connection closed");
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let answer = Arc::clone(&answer);
        let spawned = std::thread::Builder::new()
            .name("alagg-client".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(error) = answer(stream) {
                    tracing::debug!(%error, "{what} client");
                }
            });
        if let Err(error) = spawned {
            // The closure, its slot and the stream went with the failed spawn.
            tracing::warn!(%error, "{what}: starting a client thread");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
