//! The accept loop shared by alagg's small servers.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering::SeqCst},
    time::Duration,
};

/// The accept loop of alagg's small servers (the control socket, [`super::control`], and the metrics endpoint, [`super::metrics`]): takes
/// the connections of `incoming` one at a time and hands each to `answer`, until `stop` is set
/// (the owner then connects once to wake the loop). A failed client is logged at debug level; a
/// failed accept (EMFILE and the like) is logged and paced, so it never spins.
pub(crate) fn serve_in_turn<S>(
    incoming: impl Iterator<Item = io::Result<S>>,
    stop: &AtomicBool,
    what: &str,
    mut answer: impl FnMut(S) -> io::Result<()>,
) {
    for stream in incoming {
        if stop.load(SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if let Err(error) = answer(stream) {
                    tracing::debug!(%error, "{what} client");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "{what} accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
