//! Network namespaces as RAII guards, and veth pairs between them.
//!
//! Test namespaces ([`Netns::new`]) have unique names `alagg-t<pid>-<n>-<tag>` and are swept
//! when their owning process is gone. Named namespaces ([`Netns::named`]) have a fixed name
//! chosen by the caller (`cargo xtask testbed up` uses `alaggbed-*`), are never swept, and
//! outlive the process once [`Netns::persist`] is called; [`Netns::remove_named`] removes one.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{Error, Result, run};

/// Prefix of every namespace tests make; followed by the owning pid.
const PREFIX: &str = "alagg-t";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace that is deleted, with every interface in it, when dropped. Processes
/// still running inside it are killed first.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Left in place on drop ([`Netns::persist`]).
    keep: bool,
}

impl Netns {
    /// Makes a fresh namespace named `alagg-t<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        Self::create(name)
    }

    /// Makes a namespace with the fixed name `name` (it must not exist yet) with its loopback
    /// up. It is deleted on drop like any other unless [`Netns::persist`] is called, and it is
    /// never swept as stale. `name` must not start with the test prefix `alagg-t`.
    pub fn named(name: &str) -> Result<Self> {
        if name.starts_with(PREFIX) {
            return Err(Error::Io {
                what: format!("namespace name {name}: the prefix {PREFIX} is for test namespaces"),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        Self::create(name.to_owned())
    }

    /// Whether a namespace called `name` exists.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    /// Kills the processes in the namespace `name` and deletes it. Returns whether it existed.
    pub fn remove_named(name: &str) -> Result<bool> {
        if !Self::exists(name) {
            return Ok(false);
        }
        kill_processes(name);
        run("ip", &["netns", "del", name])?;
        Ok(true)
    }

    /// Leaves the namespace in place when `self` is dropped: it outlives this process, until
    /// [`Netns::remove_named`] or `ip netns del`.
    pub fn persist(mut self) {
        self.keep = true;
    }

    fn create(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name, keep: false };
        netns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses are usable at once, and the host's state
        // does not change under a test's feet when DAD completes.
        for key in ["all", "default"] {
            netns.exec(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.accept_dad=0")],
            )?;
        }
        Ok(netns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A `Command` that runs `program` inside the namespace, for long-running processes.
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets,
    /// interface lookups and XDP attachments made in `f` belong to this namespace. A panic in
    /// `f` is propagated.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|source| Error::Io {
            what: format!("opening {path}"),
            source,
        })?;
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                // SAFETY: `file` is an open namespace file; setns only changes this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::Io {
                        what: format!("entering network namespace {}", self.name),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn remove(&self) {
        kill_processes(&self.name);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            self.remove();
        }
    }
}

/// Kills every process running inside the namespace `name`.
fn kill_processes(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Joins `a`'s interface `a_if` (MAC `a_mac`) and `b`'s interface `b_if` (MAC `b_mac`) with a
/// veth pair, both up. The pair goes away with either namespace.
pub fn veth(a: &Netns, a_if: &str, a_mac: &str, b: &Netns, b_if: &str, b_mac: &str) -> Result<()> {
    veth_with_queues(a, (a_if, a_mac), b, (b_if, b_mac), 1)
}

/// Like [`veth`], with `queues` receive and transmit queues on each end (for AF_XDP sockets on
/// several queues).
pub fn veth_with_queues(
    a: &Netns,
    (a_if, a_mac): (&str, &str),
    b: &Netns,
    (b_if, b_mac): (&str, &str),
    queues: u32,
) -> Result<()> {
    let queues = queues.max(1).to_string();
    a.ip(&[
        "link",
        "add",
        "name",
        a_if,
        "address",
        a_mac,
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "address",
        b_mac,
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "netns",
        &b.name,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Deletes test namespaces whose owning process no longer exists (a killed test run).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}
