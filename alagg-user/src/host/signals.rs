//! Termination signals without handlers: every signal whose default action ends the process
//! and that someone may send to stop it ([`TERMINATING`]: SIGINT, SIGTERM, SIGQUIT, SIGUSR1,
//! SIGUSR2, SIGALRM, SIGPWR, and SIGHUP, which means reload; `signal(7)`) is blocked in every thread and collected
//! synchronously with `sigtimedwait(2)`, so the main loop sees it at a well-defined point and
//! tears down in order. Left unblocked, any of them would end `alagg up` without teardown
//! (capture rules, routes and the undo journal left behind, as after `kill -9`). SIGKILL and
//! SIGSTOP cannot be caught; the faults (SIGSEGV, SIGBUS, ...) are not requests to stop.
//! SIGHUP, collected the same way, asks `alagg up` to read its configuration again
//! (`alagg reload`, `systemctl reload`) instead of stopping it.

use std::{io, mem::MaybeUninit, time::Duration};

/// The signals `alagg up` stops cleanly on.
pub(crate) const TERMINATING: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPWR,
];

/// The [`TERMINATING`] signals, blocked for this thread and every thread it spawns afterwards.
#[derive(Debug)]
pub(crate) struct TermSignals {
    set: libc::sigset_t,
}

impl TermSignals {
    /// Blocks the [`TERMINATING`] signals in the calling thread. Call it before spawning threads so that
    /// they inherit the mask and no signal is delivered to them.
    pub(crate) fn block() -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given; sigaddset and pthread_sigmask
        // get a pointer to that initialised set and valid signal numbers.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            let mut set = set.assume_init();
            for signal in TERMINATING {
                libc::sigaddset(&mut set, signal);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(Self { set })
    }

    /// Waits up to `timeout` for one of the [`TERMINATING`] signals; returns its number if one
    /// came.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<i32> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        // SAFETY: `set` is an initialised signal set; a null siginfo pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        (signal > 0).then_some(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_collected_not_delivered() {
        // Runs on its own thread so the mask does not leak into other tests.
        let got = std::thread::spawn(|| {
            let signals = TermSignals::block().ok()?;
            // SAFETY: sends SIGTERM to this very thread, where it is blocked.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
            signals.wait(Duration::from_secs(1))
        })
        .join()
        .ok()
        .flatten();
        assert_eq!(got, Some(libc::SIGTERM));
    }

    #[test]
    fn every_terminating_signal_is_collected() {
        for signal in TERMINATING {
            let got = std::thread::spawn(move || {
                let signals = TermSignals::block().ok()?;
                // SAFETY: sends `signal` to this very thread, where it is blocked.
                unsafe { libc::pthread_kill(libc::pthread_self(), signal) };
                signals.wait(Duration::from_secs(1))
            })
            .join()
            .ok()
            .flatten();
            assert_eq!(got, Some(signal), "signal {signal}");
        }
    }

    #[test]
    fn wait_times_out_without_a_signal() {
        let got = std::thread::spawn(|| {
            let signals = TermSignals::block().ok()?;
            signals.wait(Duration::from_millis(20))
        })
        .join()
        .ok()
        .flatten();
        assert_eq!(got, None);
    }
}
