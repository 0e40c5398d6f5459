//! Host preparation for `alagg up`: the TUN device's link state, address and rp_filter, a route
//! per destination through it, and the iptables/ip6tables NFQUEUE rules that capture the
//! destinations' traffic. Every change is recorded as the command that undoes it; teardown runs
//! them in reverse order, also when `up` fails half-way, so exactly what was added is removed.
//!
//! With an undo journal (`/run/alagg/<tun>.undo`, what `alagg down` replays after a crash) the
//! undo command of a change is written to the journal *before* the change is made, and taken
//! out again if the change fails: whenever the process dies, everything it changed is in the
//! journal (an undo of a change that was never made finds nothing to remove, which is not an
//! error). Undo commands that fail stay in the journal, so `alagg down` can try them again.
//! Whether a journal's owner still runs is decided by a lock ([`InstanceLock`]), not by its
//! pid, which a crashed instance leaves to whatever process gets it next.
//!
//! The routes through the TUN live in a routing table of alagg's own ([`route_table`]), looked
//! up before `main` (rule preference [`RULE_PREF`]) for packets without alagg's firewall mark,
//! and after `main` and `default` ([`FALLBACK_PREF`]) for packets with it. Capture rules live in
//! a chain of alagg's own per TUN device (`ALAGG-<tun>` in the mangle table), jumped to from
//! POSTROUTING for packets to the destinations: locally generated and forwarded alike.
//!
//! Fail-open ([`QueueSpec::bypass`]): a chain `ALAGGM-<tun>`, jumped to from OUTPUT and from
//! PREROUTING (packets not coming from the TUN), marks packets to the destinations before they
//! are routed (the kernel routes a locally generated packet again when mangle OUTPUT changes
//! its mark, `ipt_mangle_out`). Marked, they skip alagg's table and take the host's own route
//! to the destination; where the host has none, they fall through to alagg's table after all.
//! alagg steals what it captures whatever the route; a packet the kernel lets pass because no
//! alagg listens or its queue is full (`--queue-bypass`) goes on that route, so traffic keeps
//! flowing, unaggregated, while alagg is not running, is stopped or falls behind. The route
//! chosen first, through the TUN, still sets what the sender builds for (source address, MTU).

use std::{
    fmt,
    fs::File,
    io::Write as _,
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

    /// The nftables family iptables-nft keeps this family's tables in.
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// The undo "command" that removes an nftables table, or one of its chains, that alagg's
/// iptables rules made the nf_tables backend create, if nothing else uses it by then: args
/// `family table [chain]`. Run by [`run`] itself, not spawned.
const DROP_IF_EMPTY: &str = "alagg-drop-if-empty";

/// The mangle table's built-in chains alagg's rules go into.
const MANGLE_HOOKS: [&str; 3] = ["PREROUTING", "OUTPUT", "POSTROUTING"];

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

/// Preference of the rule that looks alagg's table up for packets without its mark: just before
/// `main` (32766), where the kernel puts a rule added without a preference.
pub(crate) const RULE_PREF: u32 = 32765;
/// Preference of the rule that looks alagg's table up after `main` and `default` (32767): for
/// marked packets the host has no route for.
pub(crate) const FALLBACK_PREF: u32 = 32768;

/// alagg's routing table for TUN device `tun`: a number derived from the name (FNV-1a), so
/// that every instance has its own and `alagg down` finds a killed one's, in
/// `0x616c_0000..=0x616c_ffff` ("al"), far from the tables people number by hand.
pub(crate) fn route_table(tun: &str) -> u32 {
    let hash = tun.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    0x616c_0000 | ((hash >> 16) ^ (hash & 0xffff))
}

/// Runs one command of a host change or of its undo: [`run`], but for tests.
type Runner = fn(&str, &[&str]) -> Result<(), HostError>;

/// The changes made to the host, undone in reverse order on [`HostSetup::teardown`] or drop.
/// With a journal, the undo commands are also kept in a file, each written there before its
/// change is made, so that `alagg down` can undo what a killed instance left; the instance's
/// [`InstanceLock`] is held as long as this value lives.
pub(crate) struct HostSetup {
    undo: Vec<Vec<String>>,
    journal: Option<PathBuf>,
    /// Held, never read: the instance's lock lasts as long as this value.
    _lock: Option<InstanceLock>,
    runner: Runner,
}

impl Default for HostSetup {
    fn default() -> Self {
        Self {
            undo: Vec::new(),
            journal: None,
            _lock: None,
            runner: run,
        }
    }
}

/// Where `alagg up` keeps the undo journal for TUN device `tun`.
pub(crate) fn journal_path(tun: &str) -> PathBuf {
    run_dir().join(format!("{tun}.undo"))
}

/// The lock file beside `journal` ([`InstanceLock`]).
pub(crate) fn lock_path(journal: &Path) -> PathBuf {
    journal.with_extension("lock")
}

/// Field separator of a journal line (ASCII unit separator: never in an argument).
const SEP: char = '\u{1f}';

/// The exclusive `flock(2)` an instance holds on the lock file beside its journal
/// (`/run/alagg/<tun>.lock`) for its whole life. The kernel releases it when the process ends,
/// however it ends, so a journal's owner runs exactly while its lock is held: unlike a pid,
/// which after a crash may be any other process's, another alagg's too. The file is never
/// removed (a process could lock a file another has just unlinked and both would think they
/// own the name); it holds the owner's pid, for messages only.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    _file: File,
}

/// What [`InstanceLock::acquire`] found.
#[derive(Debug)]
enum Lock {
    /// This process holds the lock now.
    Taken(InstanceLock),
    /// Another process holds it.
    Held {
        /// The pid it wrote, if readable.
        pid: Option<u32>,
    },
}

impl InstanceLock {
    /// Takes the lock for `journal` without waiting, making its directory (root-only) first.
    fn acquire(journal: &Path) -> Result<Lock, HostError> {
        let path = lock_path(journal);
        let fail = |what: &str, error: std::io::Error| HostError {
            command: format!("{what} {}", path.display()),
            message: error.to_string(),
        };
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
        // Opened without truncating: the holder's pid must stay readable to others.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail("opening", e))?;
        if !crate::sys::try_lock_exclusive(&file).map_err(|e| fail("locking", e))? {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().strip_prefix("pid ")?.parse().ok());
            return Ok(Lock::Held { pid });
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "pid {}", std::process::id()))
            .map_err(|e| fail("writing", e))?;
        Ok(Lock::Taken(InstanceLock { _file: file }))
    }
}

/// What [`recover`] found. Unless the journal's owner runs, the caller now holds its lock.
#[derive(Debug)]
pub(crate) enum Recovery {
    /// No journal: nothing was left behind.
    Clean(InstanceLock),
    /// The journal's owner is still running (it holds the lock).
    Live {
        /// Its process id, if it could be read.
        pid: Option<u32>,
    },
    /// The changes of a dead instance were undone.
    Undone {
        /// Commands run.
        changes: usize,
        /// Those that failed for another reason than the state being gone already.
        errors: Vec<HostError>,
        /// The undo commands that failed, oldest first: still in the journal, which is kept
        /// for another try.
        left: Vec<Vec<String>>,
        /// The lock, now this process's.
        lock: InstanceLock,
    },
}

/// Undoes what a dead `alagg up` recorded in `journal`, unless its owner still runs. The
/// journal is removed once everything in it is undone; commands that failed stay in it.
pub(crate) fn recover(journal: &Path) -> Result<Recovery, HostError> {
    recover_with(journal, run)
}

fn recover_with(journal: &Path, runner: Runner) -> Result<Recovery, HostError> {
    let lock = match InstanceLock::acquire(journal)? {
        Lock::Taken(lock) => lock,
        Lock::Held { pid } => return Ok(Recovery::Live { pid }),
    };
    let text = match std::fs::read_to_string(journal) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Recovery::Clean(lock));
        }
        Err(error) => {
            return Err(HostError {
                command: format!("reading {}", journal.display()),
                message: error.to_string(),
            });
        }
    };
    let mut setup = HostSetup::new();
    setup.runner = runner;
    setup.undo = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("pid "))
        .map(|l| l.split(SEP).map(str::to_owned).collect())
        .collect();
    let changes = setup.undo.len();
    let (errors, left) = setup.undo_all();
    keep_or_remove(journal, &left);
    Ok(Recovery::Undone {
        changes,
        errors,
        left,
        lock,
    })
}

/// Removes `journal` when nothing is `left` to undo; else rewrites it with what is left (and
/// says so), for `alagg down` to try again.
fn keep_or_remove(journal: &Path, left: &[Vec<String>]) {
    if left.is_empty() {
        let _ = std::fs::remove_file(journal);
        return;
    }
    match write_journal_file(journal, left) {
        Ok(()) => tracing::warn!(
            journal = %journal.display(),
            left = left.len(),
            "some changes could not be undone; they stay in the journal: fix the cause (see \
             the errors) and run `alagg down` to try again"
        ),
        Err(error) => tracing::warn!(%error, "keeping the undo journal"),
    }
}

/// Writes `commands` (oldest first) to the journal at `path`, atomically (a temporary file
/// renamed over it).
fn write_journal_file(path: &Path, commands: &[Vec<String>]) -> Result<(), HostError> {
    let mut text = format!("pid {}\n", std::process::id());
    for command in commands {
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

    /// Nothing changed yet by this process; every change will be journaled in `path`, whose
    /// lock this process holds (from [`recover`]). `left` are undo commands an earlier instance's
    /// journal kept (oldest first): they are undone last, at teardown.
    pub(crate) fn with_journal(
        path: PathBuf,
        lock: InstanceLock,
        left: Vec<Vec<String>>,
    ) -> Result<Self, HostError> {
        let setup = Self {
            undo: left,
            journal: Some(path),
            _lock: Some(lock),
            runner: run,
        };
        setup.write_journal()?;
        Ok(setup)
    }

    /// Records an undo command for a change that needs no command of its own (or is made of
    /// several, all covered by it), before making it.
    fn record(&mut self, command: Vec<String>) -> Result<(), HostError> {
        self.undo.push(command);
        if let Err(error) = self.write_journal() {
            self.undo.pop();
            return Err(error);
        }
        Ok(())
    }

    /// Makes one change, `program args`, whose undo is `undo`: journaled first, then made; if
    /// the change fails, its undo is taken out again.
    fn change(&mut self, program: &str, args: &[&str], undo: Vec<String>) -> Result<(), HostError> {
        self.record(undo)?;
        if let Err(error) = (self.runner)(program, args) {
            self.undo.pop();
            // Best effort: a journal still naming the undo of a change never made costs an
            // undo that finds nothing.
            let _ = self.write_journal();
            return Err(error);
        }
        Ok(())
    }

    fn write_journal(&self) -> Result<(), HostError> {
        match &self.journal {
            Some(path) => write_journal_file(path, &self.undo),
            None => Ok(()),
        }
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
        // The device's own settings need no undo: it vanishes with this process.
        (self.runner)(
            "ip",
            &["link", "set", "dev", tun, "mtu", &mtu.to_string(), "up"],
        )?;
        let address = address.to_string();
        self.change(
            "ip",
            &["addr", "add", &address, "dev", tun, "scope", "link"],
            argv(&["ip", "addr", "del", &address, "dev", tun]),
        )?;
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{tun}/rp_filter");
        std::fs::write(&rp_filter, "2").map_err(|e| HostError {
            command: format!("echo 2 > {rp_filter}"),
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// Routes `destination` through `tun` with `mtu`, in alagg's table for `tun`.
    pub(crate) fn route(
        &mut self,
        destination: &IpNet,
        tun: &str,
        mtu: u32,
    ) -> Result<(), HostError> {
        let family = Family::of(destination);
        let net = destination.to_string();
        let mtu = mtu.to_string();
        let table = route_table(tun).to_string();
        let mut args = vec![
            family.ip_flag(),
            "route",
            "add",
            &net,
            "dev",
            tun,
            "mtu",
            &mtu,
            "table",
            &table,
        ];
        if family == Family::V4 {
            // A device route has scope link by default, which would make the TUN's link-scope
            // address the source of local traffic; scope global keeps the host's own.
            args.extend(["scope", "global"]);
        }
        let undo = argv(&[
            "ip",
            family.ip_flag(),
            "route",
            "del",
            &net,
            "dev",
            tun,
            "table",
            &table,
        ]);
        self.change("ip", &args, undo)
    }

    /// Adds the policy rules that look alagg's table for `tun` up (see the module
    /// documentation), for each family among `destinations`.
    pub(crate) fn rules(
        &mut self,
        tun: &str,
        destinations: &[IpNet],
        fwmark: u32,
    ) -> Result<(), HostError> {
        let table = route_table(tun).to_string();
        let mark = format!("{fwmark:#x}/{fwmark:#x}");
        let (pref, fallback) = (RULE_PREF.to_string(), FALLBACK_PREF.to_string());
        for family in [Family::V4, Family::V6] {
            if !destinations.iter().any(|net| Family::of(net) == family) {
                continue;
            }
            for selector in [
                &["not", "fwmark", &mark, "table", &table, "pref", &pref][..],
                &["table", &table, "pref", &fallback][..],
            ] {
                let add = [&[family.ip_flag(), "rule", "add"][..], selector].concat();
                let undo = [&["ip", family.ip_flag(), "rule", "del"][..], selector].concat();
                self.change("ip", &add, argv(&undo))?;
            }
        }
        Ok(())
    }

    /// Installs the NFQUEUE rules that capture traffic to `destinations`, and with
    /// [`QueueSpec::bypass`] the rules that give what passes uncaptured `fwmark`, for the
    /// host's own route.
    pub(crate) fn capture(
        &mut self,
        tun: &str,
        destinations: &[IpNet],
        queue: QueueSpec,
        fwmark: u32,
    ) -> Result<(), HostError> {
        for family in [Family::V4, Family::V6] {
            if destinations.iter().any(|net| Family::of(net) == family) {
                self.tidy_mangle(family)?;
            }
        }
        if queue.bypass {
            self.mark(tun, destinations, fwmark)?;
        }
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
            self.change(
                iptables,
                &["-w", "-t", "mangle", "-N", &chain],
                argv(&[iptables, "-w", "-t", "mangle", "-X", &chain]),
            )?;
            // Covers every rule appended to the chain below.
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
                    (self.runner)(iptables, &rule)?;
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
                (self.runner)(iptables, &rule)?;
            }
            self.jump(iptables, &["POSTROUTING", "-j", &chain])?;
        }
        Ok(())
    }

    /// The fail-open marks: chain `ALAGGM-<tun>` marks packets to `destinations` with `fwmark`,
    /// from OUTPUT and from PREROUTING for packets not coming from `tun`.
    fn mark(&mut self, tun: &str, destinations: &[IpNet], fwmark: u32) -> Result<(), HostError> {
        let chain = mark_chain_name(tun);
        let mark = format!("{fwmark:#x}/{fwmark:#x}");
        for family in [Family::V4, Family::V6] {
            let nets: Vec<String> = destinations
                .iter()
                .filter(|net| Family::of(net) == family)
                .map(IpNet::to_string)
                .collect();
            if nets.is_empty() {
                continue;
            }
            let iptables = family.iptables();
            self.change(
                iptables,
                &["-w", "-t", "mangle", "-N", &chain],
                argv(&[iptables, "-w", "-t", "mangle", "-X", &chain]),
            )?;
            self.record(argv(&[iptables, "-w", "-t", "mangle", "-F", &chain]))?;
            for net in &nets {
                (self.runner)(
                    iptables,
                    &[
                        "-w",
                        "-t",
                        "mangle",
                        "-A",
                        &chain,
                        "-d",
                        net,
                        "-j",
                        "MARK",
                        "--set-xmark",
                        &mark,
                    ],
                )?;
            }
            self.jump(iptables, &["OUTPUT", "-j", &chain])?;
            self.jump(iptables, &["PREROUTING", "!", "-i", tun, "-j", &chain])?;
        }
        Ok(())
    }

    /// With iptables' nf_tables backend, the mangle table and its built-in chains exist only
    /// once a rule needs them, and stay when the rules go: records, before any rule is added,
    /// that whichever of them does not exist yet is to be removed again at teardown if empty
    /// then, so the host's ruleset ends exactly as it was (`nft list ruleset`,
    /// `iptables-save`). Nothing is recorded for what exists, or where nft is not the backend.
    fn tidy_mangle(&mut self, family: Family) -> Result<(), HostError> {
        let nft = family.nft();
        if (self.runner)("nft", &["list", "table", nft, "mangle"]).is_err() {
            self.record(argv(&[DROP_IF_EMPTY, nft, "mangle"]))?;
        }
        for chain in MANGLE_HOOKS {
            if (self.runner)("nft", &["list", "chain", nft, "mangle", chain]).is_err() {
                self.record(argv(&[DROP_IF_EMPTY, nft, "mangle", chain]))?;
            }
        }
        Ok(())
    }

    /// Inserts `rule` (a built-in chain of the mangle table and its match and target) at the
    /// head of its chain.
    fn jump(&mut self, iptables: &str, rule: &[&str]) -> Result<(), HostError> {
        self.change(
            iptables,
            &[&["-w", "-t", "mangle", "-I"], rule].concat(),
            argv(&[&[iptables, "-w", "-t", "mangle", "-D"], rule].concat()),
        )
    }

    /// Removes the capture rules a killed alagg left for `tun` (its chain and the jump to it).
    /// Only called once this process owns the TUN device, so no live instance uses them.
    /// Returns whether there were any.
    pub(crate) fn remove_stale_capture(&mut self, tun: &str) -> bool {
        let (chain, marks) = (chain_name(tun), mark_chain_name(tun));
        let mut found = false;
        for family in [Family::V4, Family::V6] {
            let iptables = family.iptables();
            // (the chain, the jumps to it: today's, and the one of alagg before fail-open marks)
            let rules = [
                (
                    &chain,
                    vec![
                        vec!["POSTROUTING", "-j", &chain],
                        vec!["POSTROUTING", "-o", tun, "-j", &chain],
                    ],
                ),
                (
                    &marks,
                    vec![
                        vec!["OUTPUT", "-j", &marks],
                        vec!["PREROUTING", "!", "-i", tun, "-j", &marks],
                    ],
                ),
            ];
            for (chain, jumps) in rules {
                if run(iptables, &["-w", "-t", "mangle", "-S", chain]).is_err() {
                    continue;
                }
                found = true;
                tracing::warn!(
                    chain,
                    iptables,
                    "removing capture rules left by an alagg that did not stop cleanly"
                );
                for jump in jumps {
                    let delete = [&["-w", "-t", "mangle", "-D"][..], &jump].concat();
                    while run(iptables, &delete).is_ok() {}
                }
                let _ = run(iptables, &["-w", "-t", "mangle", "-F", chain]);
                let _ = run(iptables, &["-w", "-t", "mangle", "-X", chain]);
            }
            let table = route_table(tun).to_string();
            while run("ip", &[family.ip_flag(), "rule", "del", "table", &table]).is_ok() {
                found = true;
            }
        }
        found
    }

    /// Undoes every change, newest first. Returns the failures (already-gone state is not one).
    /// The journal is removed when everything was undone; else it keeps the commands that
    /// failed, for `alagg down` to try again.
    pub(crate) fn teardown(&mut self) -> Vec<HostError> {
        let (errors, left) = self.undo_all();
        if let Some(path) = self.journal.take() {
            keep_or_remove(&path, &left);
        }
        errors
    }

    /// Runs every undo command, newest first; returns the failures and the commands that
    /// failed (oldest first).
    fn undo_all(&mut self) -> (Vec<HostError>, Vec<Vec<String>>) {
        let mut errors = Vec::new();
        let mut left = Vec::new();
        while let Some(command) = self.undo.pop() {
            let Some((program, args)) = command.split_first() else {
                continue;
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(error) = (self.runner)(program, &args) {
                if !is_already_gone(&error) {
                    errors.push(error);
                    left.push(command);
                }
            }
        }
        left.reverse();
        (errors, left)
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

/// alagg's iptables chain of fail-open marks for `tun`.
pub(crate) fn mark_chain_name(tun: &str) -> String {
    format!("ALAGGM-{tun}")
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
        // iptables -F/-X of a chain that is not there.
        "by that name",
        // ip addr del of an address that is not there.
        "cannot assign requested address",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

/// The device a packet to `destination` marked `fwmark` leaves through: where fail-open sends
/// what alagg lets pass. `None` when the host has no route to it at all.
pub(crate) fn fail_open_device(destination: &IpNet, fwmark: u32) -> Option<String> {
    let family = Family::of(destination);
    let (address, mark) = (destination.addr().to_string(), format!("{fwmark:#x}"));
    let output = Command::new("ip")
        .args([
            family.ip_flag(),
            "-o",
            "route",
            "get",
            &address,
            "mark",
            &mark,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    words.find(|&w| w == "dev")?;
    words.next().map(str::to_owned)
}

/// [`DROP_IF_EMPTY`]: `nft delete chain` refuses a chain that holds rules (EBUSY), which is
/// left then; a table goes only when it has no chain left.
fn drop_if_empty(args: &[&str]) -> Result<(), HostError> {
    match *args {
        [family, table, chain] => match run("nft", &["delete", "chain", family, table, chain]) {
            Err(error) if error.message.to_lowercase().contains("busy") => Ok(()),
            other => other,
        },
        [family, table] => {
            let listed = Command::new("nft")
                .args(["list", "table", family, table])
                .output()
                .map_err(|e| HostError {
                    command: format!("nft list table {family} {table}"),
                    message: format!("{e} (is nft installed?)"),
                })?;
            let text = String::from_utf8_lossy(&listed.stdout);
            if !listed.status.success() || text.contains("chain ") {
                // Gone already, or in use: nothing to do.
                return Ok(());
            }
            run("nft", &["delete", "table", family, table])
        }
        _ => Err(HostError {
            command: format!("{DROP_IF_EMPTY} {}", args.join(" ")),
            message: "expects a family, a table and an optional chain".into(),
        }),
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), HostError> {
    if program == DROP_IF_EMPTY {
        return drop_if_empty(args);
    }
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
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A directory of a test's own, removed when dropped (also when the test fails). The tests
    /// that make one run one at a time: one of them spawns a process, which holds a copy of
    /// every descriptor of this one until it has exec'd (longer on a loaded machine), so a
    /// journal lock another test dropped meanwhile would still be held, and the journal live.
    struct TempDir(
        PathBuf,
        #[expect(dead_code, reason = "held, not read: the test's turn")]
        std::sync::MutexGuard<'static, ()>,
    );

    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl TempDir {
        fn new(name: &str) -> Self {
            let serial = ONE_AT_A_TIME
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dir =
                std::env::temp_dir().join(format!("alagg-host-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir, serial)
        }

        fn journal(&self) -> PathBuf {
            self.0.join("t0.undo")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    thread_local! {
        /// The journal the fake runner looks at, and what it saw: each command it ran, with
        /// the journal's text at that moment.
        static JOURNAL: RefCell<PathBuf> = RefCell::new(PathBuf::new());
        static SEEN: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
        /// Commands containing this fail ("Permission denied").
        static FAIL: RefCell<Option<&'static str>> = const { RefCell::new(None) };
    }

    /// A runner that changes nothing: it notes each command and the journal as it was then,
    /// and fails the commands containing [`FAIL`].
    fn fake(program: &str, args: &[&str]) -> Result<(), HostError> {
        let command = format!("{program} {}", args.join(" "));
        let journal = JOURNAL
            .with_borrow(|path| std::fs::read_to_string(path))
            .unwrap_or_default()
            .replace(SEP, " ");
        SEEN.with_borrow_mut(|seen| seen.push((command.clone(), journal)));
        match FAIL.with_borrow(|fail| fail.filter(|f| command.contains(f))) {
            Some(_) => Err(HostError {
                command,
                message: "Permission denied".into(),
            }),
            None => Ok(()),
        }
    }

    /// A journaled setup that runs `fake`, with the lock of `dir`'s journal.
    fn fake_setup(dir: &TempDir) -> HostSetup {
        JOURNAL.with_borrow_mut(|path| *path = dir.journal());
        let Recovery::Clean(lock) = recover_with(&dir.journal(), fake).unwrap() else {
            panic!("a fresh directory has no journal");
        };
        let mut setup = HostSetup::with_journal(dir.journal(), lock, Vec::new()).unwrap();
        setup.runner = fake;
        setup
    }

    fn queue_spec() -> QueueSpec {
        QueueSpec {
            first: 0,
            count: 1,
            bypass: true,
            cpu_fanout: false,
            tcp: Some(1),
        }
    }

    #[test]
    fn every_change_is_journaled_before_it_is_made() {
        let dir = TempDir::new("before");
        let mut setup = fake_setup(&dir);
        let v4: IpNet = "10.0.9.0/24".parse().unwrap();
        let v6: IpNet = "fd00::/64".parse().unwrap();
        setup.route(&v4, "alagg-nx9", 1400).unwrap();
        setup.route(&v6, "alagg-nx9", 1400).unwrap();
        setup.rules("alagg-nx9", &[v4, v6], 0x2000).unwrap();
        setup
            .capture("alagg-nx9", &[v4, v6], queue_spec(), 0x2000)
            .unwrap();
        // Fails at the rp_filter of a device that does not exist, after its address.
        let _ = setup.prepare_tun("alagg-nx9", 1400, default_tun_address());
        // (a command that changes the host, the undo the journal must hold when it runs)
        let cases = [
            (
                "ip -4 route add 10.0.9.0/24",
                "ip -4 route del 10.0.9.0/24 dev alagg-nx9 table 1634494338",
            ),
            (
                "ip -6 route add fd00::/64",
                "ip -6 route del fd00::/64 dev alagg-nx9 table 1634494338",
            ),
            (
                "iptables -w -t mangle -N ALAGG-",
                "iptables -w -t mangle -X ALAGG-alagg-nx9",
            ),
            (
                "iptables -w -t mangle -A ALAGG-",
                "iptables -w -t mangle -F ALAGG-alagg-nx9",
            ),
            (
                "ip6tables -w -t mangle -A ALAGG-",
                "ip6tables -w -t mangle -F ALAGG-alagg-nx9",
            ),
            (
                "iptables -w -t mangle -I POSTROUTING",
                "iptables -w -t mangle -D POSTROUTING -j ALAGG-alagg-nx9",
            ),
            (
                "ip6tables -w -t mangle -I POSTROUTING",
                "ip6tables -w -t mangle -D POSTROUTING -j ALAGG-alagg-nx9",
            ),
            (
                "ip -4 rule add not fwmark",
                "ip -4 rule del not fwmark 0x2000/0x2000 table 1634494338 pref 32765",
            ),
            (
                "ip -6 rule add table",
                "ip -6 rule del table 1634494338 pref 32768",
            ),
            (
                "iptables -w -t mangle -N ALAGGM",
                "iptables -w -t mangle -X ALAGGM-alagg-nx9",
            ),
            (
                "ip6tables -w -t mangle -A ALAGGM",
                "ip6tables -w -t mangle -F ALAGGM-alagg-nx9",
            ),
            (
                "iptables -w -t mangle -I OUTPUT",
                "iptables -w -t mangle -D OUTPUT -j ALAGGM-alagg-nx9",
            ),
            (
                "ip6tables -w -t mangle -I PREROUTING",
                "ip6tables -w -t mangle -D PREROUTING ! -i alagg-nx9 -j ALAGGM-alagg-nx9",
            ),
            ("ip addr add", "ip addr del 169.254.88.1/32 dev alagg-nx9"),
        ];
        let seen = SEEN.with_borrow(Clone::clone);
        for (change, undo) in cases {
            let runs: Vec<&(String, String)> =
                seen.iter().filter(|(c, _)| c.starts_with(change)).collect();
            assert!(!runs.is_empty(), "{change} never ran: {seen:#?}");
            for (command, journal) in runs {
                assert!(
                    journal.lines().any(|l| l == undo),
                    "`{command}` ran before the journal held `{undo}`:\n{journal}"
                );
            }
        }
        drop(setup);
    }

    #[test]
    fn a_failed_change_takes_its_undo_out_of_the_journal() {
        let dir = TempDir::new("failed");
        let mut setup = fake_setup(&dir);
        FAIL.with_borrow_mut(|fail| *fail = Some("route add"));
        let net: IpNet = "10.0.9.0/24".parse().unwrap();
        assert!(setup.route(&net, "alagg-nx9", 1400).is_err());
        let journal = std::fs::read_to_string(dir.journal()).unwrap();
        assert!(!journal.contains("route"), "{journal}");
        assert!(setup.undo.is_empty());
        FAIL.with_borrow_mut(|fail| *fail = None);
    }

    #[test]
    fn a_failed_undo_keeps_the_journal_for_another_try() {
        let dir = TempDir::new("kept");
        let mut setup = fake_setup(&dir);
        let net: IpNet = "10.0.9.0/24".parse().unwrap();
        setup.route(&net, "alagg-nx9", 1400).unwrap();
        setup
            .capture("alagg-nx9", &[net], queue_spec(), 0x2000)
            .unwrap();
        FAIL.with_borrow_mut(|fail| *fail = Some("route del"));
        let errors = setup.teardown();
        assert_eq!(errors.len(), 1, "{errors:?}");
        drop(setup);
        let journal = std::fs::read_to_string(dir.journal()).unwrap();
        let undo: Vec<&str> = journal.lines().filter(|l| !l.starts_with("pid ")).collect();
        assert_eq!(
            undo,
            [[
                "ip",
                "-4",
                "route",
                "del",
                "10.0.9.0/24",
                "dev",
                "alagg-nx9",
                "table",
                "1634494338"
            ]
            .join(&SEP.to_string())],
            "only the failed undo stays"
        );

        // `alagg down` while the cause lasts: tried again, still kept.
        let Recovery::Undone { errors, left, .. } = recover_with(&dir.journal(), fake).unwrap()
        else {
            panic!("the journal was not replayed");
        };
        assert_eq!((errors.len(), left.len()), (1, 1));
        assert!(
            dir.journal().exists(),
            "the journal went with a failed undo"
        );

        // Once the cause is fixed: undone, and the journal goes.
        FAIL.with_borrow_mut(|fail| *fail = None);
        let Recovery::Undone {
            changes,
            errors,
            left,
            ..
        } = recover_with(&dir.journal(), fake).unwrap()
        else {
            panic!("the journal was not replayed");
        };
        assert_eq!((changes, errors.len(), left.len()), (1, 0, 0));
        assert!(!dir.journal().exists());
    }

    #[test]
    fn a_journal_is_live_exactly_while_its_lock_is_held() {
        let dir = TempDir::new("lock");
        let setup = fake_setup(&dir);
        setup.write_journal().unwrap();
        // While the owner holds the lock (another open file: flock(2) locks conflict between
        // open files, also in one process), the journal is live whatever its pid line says.
        let journal = std::fs::read_to_string(dir.journal()).unwrap();
        std::fs::write(
            dir.journal(),
            journal.replace(&format!("pid {}", std::process::id()), "pid 4194304"),
        )
        .unwrap();
        match recover_with(&dir.journal(), fake).unwrap() {
            Recovery::Live { pid } => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a held lock was taken for a dead owner: {other:?}"),
        }
        assert!(dir.journal().exists());
        // The owner gone (its lock released with its file), the journal is a dead one's.
        drop(setup);
        std::fs::write(dir.journal(), "pid 1\n").unwrap();
        assert!(matches!(
            recover_with(&dir.journal(), fake).unwrap(),
            Recovery::Undone { changes: 0, .. }
        ));
    }

    #[test]
    fn a_journal_whose_pid_now_runs_another_alagg_is_recovered() {
        // A crashed instance's pid reused by another process called alagg (here a copy of
        // sleep(1) under that name): not the journal's owner, which holds no lock.
        let dir = TempDir::new("reuse");
        let impostor = dir.0.join("alagg");
        std::fs::copy("/bin/sleep", &impostor).unwrap();
        let mut child = Command::new(&impostor).arg("30").spawn().unwrap();
        // The child takes its new name in exec(2), which may finish after spawn returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let comm = loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id()));
            if comm.as_deref().is_ok_and(|c| c.trim() == "alagg")
                || std::time::Instant::now() > deadline
            {
                break comm;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        JOURNAL.with_borrow_mut(|path| *path = dir.journal());
        std::fs::write(
            dir.journal(),
            format!("pid {}\nip{SEP}route{SEP}del{SEP}10.0.9.0/24\n", child.id()),
        )
        .unwrap();
        let recovered = recover_with(&dir.journal(), fake);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(comm.unwrap().trim(), "alagg");
        match recovered.unwrap() {
            Recovery::Undone {
                changes: 1, errors, ..
            } => assert!(errors.is_empty()),
            other => panic!("a dead instance's journal was taken for a live one: {other:?}"),
        }
        assert!(!dir.journal().exists());
    }

    #[test]
    fn route_tables_are_alaggs_own_and_differ_by_device() {
        let names = [
            "alagg0",
            "alagg1",
            "alagg-nx9",
            "x",
            "tun0",
            "alagg0.site-b",
        ];
        let tables: std::collections::HashSet<u32> = names.iter().map(|n| route_table(n)).collect();
        assert_eq!(tables.len(), names.len(), "{tables:x?}");
        for table in tables {
            assert_eq!(table >> 16, 0x616c, "{table:#x}");
        }
        assert_eq!(route_table("alagg0"), route_table("alagg0"));
    }

    #[test]
    fn chain_names_fit_iptables() {
        assert_eq!(chain_name("alagg0"), "ALAGG-alagg0");
        assert!(chain_name("fifteen-chars-x").len() <= 28);
        assert!(mark_chain_name("fifteen-chars-x").len() <= 28);
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
