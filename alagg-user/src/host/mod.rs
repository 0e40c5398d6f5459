//! Host preparation for `alagg up`: the TUN device's link state, address and rp_filter, a route
//! per destination through it, and the iptables/ip6tables NFQUEUE rules that capture the
//! destinations' traffic. Every change is recorded as the command that undoes it; teardown runs
//! them in reverse order, also when `up` fails half-way, so exactly what was added is removed.
//!
//! Rules live in a chain of alagg's own per TUN device (`ALAGG-<tun>` in the mangle table),
//! jumped to from POSTROUTING for packets leaving through the TUN: locally generated and
//! forwarded traffic alike, after routing chose alagg for it.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use ipnet::IpNet;

use crate::sys::run_dir;

pub(crate) mod signals;

/// A host change that failed, with the command and what it printed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed: {message}")]
pub(crate) struct HostError {
    /// The command line.
    pub(crate) command: String,
    /// Its stderr, or why it could not start.
    pub(crate) message: String,
}

/// IP family of a destination, and the iptables binary for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// How the NFQUEUE rules hand packets to alagg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueSpec {
    /// First queue number.
    pub(crate) first: u16,
    /// Number of queues (`--queue-balance first:first+count-1` when more than one).
    pub(crate) count: u16,
    /// Accept (instead of drop) packets while no alagg is bound to the queue.
    pub(crate) bypass: bool,
    /// With several queues, pick the queue by the sending CPU (`--queue-cpu-fanout`) instead
    /// of by a hash of the addresses.
    pub(crate) cpu_fanout: bool,
    /// The first of the `count` queues TCP goes to (handed over whole, GSO) before the rule for
    /// everything else; `None`: TCP shares the other queues.
    pub(crate) tcp: Option<u16>,
}

/// The NFQUEUE target's options for `count` queues from `first`: `--queue-num`, or
/// `--queue-balance` (flows hashed over the queues) for more than one.
fn queue_target(first: u16, count: u16) -> [String; 2] {
    if count > 1 {
        let last = first.saturating_add(count - 1);
        ["--queue-balance".into(), format!("{first}:{last}")]
    } else {
        ["--queue-num".into(), first.to_string()]
    }
}

/// The changes made to the host, undone in reverse order on [`HostSetup::teardown`] or drop.
/// With a journal, the undo commands are also kept in a file (rewritten after every change), so
/// that `alagg down` can undo what a killed instance left.
#[derive(Default)]
pub(crate) struct HostSetup {
    undo: Vec<Vec<String>>,
    journal: Option<PathBuf>,
}

/// Where `alagg up` keeps the undo journal for TUN device `tun`.
pub(crate) fn journal_path(tun: &str) -> PathBuf {
    run_dir().join(format!("{tun}.undo"))
}

/// Field separator of a journal line (ASCII unit separator: never in an argument).
const SEP: char = '\u{1f}';

/// What [`recover`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// No journal: nothing was left behind.
    Clean,
    /// The journal's owner is still running.
    Live {
        /// Its process id.
        pid: u32,
    },
    /// The changes of a dead instance were undone.
    Undone {
        /// Commands run.
        changes: usize,
        /// Those that failed for another reason than the state being gone already.
        errors: Vec<HostError>,
    },
}

/// Undoes what a dead `alagg up` recorded in `journal`, unless its owner still runs.
pub(crate) fn recover(journal: &Path) -> Result<Recovery, HostError> {
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Recovery::Clean),
        Err(error) => {
            return Err(HostError {
                command: format!("reading {}", journal.display()),
                message: error.to_string(),
            });
        }
    };
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.strip_prefix("pid "))
        .and_then(|p| p.parse::<u32>().ok());
    if let Some(pid) = pid.filter(|&pid| is_alagg(pid)) {
        return Ok(Recovery::Live { pid });
    }
    let mut setup = HostSetup::new();
    setup.undo = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(SEP).map(str::to_owned).collect())
        .collect();
    let changes = setup.undo.len();
    let errors = setup.teardown();
    let _ = std::fs::remove_file(journal);
    Ok(Recovery::Undone { changes, errors })
}

/// Whether process `pid` exists and is an alagg.
fn is_alagg(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "alagg")
}

impl fmt::Debug for HostSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostSetup")
            .field("changes", &self.undo.len())
            .finish()
    }
}

impl HostSetup {
    /// Nothing changed yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Nothing changed yet; every change will be journaled in `path` (its directory is made,
    /// root-only).
    pub(crate) fn with_journal(path: PathBuf) -> Result<Self, HostError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::set_permissions(
                        dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                })
                .map_err(|e| HostError {
                    command: format!("mkdir {}", dir.display()),
                    message: e.to_string(),
                })?;
        }
        let setup = Self {
            undo: Vec::new(),
            journal: Some(path),
        };
        setup.write_journal()?;
        Ok(setup)
    }

    fn record(&mut self, command: Vec<String>) -> Result<(), HostError> {
        self.undo.push(command);
        self.write_journal()
    }

    fn write_journal(&self) -> Result<(), HostError> {
        let Some(path) = &self.journal else {
            return Ok(());
        };
        let mut text = format!("pid {}\n", std::process::id());
        for command in &self.undo {
            text.push_str(&command.join(&SEP.to_string()));
            text.push('\n');
        }
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|e| HostError {
                command: format!("writing {}", path.display()),
                message: e.to_string(),
            })
    }

    /// Brings `tun` up with `mtu` and sets its rp_filter to loose (2). IPv4 reverse-path
    /// filtering drops every packet arriving on a device without an IPv4 address
    /// (`__fib_validate_source`, net/ipv4/fib_frontend.c), so the device gets `address` with
    /// scope link: enough for the filter, and never chosen as the source of traffic to the
    /// destinations, which keeps the host's own addresses (RFC 1812 source selection).
    pub(crate) fn prepare_tun(
        &mut self,
        tun: &str,
        mtu: u32,
        address: IpNet,
    ) -> Result<(), HostError> {
        run(
            "ip",
            &["link", "set", "dev", tun, "mtu", &mtu.to_string(), "up"],
        )?;
        let address = address.to_string();
        run(
            "ip",
            &["addr", "add", &address, "dev", tun, "scope", "link"],
        )?;
        self.record(argv(&["ip", "addr", "del", &address, "dev", tun]))?;
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{tun}/rp_filter");
        std::fs::write(&rp_filter, "2").map_err(|e| HostError {
            command: format!("echo 2 > {rp_filter}"),
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// Routes `destination` through `tun` with `mtu`.
    pub(crate) fn route(
        &mut self,
        destination: &IpNet,
        tun: &str,
        mtu: u32,
    ) -> Result<(), HostError> {
        let family = Family::of(destination);
        let net = destination.to_string();
        let mtu = mtu.to_string();
        let mut args = vec![
            family.ip_flag(),
            "route",
            "add",
            &net,
            "dev",
            tun,
            "mtu",
            &mtu,
        ];
        if family == Family::V4 {
            // A device route has scope link by default, which would make the TUN's link-scope
            // address the source of local traffic; scope global keeps the host's own.
            args.extend(["scope", "global"]);
        }
        run("ip", &args)?;
        let family = family.ip_flag();
        self.record(argv(&["ip", family, "route", "del", &net, "dev", tun]))?;
        Ok(())
    }

    /// Installs the NFQUEUE rules that capture traffic to `destinations` leaving through `tun`.
    pub(crate) fn capture(
        &mut self,
        tun: &str,
        destinations: &[IpNet],
        queue: QueueSpec,
    ) -> Result<(), HostError> {
        let chain = chain_name(tun);
        for family in [Family::V4, Family::V6] {
            let nets: Vec<&IpNet> = destinations
                .iter()
                .filter(|net| Family::of(net) == family)
                .collect();
            if nets.is_empty() {
                continue;
            }
            let iptables = family.iptables();
            run(iptables, &["-w", "-t", "mangle", "-N", &chain])?;
            self.record(argv(&[iptables, "-w", "-t", "mangle", "-X", &chain]))?;
            self.record(argv(&[iptables, "-w", "-t", "mangle", "-F", &chain]))?;
            for net in nets {
                let net = net.to_string();
                if let Some(tcp) = queue.tcp {
                    let tcp = queue_target(tcp, queue.count);
                    let mut rule = vec![
                        "-w", "-t", "mangle", "-A", &chain, "-d", &net, "-p", "tcp", "-j",
                        "NFQUEUE",
                    ];
                    rule.extend(tcp.iter().map(String::as_str));
                    if queue.cpu_fanout && queue.count > 1 {
                        rule.push("--queue-cpu-fanout");
                    }
                    if queue.bypass {
                        rule.push("--queue-bypass");
                    }
                    run(iptables, &rule)?;
                }
                let mut rule = vec![
                    "-w", "-t", "mangle", "-A", &chain, "-d", &net, "-j", "NFQUEUE",
                ];
                let target = queue_target(queue.first, queue.count);
                rule.extend(target.iter().map(String::as_str));
                if queue.cpu_fanout && queue.count > 1 {
                    rule.push("--queue-cpu-fanout");
                }
                if queue.bypass {
                    rule.push("--queue-bypass");
                }
                run(iptables, &rule)?;
            }
            let jump = ["POSTROUTING", "-o", tun, "-j", &chain];
            run(
                iptables,
                &[&["-w", "-t", "mangle", "-I"], &jump[..]].concat(),
            )?;
            self.record(argv(
                &[&[iptables, "-w", "-t", "mangle", "-D"], &jump[..]].concat(),
            ))?;
        }
        Ok(())
    }

    /// Removes the capture rules a killed alagg left for `tun` (its chain and the jump to it).
    /// Only called once this process owns the TUN device, so no live instance uses them.
    /// Returns whether there were any.
    pub(crate) fn remove_stale_capture(&mut self, tun: &str) -> bool {
        let chain = chain_name(tun);
        let mut found = false;
        for family in [Family::V4, Family::V6] {
            let iptables = family.iptables();
            if run(iptables, &["-w", "-t", "mangle", "-S", &chain]).is_err() {
                continue;
            }
            found = true;
            tracing::warn!(
                chain,
                iptables,
                "removing capture rules left by an alagg that did not stop cleanly"
            );
            let jump = ["POSTROUTING", "-o", tun, "-j", &chain];
            while run(
                iptables,
                &[&["-w", "-t", "mangle", "-D"], &jump[..]].concat(),
            )
            .is_ok()
            {}
            let _ = run(iptables, &["-w", "-t", "mangle", "-F", &chain]);
            let _ = run(iptables, &["-w", "-t", "mangle", "-X", &chain]);
        }
        found
    }

    /// Undoes every change, newest first. Returns the failures (already-gone state is not one).
    pub(crate) fn teardown(&mut self) -> Vec<HostError> {
        let mut errors = Vec::new();
        while let Some(command) = self.undo.pop() {
            let Some((program, args)) = command.split_first() else {
                continue;
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(error) = run(program, &args) {
                if !is_already_gone(&error) {
                    errors.push(error);
                }
            }
        }
        if let Some(path) = self.journal.take() {
            let _ = std::fs::remove_file(path);
        }
        errors
    }
}

impl Drop for HostSetup {
    fn drop(&mut self) {
        for error in self.teardown() {
            tracing::warn!(%error, "host teardown");
        }
    }
}

/// alagg's iptables chain for `tun` (iptables allows 28 characters; TUN names are at most 15).
pub(crate) fn chain_name(tun: &str) -> String {
    format!("ALAGG-{tun}")
}

/// The address to give the TUN device when the configuration names none: a link-local /32
/// (RFC 3927) that never leaves the host.
pub(crate) fn default_tun_address() -> IpNet {
    IpNet::new(IpAddr::from([169, 254, 88, 1]), 32).unwrap_or_default()
}

fn is_already_gone(error: &HostError) -> bool {
    let message = error.message.to_lowercase();
    [
        "no such",
        "cannot find",
        "does not exist",
        "not found",
        "bad rule",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

fn run(program: &str, args: &[&str]) -> Result<(), HostError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HostError {
            command: command.clone(),
            message: format!("{e} (is {program} installed?)"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HostError {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables() {
        assert_eq!(chain_name("alagg0"), "ALAGG-alagg0");
        assert!(chain_name("fifteen-chars-x").len() <= 28);
    }

    #[test]
    fn the_default_tun_address_is_link_local() {
        let net = default_tun_address();
        assert_eq!(net.prefix_len(), 32);
        assert!(matches!(net.addr(), IpAddr::V4(a) if a.is_link_local()));
    }

    #[test]
    fn vanished_state_is_not_a_teardown_failure() {
        let gone = HostError {
            command: "ip route del".into(),
            message: "RTNETLINK answers: No such process".into(),
        };
        assert!(is_already_gone(&gone));
        let real = HostError {
            command: "iptables".into(),
            message: "Permission denied".into(),
        };
        assert!(!is_already_gone(&real));
    }
}
