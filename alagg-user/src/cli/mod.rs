//! The commands of the `alagg` binary, one module each: [`up`](up()), [`down`](down()),
//! [`status`](status()), [`check`](check()), [`genkey`](genkey()), and the debugging verbs [`steal`](steal()),
//! [`attach`](attach()), and [`blast`](blast()) with [`sink`](sink()) (the frame loop). `main.rs` parses the command line ([`Cli`], defined in `args`) and
//! calls one of these; they return errors that name the file, key or interface at fault.

mod args;
mod check;
mod debug;
mod down;
mod frame_loop;
mod genkey;
mod reload;
mod status;
mod up;

pub use args::{Cli, Command, LogFormat, command};
pub use check::check;
pub use debug::{attach, steal};
pub use down::down;
pub use frame_loop::{blast, sink};
pub use genkey::genkey;
pub use reload::reload;
pub use status::status;
pub use up::up;

use crate::config::Config;
pub use crate::link::xdp::XdpMode;

fn require_root() -> anyhow::Result<()> {
    if !crate::sys::is_root() {
        anyhow::bail!(
            "alagg needs root (CAP_NET_ADMIN and CAP_BPF) to attach XDP: run it with sudo"
        );
    }
    Ok(())
}

/// What this machine allows the plan to hold ([`judge_memory`]).
#[derive(Clone, Copy, Debug)]
struct HostMemory {
    /// RAM in bytes, if known.
    ram: Option<u64>,
    /// `RLIMIT_MEMLOCK` in bytes; `None`: unlimited.
    memlock: Option<u64>,
    /// `CAP_IPC_LOCK`, which lifts the limit.
    ipc_lock: bool,
}

impl HostMemory {
    fn this_machine() -> Self {
        Self {
            ram: crate::sys::mem_total(),
            memlock: crate::sys::memlock_limit(),
            ipc_lock: crate::sys::has_cap_ipc_lock(),
        }
    }
}

/// Holds the most memory `config` can make the host hold against `host`: `(problems,
/// warnings)`, each naming the keys to change.
///
/// Refused: more than the machine's RAM (every queue full at once, which is when alagg falls
/// behind, would then exhaust the host far from any sign in the configuration), and UMEM above
/// `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK` (the kernel would refuse the sockets at start with a
/// bare ENOBUFS). Warned about: more than half the RAM, a legitimate choice on a machine that
/// does nothing else, since the worst case needs every queue full of the largest packets.
fn judge_memory(config: &Config, host: HostMemory) -> (Vec<String>, Vec<String>) {
    use crate::config::human_bytes;
    let memory = config.memory();
    let locked = memory.locked();
    let queued = memory.queued(config.capture.queue_max_len);
    let total = locked + queued;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Some(ram) = host.ram {
        let what = format!(
            "this plan can make the host hold {} ({} of AF_XDP UMEM, {} of packets in full \
             NFQUEUE queues)",
            human_bytes(total),
            human_bytes(locked),
            human_bytes(queued)
        );
        // The longest queues that keep the whole within half the RAM, as a concrete hint.
        let per_packet = memory.queued(1).max(1);
        let fitting = (ram / 2).saturating_sub(locked) / per_packet;
        let hint = if fitting >= 1 && fitting < u64::from(config.capture.queue_max_len) {
            format!(" ({fitting} keeps it within half the RAM)")
        } else {
            String::new()
        };
        let fix = format!(
            "lower capture.queue_max_len{hint} or capture.queues, turn capture.gso off, or use \
             io = \"af_packet\" on some links (no UMEM)"
        );
        if total > ram {
            problems.push(format!(
                "{what}, more than this machine's {} of RAM: {fix}",
                human_bytes(ram)
            ));
        } else if total > ram / 2 {
            warnings.push(format!(
                "{what}, more than half of this machine's {} of RAM; if that is more than it \
                 can spare: {fix}",
                human_bytes(ram)
            ));
        }
    }
    if let Some(limit) = host
        .memlock
        .filter(|&limit| !host.ipc_lock && locked > limit)
    {
        problems.push(format!(
            "the AF_XDP sockets lock {} of UMEM ({} socket(s): capture.queues x XDP links), \
             above RLIMIT_MEMLOCK ({}) and without CAP_IPC_LOCK: raise the limit \
             (LimitMEMLOCK=infinity in the systemd unit, `ulimit -l unlimited`), or lower \
             capture.queues, or use io = \"af_packet\" on some links",
            human_bytes(locked),
            memory.sockets,
            human_bytes(limit)
        ));
    }
    (problems, warnings)
}

/// Warnings for links whose frames the peer may be unable to receive, given each interface's
/// MTU (`mtu_of`, `None` when unknown): an `io = "af_packet"` link sends frames as long as its
/// MTU (up to a packet-socket slot), but a peer with `io = "xdp"` on that link receives into
/// AF_XDP frames, which hold only a UMEM frame less its headroom ([`crate::link::frame_room`]);
/// the kernel drops every longer frame there (counted `xsk_rx_dropped` on the peer). Neither
/// host knows the other's `io`, so this is a warning, on the host that sends the long frames.
fn judge_frames(config: &Config, mtu_of: impl Fn(&str) -> Option<usize>) -> Vec<String> {
    use crate::link::{IoMode, frame_room, xsk::XskConfig};
    let xsk = XskConfig::default();
    let xdp_room = frame_room(IoMode::Xdp, &xsk);
    let packet_room = frame_room(IoMode::AfPacket, &xsk);
    config
        .links
        .iter()
        .filter(|link| link.io == IoMode::AfPacket)
        .filter_map(|link| {
            let mtu = mtu_of(&link.interface)?;
            let sent = mtu.min(packet_room);
            (sent > xdp_room).then(|| {
                format!(
                    "link {interface}: io = \"af_packet\" with MTU {mtu} sends frames of up to \
                     {sent} bytes, more than the {xdp_room} an AF_XDP frame holds: if the peer \
                     uses io = \"xdp\" on this link, it drops every longer frame (its \
                     xsk_rx_dropped counts them) and large packets never arrive; use io = \
                     \"af_packet\" at the peer's end of this link too, or an MTU of at most \
                     {xdp_room} on both ends (`ip link set {interface} mtu {xdp_room}`)",
                    interface = link.interface
                )
            })
        })
        .collect()
}

/// The MTU of `interface`, if it can be read.
fn interface_mtu(interface: &str) -> Option<usize> {
    crate::netdev::interface(interface).ok().map(|i| i.mtu)
}

/// Parses an ethertype given in hexadecimal (`0x88b5` or `88b5`); refuses values that are
/// lengths.
pub fn parse_ethertype(text: &str) -> Result<u16, String> {
    let value = crate::config::hex_ethertype(text, true)
        .ok_or_else(|| format!("{text:?} is not a 16-bit hexadecimal ethertype such as 0x88b5"))?;
    if value < 0x0600 {
        return Err(format!(
            "{text} is a length, not an ethertype: ethertypes start at 0x0600 (IEEE 802.3 clause 3.2.6)"
        ));
    }
    Ok(value)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    fn config(capture: &str, links: usize) -> Config {
        let mut text = format!("[capture]\ndestinations = [\"10.0.9.2/32\"]\n{capture}\n");
        for i in 0..links {
            text.push_str(&format!(
                "[[link]]\ninterface = \"eth{i}\"\npeer_mac = \"02:00:00:00:0{i}:02\"\n"
            ));
        }
        Config::parse(&text, "test.toml").unwrap()
    }

    #[test]
    fn memory_beyond_the_machine_is_refused_naming_the_keys() {
        const GIB: u64 = 1 << 30;
        let host = |ram_gib: u64, memlock: Option<u64>, ipc_lock| HostMemory {
            ram: Some(ram_gib * GIB),
            memlock,
            ipc_lock,
        };
        let defaults = config("", 2);
        let huge = config("queues = 8\nqueue_max_len = 1048576", 4);
        // (what, configuration, host, problems, warnings, words of the first message)
        type Case<'a> = (&'a str, &'a Config, HostMemory, usize, usize, &'a [&'a str]);
        let cases: [Case<'_>; 6] = [
            (
                "defaults on 16 GiB",
                &defaults,
                host(16, None, true),
                0,
                0,
                &[],
            ),
            (
                "a million packets a queue on 16 GiB",
                &huge,
                host(16, None, true),
                1,
                0,
                &[
                    "capture.queue_max_len (12614 keeps",
                    "capture.queues",
                    "16 GiB of RAM",
                ],
            ),
            (
                "defaults on 512 MiB",
                &defaults,
                HostMemory {
                    ram: Some(GIB / 2),
                    memlock: None,
                    ipc_lock: true,
                },
                0,
                1,
                &["more than half", "capture.queue_max_len"],
            ),
            (
                "UMEM above RLIMIT_MEMLOCK",
                &defaults,
                host(16, Some(8 << 20), false),
                1,
                0,
                &["RLIMIT_MEMLOCK", "LimitMEMLOCK", "capture.queues", "64 MiB"],
            ),
            (
                "CAP_IPC_LOCK lifts RLIMIT_MEMLOCK",
                &defaults,
                host(16, Some(8 << 20), true),
                0,
                0,
                &[],
            ),
            (
                "RAM unknown",
                &huge,
                HostMemory {
                    ram: None,
                    memlock: None,
                    ipc_lock: true,
                },
                0,
                0,
                &[],
            ),
        ];
        for (what, config, host, problems, warnings, words) in cases {
            let (got_problems, got_warnings) = judge_memory(config, host);
            assert_eq!(
                (got_problems.len(), got_warnings.len()),
                (problems, warnings),
                "{what}: {got_problems:?} {got_warnings:?}"
            );
            let first = got_problems.first().or(got_warnings.first());
            for word in words {
                assert!(
                    first.is_some_and(|m| m.contains(word)),
                    "{what}: no {word:?} in {first:?}"
                );
            }
        }
    }

    #[test]
    fn af_packet_links_longer_than_an_af_xdp_frame_are_warned_about() {
        let xdp_room = crate::link::frame_room(
            crate::link::IoMode::Xdp,
            &crate::link::xsk::XskConfig::default(),
        );
        let config = config("", 3);
        let mut mixed = config.clone();
        mixed.links[1].io = crate::link::IoMode::AfPacket;
        mixed.links[2].io = crate::link::IoMode::AfPacket;
        // (what, configuration, eth0's, eth1's and eth2's MTU, warnings, words of the first)
        type Case<'a> = (
            &'a str,
            &'a Config,
            [Option<usize>; 3],
            usize,
            &'a [&'a str],
        );
        let cases: [Case<'_>; 6] = [
            ("XDP links, jumbo", &config, [Some(9000); 3], 0, &[]),
            ("AF_PACKET links, 1500", &mixed, [Some(1500); 3], 0, &[]),
            (
                "AF_PACKET links, jumbo",
                &mixed,
                [Some(9000), Some(9000), Some(1500)],
                1,
                &[
                    "link eth1",
                    "MTU 9000",
                    "io = \"xdp\"",
                    "mtu 3826",
                    "af_packet",
                ],
            ),
            (
                "at what an AF_XDP frame holds",
                &mixed,
                [None, Some(xdp_room), None],
                0,
                &[],
            ),
            (
                "one byte more",
                &mixed,
                [None, Some(xdp_room + 1), None],
                1,
                &["eth1"],
            ),
            ("MTU unknown", &mixed, [None; 3], 0, &[]),
        ];
        for (what, config, mtus, warnings, words) in cases {
            let got = judge_frames(config, |interface| {
                let index: usize = interface.strip_prefix("eth")?.parse().ok()?;
                mtus[index]
            });
            assert_eq!(got.len(), warnings, "{what}: {got:?}");
            for word in words {
                assert!(got[0].contains(word), "{what}: no {word:?} in {got:?}");
            }
        }
        assert_eq!(xdp_room, 3826, "the message's example");
    }

    #[test]
    fn ethertypes_parse_in_hex_and_reject_lengths() {
        assert_eq!(parse_ethertype("0x88b5"), Ok(0x88b5));
        assert_eq!(parse_ethertype("88B5"), Ok(0x88b5));
        assert!(parse_ethertype("0x05dc").is_err());
        assert!(parse_ethertype("zz").is_err());
        assert!(parse_ethertype("0x1ffff").is_err());
    }
}
