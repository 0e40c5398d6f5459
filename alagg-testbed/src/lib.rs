//! Test hosts for alagg: network namespaces, veth links and raw frame sockets, each an RAII guard
//! that removes what it made when dropped, also while a failing test unwinds.
//!
//! Names are unique per process and call (`alagg-t<pid>-<n>-<tag>`), so tests run side by side;
//! namespaces left behind by a process that was killed are swept the next time one is made.
//! Traffic only ever goes to addresses inside the namespaces made here.

pub mod bed;
pub mod netns;
pub mod raw;
pub mod relay;

pub use bed::{A_V4, A_V6, B_V4, B_V6, Host, Testbed};
pub use netns::{Netns, veth, veth_with_queues};
pub use raw::RawSocket;
pub use relay::{Direction, JitterShape, Path, PathStats, QueueLimit};

/// A command the testbed ran failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started at all.
    #[error(
        "could not run `{command}`: {source} (is it installed? `cargo xtask bootstrap` installs it)"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Testbed result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `program args...`, returning its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Whether this process runs as root, as the privileged tests need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the privileged test `test` can run here: true as root. Otherwise, outside CI it is
/// skipped with one line on standard error; under CI (`CI` set, as `.ci/run` runs) it fails,
/// so a privileged test is never skipped there.
///
/// # Panics
/// Under CI, when not root.
pub fn privileged(test: &str) -> bool {
    use std::io::Write as _;

    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (network namespaces, XDP, NFQUEUE, TUN) and CI must run it: run \
         `cargo xtask test` as root"
    );
    // Straight to standard error, past the test harness's capture, so the line is seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test} needs root (network namespaces, XDP, NFQUEUE, TUN)"
    );
    false
}

/// Returns from the calling test, with one line saying so, when it cannot run for want of
/// root outside CI; see [`privileged`].
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        let name = ::std::any::type_name_of_val(&here);
        if !$crate::privileged(name.strip_suffix("::here").unwrap_or(name)) {
            return;
        }
    }};
}
