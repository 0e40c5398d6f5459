//! The TOML configuration of one alagg host: what to capture, which links to send it over and how
//! the link protocol behaves.
//!
//! [`Config::load`] reads a file, [`Config::parse`] parses text; both reject unknown keys (every
//! table is `deny_unknown_fields`) and then run [`Config::validate`], so a `Config` they return
//! is one `alagg up` can act on: at least one link, unique interface names, destinations that
//! are networks (no host bits), neither default routes nor overlapping one another, and every
//! number within its range. Every error names the file, the key (`link[1].peer_mac`) and what
//! to do. Everything but `capture.destinations` and the `[[link]]` tables has a default;
//! `config/alagg.example.toml` lists every key with its default and meaning.
//!
//! [`Config::plan`] renders what `alagg up` would do with a configuration, for `alagg check`.
#![deny(unsafe_code)]

pub mod key;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use alagg_common::DEFAULT_ETHERTYPE;
use alagg_proto::wire::FecParams;
pub use alagg_proto::wire::MacAddr;

pub use crate::link::{IoMode, xdp::XdpMode};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

/// Most `[[link]]` tables a configuration may have.
pub const MAX_LINKS: usize = 16;
/// Most NFQUEUE queues (and so capture workers) a configuration may ask for.
pub const MAX_QUEUES: u16 = 64;
/// Longest interface name in bytes: `IFNAMSIZ` (16, `include/uapi/linux/if.h`) less the NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// CPU numbers must be below this: `CPU_SETSIZE` of glibc's `cpu_set_t`.
pub const MAX_CPUS: usize = 1024;
/// Range of `protocol.hold_ms`.
pub const HOLD_MS_RANGE: RangeInclusive<u64> = 1..=10_000;
/// Range of `protocol.dedup_window` (a power of two as well).
pub const DEDUP_WINDOW_RANGE: RangeInclusive<u32> = 64..=(1 << 20);
/// Range of `protocol.reorder_capacity`.
pub const REORDER_CAPACITY_RANGE: RangeInclusive<u32> = 1..=65_536;
/// Range of `tun.mtu`: 68 is the least every IPv4 link must carry (RFC 791).
pub const TUN_MTU_RANGE: RangeInclusive<u32> = 68..=65_535;
/// Least MTU of a link carrying IPv6 (RFC 8200, section 5).
pub const IPV6_MIN_MTU: u32 = 1280;
/// Default `capture.fwmark`: one bit that Kubernetes (0x4000, 0x8000), Cilium (0x0f00),
/// Calico (0xffff0000), Tailscale (0xff0000) and wg-quick (0xca6c, on its own sockets'
/// packets only) leave alone.
pub const DEFAULT_FWMARK: u32 = 0x2000;

/// Range of `capture.queue_max_len`.
pub const QUEUE_MAX_LEN_RANGE: RangeInclusive<u32> = 1..=(1 << 20);
/// Range of `link.weight` (accepted and ignored).
pub const WEIGHT_RANGE: RangeInclusive<u32> = 1..=1000;
/// Range of `link.rate_mbit`: 0 (measured) to 400 Gbit/s.
pub const RATE_MBIT_RANGE: RangeInclusive<u32> = 0..=400_000;
/// `cpu.busy_poll_us`: up to one second.
pub const BUSY_POLL_US_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// `cpu.busy_poll_us` when not set.
pub const DEFAULT_BUSY_POLL_US: u32 = 200;
/// The TUN device's name when `[tun] name` is not given.
pub const DEFAULT_TUN_NAME: &str = "alagg0";

/// Where `[metrics]` listens when it gives no `listen`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9187);

/// Why a configuration could not be loaded. Each message names the file (`origin`) and says
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The text is not TOML, has an unknown key or a value of the wrong type. The message is
    /// toml's, which names the key and shows the line.
    #[error("{origin}: {message}")]
    Parse {
        /// The file name, or what the text came from.
        origin: String,
        /// toml's message.
        message: String,
    },
    /// The TOML is well formed but a value is not acceptable.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The file name, or what the text came from.
        origin: String,
        /// The offending key, e.g. `link[1].peer_mac` or `capture.destinations[0]`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// One host's configuration: the TOML file as a whole.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[capture]`: which outbound packets are taken from the kernel.
    pub capture: Capture,
    /// `[scheduler]`: which links each packet goes out on.
    pub scheduler: SchedulerConfig,
    /// `[tun]`: the device received packets are delivered through.
    pub tun: TunConfig,
    /// `[protocol]`: the link protocol; both hosts must agree on it.
    pub protocol: ProtocolConfig,
    /// `[[link]]`: the links to the peer, in the order given (the order numbers them).
    #[serde(rename = "link")]
    pub links: Vec<LinkConfig>,
    /// `[cpu]`: placement of the worker threads.
    pub cpu: CpuConfig,
    /// `[metrics]`: the Prometheus endpoint; off when the table is absent.
    pub metrics: Option<MetricsConfig>,
    /// `[auth]`: authenticated (and optionally encrypted) frames; off when the table is absent.
    pub auth: Option<AuthConfig>,
}

/// `[auth]`: every frame carries an authentication tag under a key both hosts share
/// (`docs/PROTOCOL.md`, *Authentication*).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The key file: one line, the base64 of 32 random bytes (`alagg genkey`), mode 0600 (or
    /// stricter), owned by root. Required.
    pub key_file: PathBuf,
    /// Encrypt the payload too. Default `false` (authenticated only).
    #[serde(default)]
    pub encrypt: bool,
}

/// `[capture]`: outbound packets to `destinations` are taken by iptables' `NFQUEUE` target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    /// The peer's networks, IPv4 and IPv6. A bare address means that host alone (/32, /128).
    #[serde(deserialize_with = "de_destinations")]
    pub destinations: Vec<IpNet>,
    /// First NFQUEUE number. Default 0.
    pub queue: u16,
    /// Number of NFQUEUE queues, `queue..queue + queues`, one capture worker (a thread with
    /// its own AF_XDP socket per link) each; the kernel spreads flows over them. Default 1.
    pub queues: u16,
    /// Let packets pass uncaptured, on the normal route, when no alagg listens on the queue or
    /// its queue is full, instead of dropping them (`--queue-bypass`, `NFQA_CFG_F_FAIL_OPEN`).
    /// Default true.
    pub fail_open: bool,
    /// Most packets the kernel holds for alagg per queue (`NFQA_CFG_QUEUE_MAXLEN`). Default 4096.
    pub queue_max_len: u32,
    /// Firewall mark bits alagg sets on packets to the destinations, with `fail_open`, so that
    /// those it lets pass take the host's own route ([`crate::host`]). Default 0x2000.
    pub fwmark: u32,
    /// Capture TCP whole, as the stack built it (GSO packets of up to 64 KiB), on queues of
    /// its own, one per worker ([`Capture::gso_queue`]); alagg fragments those packets itself and completes their
    /// checksums, so far fewer packets cross NFQUEUE per byte. Other traffic is captured
    /// segment by segment. Default true.
    pub gso: bool,
    /// How the kernel spreads packets over several queues. Default `flow`.
    pub spread: Spread,
}

/// `capture.spread`: which of several queues a packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// `flow`: by a hash of the packet's addresses (`--queue-balance`), so each pair of hosts
    /// stays on one worker and its packets keep their order; one pair uses one worker.
    #[default]
    Flow,
    /// `cpu`: by the CPU that sent the packet (`--queue-cpu-fanout`), so even one pair of
    /// hosts uses every worker; a flow whose sender moves between CPUs may be reordered.
    Cpu,
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Spread::Flow => "flow",
            Spread::Cpu => "cpu",
        })
    }
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            destinations: Vec::new(),
            queue: 0,
            queues: 1,
            fail_open: true,
            queue_max_len: 4096,
            fwmark: DEFAULT_FWMARK,
            gso: true,
            spread: Spread::Flow,
        }
    }
}

impl Capture {
    /// The NFQUEUE numbers in use: `queue..=queue + queues - 1`. Valid after [`Config::validate`].
    pub fn queue_numbers(&self) -> RangeInclusive<u16> {
        self.queue..=self.queue.saturating_add(self.queues.saturating_sub(1))
    }

    /// The first NFQUEUE number TCP is captured on whole when `gso` is on: the one after
    /// [`Capture::queue_numbers`]; there are `queues` of them, one per worker. Valid after
    /// [`Config::validate`].
    pub fn gso_queue(&self) -> Option<u16> {
        self.gso.then(|| self.queue.saturating_add(self.queues))
    }
}

/// `[scheduler]`: which links each packet is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// The policy. Default `redundant`.
    pub mode: SchedulerMode,
    /// Pack small packets captured together into one frame per link (a bundle). Never waits
    /// for packets; saves per-frame work on both hosts. Default `true`; turn it off only for a
    /// peer running an alagg from before bundles.
    pub bundle: bool,
    /// Forward error correction: `"off"`, `"K+M"` (K data frames protected by M parity
    /// frames, any M of the K + M recoverable: `"8+1"` XOR, `"8+2"` Reed-Solomon) or `"auto"`
    /// (the protection follows the links' measured loss). Not with `redundant`. Unset: `off`
    /// ([`SchedulerConfig::fec`]).
    #[serde(rename = "fec")]
    pub fec_setting: Option<FecSetting>,
    /// Microseconds after its first frame that an FEC block which is not full is closed (its
    /// parity sent), so FEC never holds recovery back longer. Default 1000, at most 2000.
    pub fec_timeout_us: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            mode: SchedulerMode::default(),
            bundle: true,
            fec_setting: None,
            fec_timeout_us: DEFAULT_FEC_TIMEOUT_US,
        }
    }
}

impl SchedulerConfig {
    /// The FEC in effect: as set, `off` by default. (`auto` by default with `adaptive` was
    /// measured and dropped: where adaptive keeps traffic off a lossy link it spent 1.64
    /// bytes on the links per byte delivered against 1.09 without parity, for the same 0.05 %
    /// loss.)
    pub fn fec(&self) -> FecSetting {
        self.fec_setting.unwrap_or(FecSetting::Off)
    }
}

/// Default `[scheduler] fec_timeout_us`.
pub const DEFAULT_FEC_TIMEOUT_US: u32 = 1000;
/// Largest `[scheduler] fec_timeout_us`: what receivers wait for a block's parity.
pub const MAX_FEC_TIMEOUT_US: u32 = alagg_proto::fec::MAX_BLOCK_TIME.as_micros() as u32;

/// `[scheduler] fec`: what protects the frames of `stripe`, `backup` and `adaptive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum FecSetting {
    /// No parity.
    #[default]
    Off,
    /// Blocks of this shape.
    Fixed(FecParams),
    /// Chosen per measured loss ([`alagg_proto::fec::AutoFec`]).
    Auto,
}

impl TryFrom<String> for FecSetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "off" => Ok(FecSetting::Off),
            "auto" => Ok(FecSetting::Auto),
            other => other
                .parse()
                .map(FecSetting::Fixed)
                .map_err(|e| format!("{e}, or \"off\" or \"auto\"")),
        }
    }
}

impl fmt::Display for FecSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FecSetting::Off => f.write_str("off"),
            FecSetting::Fixed(params) => write!(f, "{params}"),
            FecSetting::Auto => f.write_str("auto"),
        }
    }
}

/// How packets are spread over the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerMode {
    /// `redundant`: every packet on every link that is up; the receiver keeps the first copy.
    #[default]
    Redundant,
    /// `stripe`: each packet on the one link where it would arrive first (its queue over its
    /// measured rate, plus its delay): the links' capacities add up.
    Stripe,
    /// `backup`: every packet on the healthy link with the lowest `priority`; the others carry
    /// only probes, and take over within about 100 ms of its failure.
    Backup,
    /// `adaptive`: as `stripe`, and a second copy of a packet whose link is lossy or far slower
    /// than the best.
    Adaptive,
}

impl SchedulerMode {
    /// What the mode does, in a few words (for `alagg check`).
    pub fn describe(self) -> &'static str {
        match self {
            SchedulerMode::Redundant => "every packet on every link that is up",
            SchedulerMode::Stripe => "each packet on the link where it arrives first",
            SchedulerMode::Backup => "every packet on the best healthy link by priority",
            SchedulerMode::Adaptive => "striped, with a second copy where a link is lossy or slow",
        }
    }

    /// A scheduler of this mode, before its first packet.
    pub(crate) fn scheduler(self) -> alagg_proto::AnyScheduler {
        use alagg_proto::{Adaptive, AnyScheduler, Backup, Redundant, Stripe};
        match self {
            SchedulerMode::Redundant => AnyScheduler::Redundant(Redundant),
            SchedulerMode::Stripe => AnyScheduler::Stripe(Stripe::default()),
            SchedulerMode::Backup => AnyScheduler::Backup(Backup),
            SchedulerMode::Adaptive => AnyScheduler::Adaptive(Adaptive::default()),
        }
    }
}

impl fmt::Display for SchedulerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchedulerMode::Redundant => "redundant",
            SchedulerMode::Stripe => "stripe",
            SchedulerMode::Backup => "backup",
            SchedulerMode::Adaptive => "adaptive",
        })
    }
}

/// `[tun]`: the TUN device that received packets are written to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunConfig {
    /// Interface name, 1 to 15 bytes. Default `alagg0`.
    pub name: String,
    /// MTU of the device, 68..=65535; `None` leaves the choice to `alagg up`.
    pub mtu: Option<u32>,
    /// Write consecutive UDP datagrams of one flow, received together, to the device as one
    /// GSO packet that the kernel splits again (UDP receive offload; Linux 6.9 and later,
    /// off by itself on older kernels). Default true.
    pub coalesce: bool,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            name: DEFAULT_TUN_NAME.to_owned(),
            mtu: None,
            coalesce: true,
        }
    }
}

/// `[protocol]`: the link protocol. Both hosts must have the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    /// Ethertype of alagg frames, at least 0x0600. In TOML a string `"0x88b5"` or an integer
    /// (`0x88B5`, `34997`). Default 0x88B5, IEEE 802 local experimental ethertype 1.
    #[serde(deserialize_with = "de_ethertype")]
    pub ethertype: u16,
    /// The longest, in milliseconds, a packet that arrived ahead of a missing one is held
    /// before the gap is given up on, 1..=10000. The hold itself follows the links: their
    /// delay spread and jitter plus 1 ms, at least 5 ms (or this, if lower), at most this.
    /// Default 100.
    pub hold_ms: u64,
    /// How many sequence numbers below the newest the duplicate filter remembers; a power of two
    /// in 64..=1048576. Default 4096.
    pub dedup_window: u32,
    /// Most packets held for reordering at once, 1..=65536 and at most `dedup_window`.
    /// Default 1024.
    pub reorder_capacity: u32,
    /// Whether each link delivers its frames in the order they were sent, as Ethernet does:
    /// then a gap every link has gone past is given up at once (the packet is lost on every
    /// link) instead of after `hold_ms`. Turn it off for links that reorder frames (a path
    /// through several routes, a bonded or load-balanced L2). Default true.
    pub links_keep_order: bool,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            ethertype: DEFAULT_ETHERTYPE,
            hold_ms: 100,
            dedup_window: 4096,
            reorder_capacity: 1024,
            links_keep_order: true,
        }
    }
}

impl ProtocolConfig {
    /// The reorder hold time.
    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }
}

/// `[[link]]`: one Ethernet link to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Local interface name. Required.
    pub interface: String,
    /// The peer's MAC address on this link: unicast, not zero. Required.
    #[serde(deserialize_with = "de_mac")]
    pub peer_mac: MacAddr,
    /// How frames are sent and received. Default `xdp`.
    #[serde(default)]
    pub io: IoMode,
    /// How the XDP program is attached when `io = "xdp"`. Default `auto`.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// For `backup`: lower is preferred. Default: the link's position in the file (0 first).
    #[serde(default)]
    pub priority: Option<u32>,
    /// The sender's cap on the link's rate in Mbit/s, for the schedulers that stripe; 0 (the
    /// default) uses the rate measured from the peer's feedback.
    #[serde(default)]
    pub rate_mbit: u32,
    /// Accepted for configurations written before `stripe` existed, and ignored: striping
    /// measures each link's rate (cap it with `rate_mbit`).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `[cpu]`: where worker threads run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Pin each worker thread to one CPU. Default true.
    pub pin: bool,
    /// The CPUs to pin to, in order of use; `None` means every CPU the process may run on.
    pub cores: Option<Vec<usize>>,
    /// Microseconds the worker threads keep polling (yielding the CPU between looks) after
    /// their last packet before they sleep. Longer: sparse traffic (a ping, a request) meets a
    /// thread that is awake instead of waking one, at the cost of CPU while traffic is sparse.
    /// Default 200.
    pub busy_poll_us: u32,
    /// Run to completion: the receive stage (links to the TUN) runs on the first capture
    /// worker's thread, in the same loop as capture and transmit, instead of on a thread of its
    /// own: one thread to wake per host per direction, and what the host sends in answer to a
    /// delivered packet (an echo reply, a TCP ACK) is captured in the same turn. `None` (the
    /// default) decides on the host: on where the CPUs alagg may use are no more than its
    /// threads with a receive thread of their own ([`CpuConfig::run_to_completion`]).
    pub run_to_completion: Option<bool>,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            pin: true,
            cores: None,
            busy_poll_us: DEFAULT_BUSY_POLL_US,
            run_to_completion: None,
        }
    }
}

impl CpuConfig {
    /// [`CpuConfig::busy_poll_us`] as a duration.
    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(u64::from(self.busy_poll_us))
    }

    /// The CPUs alagg's threads may run on: `cores` when it pins to a list, else those the
    /// process may use (its affinity mask and cgroup quota), at least 1.
    pub fn usable_cpus(&self) -> usize {
        match (&self.cores, self.pin) {
            (Some(cores), true) => cores.len().max(1),
            _ => std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Whether the receive stage runs on the first capture worker's thread, for `workers`
    /// capture workers on `cpus` CPUs: as configured, or by default when the CPUs are no more
    /// than the threads a receive thread of its own would make (`workers + 1`). Then that
    /// thread would not add a core's work but take turns with the others, and with the
    /// softirqs the traffic runs in, at the cost of a wake-up per packet each way; measured on
    /// two cores, running to completion cost 36 % less CPU per 64-byte packet and cut the
    /// ping's median (`docs/PERFORMANCE.md`, *Run to completion*).
    pub fn run_to_completion(&self, workers: usize, cpus: usize) -> bool {
        self.run_to_completion
            .unwrap_or(cpus <= workers.saturating_add(1))
    }
}

/// `[metrics]`: a Prometheus text endpoint over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address and port to listen on. Default `127.0.0.1:9187`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}

/// `link.peer_mac`: a MAC address string ([`MacAddr`]'s `FromStr`).
fn de_mac<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

/// `capture.destinations`: a list of networks, where a bare address stands for itself alone.
fn de_destinations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    /// One destination, parsed with a message that says what is expected.
    struct Destination(IpNet);

    impl<'de> Deserialize<'de> for Destination {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            if let Ok(net) = text.parse::<IpNet>() {
                return Ok(Destination(net));
            }
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(addr)) => Ok(Destination(IpNet::V4(Ipv4Net::from(addr)))),
                Ok(IpAddr::V6(addr)) => Ok(Destination(IpNet::V6(Ipv6Net::from(addr)))),
                Err(_) => Err(de::Error::custom(format!(
                    "{text:?} is not a network: write an address with a prefix length, such as \
                     \"10.0.9.0/24\" or \"fd00::2/128\""
                ))),
            }
        }
    }

    let list = Vec::<Destination>::deserialize(deserializer)?;
    Ok(list.into_iter().map(|destination| destination.0).collect())
}

/// An ethertype written in hexadecimal: `0x` (or `0X`) and one to four digits, or with `bare`
/// the digits alone too (`88b5`, as the debug verbs take it). The one parser of both.
pub(crate) fn hex_ethertype(text: &str, bare: bool) -> Option<u16> {
    let digits = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(digits) => digits,
        None if bare => text,
        None => return None,
    };
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

/// `protocol.ethertype`: a string `"0x88b5"` or an integer.
fn de_ethertype<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    struct EthertypeVisitor;

    fn from_int<E: de::Error>(value: impl TryInto<u16> + fmt::Display + Copy) -> Result<u16, E> {
        value.try_into().map_err(|_| {
            E::custom(format!(
                "{value} does not fit in an ethertype: write a 16-bit value such as 0x88b5"
            ))
        })
    }

    impl Visitor<'_> for EthertypeVisitor {
        type Value = u16;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an ethertype: a string such as \"0x88b5\" or an integer such as 0x88B5")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u16, E> {
            from_int(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u16, E> {
            from_int(value)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u16, E> {
            hex_ethertype(text, false).ok_or_else(|| {
                E::custom(format!(
                    "{text:?} is not an ethertype: write \"0x\" and up to four hexadecimal \
                         digits, such as \"0x88b5\", or an integer"
                ))
            })
        }
    }

    deserializer.deserialize_any(EthertypeVisitor)
}

/// A rejected value before the origin is attached: the key and what to do.
struct Invalid {
    key: String,
    message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Checks an interface name given outside a file (such as `alagg status --tun`) the way the
/// configuration checks `[tun] name`; the error says what is wrong.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    check_tun_name("", name).map_err(|invalid| invalid.message)
}

/// Checks the TUN device's name: a valid interface name ([`check_ifname`]) made only of ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `-`. The name is used as it is in the
/// `TUNSETIFF` request, in `ip` commands, in the iptables rule `-o <name>` and in the chain
/// `ALAGG-<name>`, so anything one of them reads specially is refused: the kernel takes `%d`
/// as a pattern and picks a name of its own (`dev_alloc_name`, net/core/dev.c), iptables takes
/// a trailing `+` as a wildcard (`-o alagg+` matches every `alagg…` device; libxtables'
/// `xtables_parse_interface`) as nftables does `*`, and a leading `-` or `!` reads as an option
/// or a negation.
fn check_tun_name(key: &str, name: &str) -> Result<(), Invalid> {
    check_ifname(key, name)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        let why = match bad {
            '%' => "the kernel reads %d as a pattern and would choose the device's name itself",
            '+' => "iptables reads a trailing + as a wildcard matching other devices",
            '*' => "nftables reads * as a wildcard matching other devices",
            '!' => "iptables reads ! as a negation",
            _ => "ip and iptables need not read it as written",
        };
        return Err(invalid(
            key,
            format!(
                "TUN name {name:?} contains {bad:?} ({why}): use only ASCII letters, digits, \
                 '-', '_' and '.', such as \"alagg0\""
            ),
        ));
    }
    if name.starts_with('-') {
        return Err(invalid(
            key,
            format!(
                "TUN name {name:?} starts with '-', which ip and iptables read as an option: \
                 start it with a letter or digit, such as \"alagg0\""
            ),
        ));
    }
    Ok(())
}

/// Checks an interface name the way the kernel does (`dev_valid_name`, `net/core/dev.c`).
fn check_ifname(key: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(invalid(
            key,
            "the interface name is empty: give one, such as \"eth1\"",
        ));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(invalid(
            key,
            format!(
                "interface name {name:?} is {} bytes long; Linux allows at most {MAX_IFNAME_LEN} \
                 (IFNAMSIZ): use a shorter name",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(
            key,
            format!("{name:?} is not a valid interface name: choose another"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(invalid(
            key,
            format!(
                "interface name {name:?} contains {bad:?}, which Linux does not allow in \
                 interface names: remove it"
            ),
        ));
    }
    Ok(())
}

fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<(), Invalid> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "{value} is out of range: use a value from {} to {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// The loopback networks (RFC 1122 section 3.2.1.3, RFC 4291 section 2.5.3): traffic to them
/// never leaves the host, so they cannot be destinations.
const LOOPBACK: [IpNet; 2] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
];

/// Whether two networks share an address; networks of different families never do.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` (a file name) starts every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            origin: origin.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks what the TOML types cannot: ranges, names, uniqueness and the destinations. The
    /// first problem found, in file order, is returned.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check()
            .map_err(|Invalid { key, message }| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            })
    }

    fn check(&self) -> Result<(), Invalid> {
        self.check_capture()?;
        self.check_tun()?;
        self.check_protocol()?;
        self.check_links()?;
        self.check_scheduler()?;
        self.check_cpu()?;
        self.check_metrics()
    }

    fn check_capture(&self) -> Result<(), Invalid> {
        let capture = &self.capture;
        let destinations = &capture.destinations;
        if destinations.is_empty() {
            return Err(invalid(
                "capture.destinations",
                "no destinations: list the peer's networks, such as \
                 destinations = [\"10.0.9.2/32\", \"fd00::2/128\"]",
            ));
        }
        for (i, net) in destinations.iter().enumerate() {
            let key = format!("capture.destinations[{i}]");
            if net.prefix_len() == 0 {
                let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(invalid(
                    key,
                    format!(
                        "{net} is a default route: alagg would capture all {family} traffic, \
                         its own included. List only the peer's networks"
                    ),
                ));
            }
            if net.addr() != net.network() {
                return Err(invalid(
                    key,
                    format!(
                        "{net} has host bits set: write the network {} (or {}/{} for the one \
                         host)",
                        net.trunc(),
                        net.addr(),
                        net.max_prefix_len()
                    ),
                ));
            }
            if let Some(lo) = LOOPBACK.iter().find(|lo| overlaps(lo, net)) {
                return Err(invalid(
                    key,
                    format!(
                        "{net} overlaps the loopback network {lo}, which never leaves this host: \
                         list only the peer's networks"
                    ),
                ));
            }
            if let Some((j, other)) = destinations[..i]
                .iter()
                .enumerate()
                .find(|(_, other)| overlaps(other, net))
            {
                let message = if other == net {
                    format!("{net} is listed twice (also capture.destinations[{j}]): remove one")
                } else {
                    format!(
                        "{net} overlaps capture.destinations[{j}] ({other}): keep the wider \
                         network and remove the other"
                    )
                };
                return Err(invalid(key, message));
            }
        }
        check_range("capture.queues", capture.queues, &(1..=MAX_QUEUES))?;
        if capture.spread == Spread::Cpu && capture.queues == 1 {
            return Err(invalid(
                "capture.spread",
                "spread = \"cpu\" has no effect with one queue: remove it, or raise queues",
            ));
        }
        // With gso, TCP takes as many queues again after the others.
        let used = u32::from(capture.queues) * (1 + u32::from(capture.gso));
        let last = u32::from(capture.queue) + used - 1;
        if last > u32::from(u16::MAX) {
            return Err(invalid(
                "capture.queue",
                format!(
                    "queues {}..={last}{} go past the last NFQUEUE number, 65535: lower queue to \
                     at most {}",
                    capture.queue,
                    if capture.gso {
                        " (the second half for TCP, gso = true)"
                    } else {
                        ""
                    },
                    u32::from(u16::MAX) + 1 - used
                ),
            ));
        }
        check_range(
            "capture.queue_max_len",
            capture.queue_max_len,
            &QUEUE_MAX_LEN_RANGE,
        )?;
        if capture.fwmark == 0 {
            return Err(invalid(
                "capture.fwmark",
                format!(
                    "0 sets no bit: give the mark bit(s) alagg may use, such as {DEFAULT_FWMARK:#x} \
                     (one no other program on the host uses)"
                ),
            ));
        }
        Ok(())
    }

    fn check_tun(&self) -> Result<(), Invalid> {
        check_tun_name("tun.name", &self.tun.name)?;
        if let Some(mtu) = self.tun.mtu {
            check_range("tun.mtu", mtu, &TUN_MTU_RANGE)?;
            let has_v6 = self
                .capture
                .destinations
                .iter()
                .any(|net| net.addr().is_ipv6());
            if has_v6 && mtu < IPV6_MIN_MTU {
                return Err(invalid(
                    "tun.mtu",
                    format!(
                        "{mtu} is below {IPV6_MIN_MTU}, the least MTU IPv6 allows (RFC 8200), and \
                         capture.destinations has IPv6 networks: raise it to at least \
                         {IPV6_MIN_MTU} or leave it out"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_protocol(&self) -> Result<(), Invalid> {
        let protocol = &self.protocol;
        let ethertype = protocol.ethertype;
        if ethertype < 0x0600 {
            return Err(invalid(
                "protocol.ethertype",
                format!(
                    "{ethertype:#06x} is a length, not an ethertype: ethertypes start at 0x0600 \
                     (IEEE 802.3, clause 3.2.6). Use 0x88b5 or 0x88b6, the local experimental ones"
                ),
            ));
        }
        let taken = match ethertype {
            0x0800 => Some("IPv4"),
            0x0806 => Some("ARP"),
            0x86dd => Some("IPv6"),
            0x8100 => Some("802.1Q VLAN tags"),
            0x88a8 => Some("802.1ad service VLAN tags"),
            _ => None,
        };
        if let Some(taken) = taken {
            return Err(invalid(
                "protocol.ethertype",
                format!(
                    "{ethertype:#06x} belongs to {taken}: use 0x88b5 or 0x88b6, the local \
                     experimental ethertypes"
                ),
            ));
        }
        check_range("protocol.hold_ms", protocol.hold_ms, &HOLD_MS_RANGE)?;
        check_range(
            "protocol.dedup_window",
            protocol.dedup_window,
            &DEDUP_WINDOW_RANGE,
        )?;
        if !protocol.dedup_window.is_power_of_two() {
            return Err(invalid(
                "protocol.dedup_window",
                format!(
                    "{} is not a power of two: use {}",
                    protocol.dedup_window,
                    protocol.dedup_window.next_power_of_two()
                ),
            ));
        }
        check_range(
            "protocol.reorder_capacity",
            protocol.reorder_capacity,
            &REORDER_CAPACITY_RANGE,
        )?;
        if protocol.reorder_capacity > protocol.dedup_window {
            return Err(invalid(
                "protocol.reorder_capacity",
                format!(
                    "{} is larger than protocol.dedup_window ({}): the duplicate filter must \
                     cover every packet held for reordering. Lower it or raise dedup_window",
                    protocol.reorder_capacity, protocol.dedup_window
                ),
            ));
        }
        Ok(())
    }

    fn check_scheduler(&self) -> Result<(), Invalid> {
        let scheduler = &self.scheduler;
        if scheduler.fec() != FecSetting::Off && scheduler.mode == SchedulerMode::Redundant {
            return Err(invalid(
                "scheduler.fec",
                format!(
                    "fec = \"{}\" with mode = \"redundant\": redundant already sends every \
                     packet on every link and needs no parity. Use mode = \"stripe\", \
                     \"backup\" or \"adaptive\" with FEC, or fec = \"off\"",
                    scheduler.fec()
                ),
            ));
        }
        check_range(
            "scheduler.fec_timeout_us",
            scheduler.fec_timeout_us,
            &(50..=MAX_FEC_TIMEOUT_US),
        )
    }

    fn check_links(&self) -> Result<(), Invalid> {
        if self.links.is_empty() {
            return Err(invalid(
                "link",
                "no links: add a [[link]] table with interface and peer_mac for each link to \
                 the peer",
            ));
        }
        if self.links.len() > MAX_LINKS {
            return Err(invalid(
                "link",
                format!(
                    "{} links given; alagg handles at most {MAX_LINKS}: remove some",
                    self.links.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, link) in self.links.iter().enumerate() {
            let key = |field: &str| format!("link[{i}].{field}");
            check_ifname(&key("interface"), &link.interface)?;
            if !seen.insert(link.interface.as_str()) {
                return Err(invalid(
                    key("interface"),
                    format!(
                        "{:?} is already used by another [[link]]: each link needs its own \
                         interface",
                        link.interface
                    ),
                ));
            }
            if link.interface == self.tun.name {
                return Err(invalid(
                    key("interface"),
                    format!(
                        "{:?} is also tun.name: the TUN device and the links need different \
                         names",
                        link.interface
                    ),
                ));
            }
            let mac = link.peer_mac;
            if mac.is_zero() {
                return Err(invalid(
                    key("peer_mac"),
                    "00:00:00:00:00:00 is not a station address: give the MAC of the peer's \
                     interface on this link (`ip link show` on the peer)",
                ));
            }
            if mac.is_multicast() {
                let what = if mac.is_broadcast() {
                    "the broadcast address"
                } else {
                    "a multicast address (the low bit of its first byte is set)"
                };
                return Err(invalid(
                    key("peer_mac"),
                    format!(
                        "{mac} is {what}: give the unicast MAC of the peer's interface on this \
                         link (`ip link show` on the peer)"
                    ),
                ));
            }
            if link.io == IoMode::AfPacket && link.xdp_mode != XdpMode::Auto {
                return Err(invalid(
                    key("xdp_mode"),
                    format!(
                        "xdp_mode = \"{}\" has no effect with io = \"af_packet\": remove it, or \
                         set io = \"xdp\"",
                        link.xdp_mode
                    ),
                ));
            }
            if let Some(weight) = link.weight {
                check_range(&key("weight"), weight, &WEIGHT_RANGE)?;
            }
            check_range(&key("rate_mbit"), link.rate_mbit, &RATE_MBIT_RANGE)?;
        }
        Ok(())
    }

    fn check_cpu(&self) -> Result<(), Invalid> {
        check_range(
            "cpu.busy_poll_us",
            self.cpu.busy_poll_us,
            &BUSY_POLL_US_RANGE,
        )?;
        let Some(cores) = &self.cpu.cores else {
            return Ok(());
        };
        if !self.cpu.pin {
            return Err(invalid(
                "cpu.cores",
                "cores has no effect with pin = false: remove it, or set pin = true",
            ));
        }
        if cores.is_empty() {
            return Err(invalid(
                "cpu.cores",
                "the list is empty: name at least one CPU, or leave cores out to use them all",
            ));
        }
        let mut seen = HashSet::new();
        for (i, &core) in cores.iter().enumerate() {
            let key = format!("cpu.cores[{i}]");
            if core >= MAX_CPUS {
                return Err(invalid(
                    key,
                    format!("CPU {core} does not exist: CPU numbers are below {MAX_CPUS}"),
                ));
            }
            if !seen.insert(core) {
                return Err(invalid(
                    key,
                    format!("CPU {core} is listed twice: remove one"),
                ));
            }
        }
        Ok(())
    }

    fn check_metrics(&self) -> Result<(), Invalid> {
        match self.metrics {
            Some(metrics) if metrics.listen.port() == 0 => Err(invalid(
                "metrics.listen",
                format!(
                    "{} has port 0: give a fixed port, such as {DEFAULT_METRICS_LISTEN}",
                    metrics.listen
                ),
            )),
            _ => Ok(()),
        }
    }

    /// What `alagg up` would do with this configuration, as text for a person (`alagg check`).
    pub fn plan(&self) -> Plan<'_> {
        Plan(self)
    }
}

/// Bytes the kernel holds for one packet queued to NFQUEUE besides its data, at most about:
/// the `sk_buff` and its `skb_shared_info`, headroom and slab rounding (`SKB_TRUESIZE`,
/// include/linux/skbuff.h).
pub const QUEUED_PACKET_OVERHEAD: u64 = 1024;

/// Bytes one packet queued whole as GSO (`capture.gso`) can hold: 64 KiB of data in page
/// fragments, their rounding to pages, and the `sk_buff`.
pub const QUEUED_GSO_PACKET: u64 = (64 + 4) << 10;

/// What a configuration can make the host hold, at most: the figures `alagg check` prints and
/// `alagg check` and `alagg up` hold against the machine ([`Config::memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// AF_XDP sockets: one per capture worker on every XDP link.
    pub sockets: u64,
    /// Bytes of one socket's UMEM.
    pub umem_per_socket: u64,
    /// NFQUEUE queues for everything but whole TCP: `capture.queues`.
    pub queues: u64,
    /// NFQUEUE queues for whole TCP (`capture.gso`): `capture.queues`, or 0.
    pub gso_queues: u64,
    /// The largest packet on the first kind of queue, in bytes, overhead included.
    pub packet: u64,
}

impl MemoryPlan {
    /// Bytes of UMEM: pinned pages (never swapped out), charged to `RLIMIT_MEMLOCK` unless
    /// the process has `CAP_IPC_LOCK` (`xdp_umem_account_pages`, net/xdp/xdp_umem.c).
    pub fn locked(&self) -> u64 {
        self.sockets * self.umem_per_socket
    }

    /// Bytes of kernel memory the NFQUEUE queues hold when every one is full
    /// (`capture.queue_max_len` packets each) of the largest packets.
    pub fn queued(&self, max_len: u32) -> u64 {
        u64::from(max_len) * (self.queues * self.packet + self.gso_queues * QUEUED_GSO_PACKET)
    }
}

/// `bytes` for a person: GiB, MiB or KiB with one decimal where it matters.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let (unit, name) = match bytes {
        b if b >= GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        _ => (KIB, "KiB"),
    };
    let tenths = (bytes * 10).div_ceil(unit);
    if tenths % 10 == 0 {
        format!("{} {name}", tenths / 10)
    } else {
        format!("{}.{} {name}", tenths / 10, tenths % 10)
    }
}

impl Config {
    /// What this configuration can make the host hold at most ([`MemoryPlan`]).
    pub fn memory(&self) -> MemoryPlan {
        let xsk = crate::link::xsk::XskConfig::default();
        let xdp_links = self.links.iter().filter(|l| l.io == IoMode::Xdp).count() as u64;
        let queues = u64::from(self.capture.queues);
        // Packets reach the queues at most as large as the TUN's MTU, which is at most what a
        // frame of the roomiest link carries when not configured.
        let mtu = self.tun.mtu.map_or_else(
            || {
                self.links
                    .iter()
                    .map(|l| crate::link::frame_room(l.io, &xsk) as u64)
                    .max()
                    .unwrap_or(0)
            },
            u64::from,
        );
        MemoryPlan {
            sockets: queues * xdp_links,
            umem_per_socket: u64::from(xsk.frames) * u64::from(xsk.frame_size),
            queues,
            gso_queues: if self.capture.gso { queues } else { 0 },
            packet: mtu + QUEUED_PACKET_OVERHEAD,
        }
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    /// Parses and validates TOML text; errors name the origin `<string>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Config::parse(text, "<string>")
    }
}

/// A readable summary of what `alagg up` would do with a [`Config`]; see [`Config::plan`].
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a>(&'a Config);

/// ` (default)` when `value` is the default, nothing otherwise.
fn default_note<T: PartialEq>(value: &T, default: &T) -> &'static str {
    if value == default { " (default)" } else { "" }
}

impl fmt::Display for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.0;
        let capture = &config.capture;
        let defaults = Capture::default();
        let queues = capture.queue_numbers();
        writeln!(f, "capture")?;
        writeln!(
            f,
            "  outbound packets to {} destination(s), through iptables NFQUEUE {}..={}{}:",
            capture.destinations.len(),
            queues.start(),
            queues.end(),
            default_note(
                &(capture.queue, capture.queues),
                &(defaults.queue, defaults.queues)
            ),
        )?;
        for net in &capture.destinations {
            writeln!(f, "    {net}")?;
        }
        if capture.queues > 1 {
            writeln!(
                f,
                "  {} capture workers, one per queue, each with its own AF_XDP socket per link \
                 (on the interface's queue of the worker's number); one sequence space",
                capture.queues
            )?;
            writeln!(
                f,
                "  packets spread over the queues by {}{}",
                match capture.spread {
                    Spread::Flow => "a hash of their addresses (each host pair on one worker)",
                    Spread::Cpu => "the CPU that sent them",
                },
                default_note(&capture.spread, &defaults.spread),
            )?;
        }
        if let Some(tcp) = capture.gso_queue() {
            let last = tcp.saturating_add(capture.queues - 1);
            let queues = if last == tcp {
                tcp.to_string()
            } else {
                format!("{tcp}..={last}")
            };
            writeln!(
                f,
                "  TCP on NFQUEUE {queues}, whole as the stack built it (GSO, up to 64 KiB), \
                 fragmented by alagg{}",
                default_note(&capture.gso, &defaults.gso),
            )?;
        }
        writeln!(
            f,
            "  at most {} packets queued per queue{}; {}{}",
            capture.queue_max_len,
            default_note(&capture.queue_max_len, &defaults.queue_max_len),
            if capture.fail_open {
                "fail-open: packets take the host's own route to the destinations (if it has \
                 one) when alagg is not running, stopped or behind"
            } else {
                "fail-closed: packets are dropped when alagg is not running or behind"
            },
            default_note(&capture.fail_open, &defaults.fail_open),
        )?;
        writeln!(
            f,
            "  routes through the TUN in table {:#x}; {}",
            crate::host::route_table(&config.tun.name),
            if capture.fail_open {
                format!(
                    "packets to the destinations marked {:#x}{} for the host's route",
                    capture.fwmark,
                    default_note(&capture.fwmark, &defaults.fwmark),
                )
            } else {
                "no mark (fail-closed)".to_owned()
            },
        )?;

        let scheduler = config.scheduler.mode;
        writeln!(f, "send")?;
        writeln!(
            f,
            "  scheduler {scheduler}{}: {}",
            default_note(&scheduler, &SchedulerMode::default()),
            scheduler.describe(),
        )?;
        writeln!(
            f,
            "  link health: feedback every 10 ms on each link; a link silent for 80 ms is down"
        )?;
        let bundle = config.scheduler.bundle;
        writeln!(
            f,
            "  bundling {}{}",
            if bundle {
                "on: small packets captured together share one frame per link"
            } else {
                "off: one frame per packet"
            },
            default_note(&bundle, &SchedulerConfig::default().bundle),
        )?;
        let fec = config.scheduler.fec();
        let fec_default = SchedulerConfig {
            mode: config.scheduler.mode,
            ..SchedulerConfig::default()
        }
        .fec();
        let timeout = config.scheduler.fec_timeout_us;
        let timeout_note = default_note(&timeout, &DEFAULT_FEC_TIMEOUT_US);
        let fec_note = default_note(&fec, &fec_default);
        match fec {
            FecSetting::Off => writeln!(f, "  FEC off{fec_note}")?,
            FecSetting::Fixed(params) => writeln!(
                f,
                "  FEC {params}: {} parity frame{} ({}) per {} data frames, on other links than \
                 most of the block; a block not full is closed after {timeout} us{timeout_note}",
                params.m,
                if params.m == 1 { "" } else { "s" },
                if params.m == 1 { "XOR" } else { "Reed-Solomon" },
                params.k,
            )?,
            FecSetting::Auto => writeln!(
                f,
                "  FEC auto{fec_note}: none on clean links, XOR 8+1 for light loss, Reed-Solomon \
                 8+2 and 8+4 for more, a copy (1+1) for heavy loss; a block not full is closed \
                 after {timeout} us{timeout_note}"
            )?,
        }
        for (i, link) in config.links.iter().enumerate() {
            let io = match link.io {
                IoMode::Xdp => format!(
                    "AF_XDP, XDP {}{}",
                    link.xdp_mode,
                    default_note(&link.xdp_mode, &XdpMode::default())
                ),
                IoMode::AfPacket => "AF_PACKET".to_owned(),
            };
            let priority = link.priority.unwrap_or(i as u32);
            let rate = if link.rate_mbit == 0 {
                "rate measured".to_owned()
            } else {
                format!("rate capped at {} Mbit/s", link.rate_mbit)
            };
            writeln!(
                f,
                "  link[{i}] {} -> peer {}, {io}, priority {priority}{}, {rate}",
                link.interface,
                link.peer_mac,
                if link.priority.is_none() {
                    " (its position)"
                } else {
                    ""
                },
            )?;
            if link.weight.is_some() {
                writeln!(
                    f,
                    "    weight is ignored: stripe measures each link's rate (cap it with \
                     rate_mbit)"
                )?;
            }
        }

        let protocol = &config.protocol;
        let defaults = ProtocolConfig::default();
        writeln!(f, "protocol (must match the peer's)")?;
        writeln!(
            f,
            "  ethertype {:#06x}{}",
            protocol.ethertype,
            default_note(&protocol.ethertype, &defaults.ethertype)
        )?;
        writeln!(
            f,
            "  hold out-of-order packets as long as the links' delay spread needs (at least \
             5 ms) and up to {} ms{}, at most {} packets{} at once",
            protocol.hold_ms,
            default_note(&protocol.hold_ms, &defaults.hold_ms),
            protocol.reorder_capacity,
            default_note(&protocol.reorder_capacity, &defaults.reorder_capacity),
        )?;
        writeln!(
            f,
            "  drop duplicates within a window of {} sequence numbers{}",
            protocol.dedup_window,
            default_note(&protocol.dedup_window, &defaults.dedup_window),
        )?;
        if protocol.links_keep_order {
            writeln!(
                f,
                "  give a gap up at once when every link has gone past it (links_keep_order, \
                 default)"
            )?;
        } else {
            writeln!(
                f,
                "  links may reorder frames: every gap waits the hold time (links_keep_order = \
                 false)"
            )?;
        }

        let tun = &config.tun;
        writeln!(f, "receive")?;
        write!(
            f,
            "  deliver through TUN device {}{}, MTU ",
            tun.name,
            default_note(&tun.name, &TunConfig::default().name)
        )?;
        match tun.mtu {
            Some(mtu) => writeln!(f, "{mtu}")?,
            None => writeln!(f, "chosen from the links (default)")?,
        }
        if tun.coalesce {
            writeln!(
                f,
                "  UDP datagrams of one flow received together written as one GSO packet \
                 (coalesce, default)"
            )?;
        } else {
            writeln!(f, "  every packet written on its own (coalesce = false)")?;
        }

        writeln!(f, "cpu")?;
        match (&config.cpu.pin, &config.cpu.cores) {
            (false, _) => writeln!(f, "  worker threads not pinned")?,
            (true, None) => writeln!(f, "  pin worker threads, one per CPU allowed (default)")?,
            (true, Some(cores)) => {
                let cores: Vec<String> = cores.iter().map(usize::to_string).collect();
                writeln!(f, "  pin worker threads to CPUs {}", cores.join(", "))?;
            }
        }
        let busy = config.cpu.busy_poll_us;
        writeln!(
            f,
            "  workers poll for {busy} us after their last packet before sleeping{}",
            default_note(&busy, &DEFAULT_BUSY_POLL_US),
        )?;
        let workers = usize::from(config.capture.queues);
        let cpus = config.cpu.usable_cpus();
        let joined = config.cpu.run_to_completion(workers, cpus);
        let why = match config.cpu.run_to_completion {
            Some(on) => format!("run_to_completion = {on}"),
            None => format!(
                "default: {cpus} CPU(s), {} {workers} capture worker(s) + 1",
                if joined { "no more than" } else { "more than" }
            ),
        };
        if joined {
            writeln!(
                f,
                "  run to completion: receive runs on the first capture worker's thread ({why})"
            )?;
        } else {
            writeln!(f, "  receive runs on a thread of its own ({why})")?;
        }

        let memory = config.memory();
        writeln!(f, "memory, at most")?;
        writeln!(
            f,
            "  {} locked: {} AF_XDP socket(s) (capture.queues {} x {} XDP link(s)), a {} UMEM each",
            human_bytes(memory.locked()),
            memory.sockets,
            capture.queues,
            config.links.iter().filter(|l| l.io == IoMode::Xdp).count(),
            human_bytes(memory.umem_per_socket),
        )?;
        writeln!(
            f,
            "  {} of kernel memory when every NFQUEUE queue is full: capture.queue_max_len {} \
             packets in each of {} queue(s){}",
            human_bytes(memory.queued(capture.queue_max_len)),
            capture.queue_max_len,
            memory.queues + memory.gso_queues,
            if memory.gso_queues > 0 {
                format!(
                    ", {} of them TCP whole (up to {} a packet)",
                    memory.gso_queues,
                    human_bytes(QUEUED_GSO_PACKET)
                )
            } else {
                String::new()
            },
        )?;

        writeln!(f, "metrics")?;
        match config.metrics {
            Some(metrics) => writeln!(
                f,
                "  Prometheus endpoint on http://{}/metrics",
                metrics.listen
            ),
            None => writeln!(f, "  off (default)"),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    /// A valid configuration with two links; cases append to it or replace parts of it.
    const BASE: &str = r#"
[capture]
destinations = ["10.0.9.2/32", "fd00::2/128"]

[[link]]
interface = "eth1"
peer_mac = "02:00:00:00:01:02"

[[link]]
interface = "eth2"
peer_mac = "02:00:00:00:02:02"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn issue_example_parses() {
        let text = r#"
[capture]
destinations = ["10.0.9.2/32", "fd00::2/128"]  # the peer's networks; v4 and v6
queue = 0                                     # first NFQUEUE number (optional)
[scheduler]
mode = "redundant"                            # optional, default redundant
[[link]]
interface = "eth1"
peer_mac = "02:00:00:00:01:02"
[[link]]
interface = "eth2"
peer_mac = "02:00:00:00:02:02"
"#;
        let config = parse(text).unwrap();
        assert_eq!(config.links.len(), 2);
        assert_eq!(config.links[1].peer_mac, MacAddr([2, 0, 0, 0, 2, 2]));
        assert_eq!(config.scheduler.mode, SchedulerMode::Redundant);
    }

    #[test]
    fn defaults_when_omitted() {
        let config = parse(BASE).unwrap();
        assert_eq!(
            config.capture.destinations,
            vec![
                "10.0.9.2/32".parse::<IpNet>().unwrap(),
                "fd00::2/128".parse::<IpNet>().unwrap()
            ]
        );
        assert_eq!(config.capture.queue, 0);
        assert_eq!(config.capture.queues, 1);
        assert!(config.capture.fail_open);
        assert_eq!(config.capture.queue_max_len, 4096);
        assert_eq!(config.capture.queue_numbers(), 0..=0);
        assert_eq!(config.scheduler.mode, SchedulerMode::Redundant);
        assert_eq!(config.tun.name, "alagg0");
        assert_eq!(config.tun.mtu, None);
        assert_eq!(config.protocol.ethertype, 0x88b5);
        assert_eq!(config.protocol.hold_ms, 100);
        assert_eq!(config.protocol.hold(), Duration::from_millis(100));
        assert_eq!(config.protocol.dedup_window, 4096);
        assert_eq!(config.protocol.reorder_capacity, 1024);
        for link in &config.links {
            assert_eq!(link.io, IoMode::Xdp);
            assert_eq!(link.xdp_mode, XdpMode::Auto);
            assert_eq!(
                (link.priority, link.rate_mbit, link.weight),
                (None, 0, None)
            );
        }
        assert!(config.cpu.pin);
        assert_eq!(config.cpu.cores, None);
        assert_eq!(config.cpu.run_to_completion, None);
        assert_eq!(config.metrics, None);
    }

    #[test]
    fn run_to_completion_is_the_default_where_cpus_are_no_more_than_threads() {
        let auto = parse(BASE).unwrap().cpu;
        // (capture workers, CPUs) -> receive on the first worker's thread
        for (workers, cpus, joined) in [
            (1, 1, true),
            (1, 2, true),
            (1, 3, false),
            (2, 3, true),
            (2, 4, false),
            (4, 64, false),
        ] {
            assert_eq!(
                auto.run_to_completion(workers, cpus),
                joined,
                "{workers} workers on {cpus} CPUs"
            );
        }
        for on in [true, false] {
            let set = parse(&format!("{BASE}\n[cpu]\nrun_to_completion = {on}\n"))
                .unwrap()
                .cpu;
            assert_eq!(set.run_to_completion, Some(on));
            assert_eq!(set.run_to_completion(1, 2), on);
            assert_eq!(set.run_to_completion(1, 64), on);
        }
        let listed = parse(&format!("{BASE}\n[cpu]\ncores = [0, 1, 2]\n"))
            .unwrap()
            .cpu;
        assert_eq!(listed.usable_cpus(), 3);
    }

    #[test]
    fn optional_values_are_read() {
        let text = format!(
            "{BASE}\n[tun]\nname = \"agg7\"\nmtu = 1400\n[protocol]\nethertype = \"0x88B6\"\n\
             hold_ms = 20\ndedup_window = 65536\nreorder_capacity = 4096\n[cpu]\ncores = [3, 1]\n\
             [metrics]\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.tun.name, "agg7");
        assert_eq!(config.tun.mtu, Some(1400));
        assert_eq!(config.protocol.ethertype, 0x88b6);
        assert_eq!(config.protocol.hold_ms, 20);
        assert_eq!(config.protocol.dedup_window, 65536);
        assert_eq!(config.protocol.reorder_capacity, 4096);
        assert_eq!(config.cpu.cores, Some(vec![3, 1]));
        assert_eq!(config.metrics.unwrap().listen, DEFAULT_METRICS_LISTEN);
    }

    #[test]
    fn ethertype_forms() {
        for (value, expected) in [
            ("\"0x88b5\"", 0x88b5),
            ("\"0X88B5\"", 0x88b5),
            ("0x88B6", 0x88b6),
            ("34997", 0x88b5),
            ("0x9000", 0x9000),
        ] {
            let text = format!("{BASE}\n[protocol]\nethertype = {value}\n");
            assert_eq!(
                parse(&text).unwrap().protocol.ethertype,
                expected,
                "{value}"
            );
        }
    }

    #[test]
    fn bare_addresses_are_hosts() {
        let text = BASE.replace(
            r#"["10.0.9.2/32", "fd00::2/128"]"#,
            r#"["10.0.9.2", "fd00::2"]"#,
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.capture.destinations,
            vec![
                "10.0.9.2/32".parse::<IpNet>().unwrap(),
                "fd00::2/128".parse::<IpNet>().unwrap()
            ]
        );
    }

    #[test]
    fn scheduler_modes_priorities_and_rate_caps() {
        for (name, mode) in [
            ("redundant", SchedulerMode::Redundant),
            ("stripe", SchedulerMode::Stripe),
            ("backup", SchedulerMode::Backup),
            ("adaptive", SchedulerMode::Adaptive),
        ] {
            let text = format!("{BASE}\n[scheduler]\nmode = \"{name}\"\n");
            let config = parse(&text).unwrap();
            assert_eq!(config.scheduler.mode, mode);
            assert_eq!(mode.to_string(), name);
        }
        for (text, fec) in [
            ("\"8+2\"", FecSetting::Fixed(FecParams { k: 8, m: 2 })),
            ("\"4 + 1\"", FecSetting::Fixed(FecParams { k: 4, m: 1 })),
            ("\"auto\"", FecSetting::Auto),
            ("\"off\"", FecSetting::Off),
        ] {
            let text = format!("{BASE}\n[scheduler]\nmode = \"stripe\"\nfec = {text}\n");
            let config = parse(&text).unwrap();
            assert_eq!(config.scheduler.fec(), fec);
            assert!(config.plan().to_string().contains(&format!("FEC {fec}")));
        }
        let text = BASE.replace(
            "peer_mac = \"02:00:00:00:02:02\"",
            "peer_mac = \"02:00:00:00:02:02\"\npriority = 7\nrate_mbit = 200",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.links[1].priority, Some(7));
        assert_eq!(config.links[1].rate_mbit, 200);
        let plan = config.plan().to_string();
        assert!(
            plan.contains("priority 7, rate capped at 200 Mbit/s"),
            "{plan}"
        );
        assert!(
            plan.contains("priority 0 (its position), rate measured"),
            "{plan}"
        );
        let too_fast = BASE.replace(
            "peer_mac = \"02:00:00:00:02:02\"",
            "peer_mac = \"02:00:00:00:02:02\"\nrate_mbit = 500000",
        );
        let error = parse(&too_fast).unwrap_err().to_string();
        assert!(error.contains("link[1].rate_mbit"), "{error}");
    }

    #[test]
    fn io_and_xdp_modes() {
        let text = BASE.replace(
            "peer_mac = \"02:00:00:00:02:02\"",
            "peer_mac = \"02-00-00-00-02-0A\"\nio = \"af_packet\"\nweight = 3",
        ) + "\n[[link]]\ninterface = \"eth3\"\npeer_mac = \"02:00:00:00:03:02\"\nxdp_mode = \"generic\"\n";
        let config = parse(&text).unwrap();
        assert_eq!(config.links[1].io, IoMode::AfPacket);
        assert_eq!(config.links[1].peer_mac.to_string(), "02:00:00:00:02:0a");
        assert_eq!(config.links[1].weight, Some(3));
        assert_eq!(config.links[2].xdp_mode, XdpMode::Generic);
    }

    #[test]
    fn mac_addr_parsing() {
        for (text, expected) in [
            ("02:00:00:00:01:02", Some([2, 0, 0, 0, 1, 2])),
            (
                "AA:bb:Cc:dd:EE:ff",
                Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
            ),
            ("02-00-00-00-01-02", Some([2, 0, 0, 0, 1, 2])),
            ("02:00:00:00:01", None),
            ("02:00:00:00:01:02:03", None),
            ("2:0:0:0:1:2", None),
            ("02:00:00:00:01:0g", None),
            ("02:00-00:00:01:02", None),
            ("+2:00:00:00:01:02", None),
            ("", None),
        ] {
            let parsed = text.parse::<MacAddr>().ok().map(MacAddr::octets);
            assert_eq!(parsed, expected, "{text:?}");
        }
        let mac = MacAddr([0x02, 0xab, 0, 0, 0x01, 0xff]);
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        assert!(MacAddr([0xff; 6]).is_broadcast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0; 6]).is_zero());
    }

    #[test]
    fn parse_errors_name_the_key() {
        // (what, the TOML, words the message must contain)
        let cases: &[(&str, String, &[&str])] = &[
            (
                "unknown top-level key",
                format!("{BASE}\nverbose = true\n"),
                &["verbose"],
            ),
            (
                "unknown table",
                format!("{BASE}\n[logging]\nlevel = 1\n"),
                &["logging"],
            ),
            (
                "unknown key in [capture]",
                BASE.replace("[capture]", "[capture]\nqueue_count = 2"),
                &["queue_count", "line 3"],
            ),
            (
                "unknown key in [[link]]",
                BASE.replace(
                    "interface = \"eth2\"",
                    "interface = \"eth2\"\npeer_ip = \"x\"",
                ),
                &["peer_ip", "line 11"],
            ),
            (
                "unknown key in [protocol]",
                format!("{BASE}\n[protocol]\nhold = 5\n"),
                &["hold"],
            ),
            (
                "links spelt plural",
                BASE.replace("[[link]]", "[[links]]"),
                &["links"],
            ),
            (
                "bad MAC",
                BASE.replace("02:00:00:00:01:02", "02:00:00:00:01"),
                &["02:00:00:00:01", "not a MAC address", "line 7"],
            ),
            (
                "not a network",
                BASE.replace("10.0.9.2/32", "10.0.9.300/32"),
                &["10.0.9.300/32", "not a network"],
            ),
            (
                "ethertype not hex",
                format!("{BASE}\n[protocol]\nethertype = \"88b5\"\n"),
                &["\"88b5\"", "not an ethertype"],
            ),
            (
                "ethertype too large",
                format!("{BASE}\n[protocol]\nethertype = 0x188b5\n"),
                &["100533", "does not fit"],
            ),
            (
                "unknown scheduler",
                format!("{BASE}\n[scheduler]\nmode = \"roundrobin\"\n"),
                &["stripe", "redundant"],
            ),
            (
                "fec shape out of bounds",
                format!("{BASE}\n[scheduler]\nmode = \"stripe\"\nfec = \"8+0\"\n"),
                &["\"8+0\"", "K+M", "\"auto\""],
            ),
            (
                "fec not a shape",
                format!("{BASE}\n[scheduler]\nmode = \"stripe\"\nfec = \"high\"\n"),
                &["\"high\"", "e.g. \"8+2\""],
            ),
            (
                "unknown io mode",
                BASE.replace(
                    "interface = \"eth1\"",
                    "interface = \"eth1\"\nio = \"dpdk\"",
                ),
                &["dpdk", "af_packet"],
            ),
            (
                "missing peer_mac",
                BASE.replace("peer_mac = \"02:00:00:00:01:02\"", ""),
                &["peer_mac"],
            ),
        ];
        for (what, text, words) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                matches!(error, ConfigError::Parse { .. }),
                "{what}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.starts_with("test.toml: "), "{what}: {message}");
            for word in *words {
                assert!(message.contains(word), "{what}: {word:?} not in {message}");
            }
        }
    }

    #[test]
    fn memory_is_counted_per_socket_and_queue() {
        // BASE: two XDP links, one queue, gso on, TUN MTU 1400 or unset.
        let config = parse(BASE).unwrap();
        let memory = config.memory();
        assert_eq!(memory.sockets, 2);
        assert_eq!(memory.locked(), 2 * (32 << 20));
        assert_eq!((memory.queues, memory.gso_queues), (1, 1));
        let big = parse(&BASE.replace(
            "[capture]\n",
            "[capture]\nqueues = 4\nqueue_max_len = 1048576\n",
        ))
        .unwrap()
        .memory();
        assert_eq!(big.locked(), 8 * (32 << 20));
        // 4 TCP queues of a million 68 KiB packets: 272 GiB, besides the others.
        assert!(big.queued(1 << 20) > 272 << 30, "{big:?}");
        let af_packet = parse(&BASE.replace("[[link]]\n", "[[link]]\nio = \"af_packet\"\n"))
            .unwrap()
            .memory();
        assert_eq!(af_packet.locked(), 0);
        let plan = config.plan().to_string();
        assert!(
            plan.contains("64 MiB locked: 2 AF_XDP socket(s)")
                && plan.contains("capture.queue_max_len 4096"),
            "{plan}"
        );
    }

    #[test]
    fn bytes_read_as_a_person_writes_them() {
        let cases = [
            (512, "0.5 KiB"),
            (32 << 20, "32 MiB"),
            (3 << 29, "1.5 GiB"),
            (272 << 30, "272 GiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(human_bytes(bytes), text);
        }
    }

    #[test]
    fn invalid_values_are_rejected() {
        let extra_link = "\n[[link]]\ninterface = \"eth3\"\npeer_mac = \"02:00:00:00:03:02\"\n";
        // (what, the TOML, the key named, words the message must contain)
        let cases: &[(&str, String, &str, &[&str])] = &[
            (
                "multicast MAC",
                BASE.replace("02:00:00:00:02:02", "01:00:5e:00:00:01"),
                "link[1].peer_mac",
                &["01:00:5e:00:00:01", "multicast"],
            ),
            (
                "broadcast MAC",
                BASE.replace("02:00:00:00:01:02", "FF:FF:FF:FF:FF:FF"),
                "link[0].peer_mac",
                &["broadcast"],
            ),
            (
                "zero MAC",
                BASE.replace("02:00:00:00:01:02", "00:00:00:00:00:00"),
                "link[0].peer_mac",
                &["00:00:00:00:00:00"],
            ),
            (
                "duplicate interface",
                BASE.replace("\"eth2\"", "\"eth1\""),
                "link[1].interface",
                &["\"eth1\"", "already used"],
            ),
            (
                "interface same as tun",
                BASE.replace("\"eth2\"", "\"alagg0\""),
                "link[1].interface",
                &["tun.name"],
            ),
            (
                "too-long interface name",
                BASE.replace("\"eth2\"", "\"enp0s31f6-uplink2\""),
                "link[1].interface",
                &["enp0s31f6-uplink2", "at most 15"],
            ),
            (
                "empty interface name",
                BASE.replace("\"eth2\"", "\"\""),
                "link[1].interface",
                &["empty"],
            ),
            (
                "slash in interface name",
                BASE.replace("\"eth2\"", "\"eth/2\""),
                "link[1].interface",
                &["'/'"],
            ),
            (
                "space in interface name",
                BASE.replace("\"eth2\"", "\"eth 2\""),
                "link[1].interface",
                &["' '"],
            ),
            (
                "dot-dot interface name",
                BASE.replace("\"eth2\"", "\"..\""),
                "link[1].interface",
                &["\"..\""],
            ),
            (
                "bad tun name",
                format!("{BASE}\n[tun]\nname = \"tun:0\"\n"),
                "tun.name",
                &["':'"],
            ),
            (
                "kernel name pattern in tun name",
                format!("{BASE}\n[tun]\nname = \"alagg%d\"\n"),
                "tun.name",
                &["'%'", "pattern", "letters, digits"],
            ),
            (
                "iptables wildcard in tun name",
                format!("{BASE}\n[tun]\nname = \"alagg+\"\n"),
                "tun.name",
                &["'+'", "wildcard"],
            ),
            (
                "nftables wildcard in tun name",
                format!("{BASE}\n[tun]\nname = \"alagg*\"\n"),
                "tun.name",
                &["'*'", "wildcard"],
            ),
            (
                "negation in tun name",
                format!("{BASE}\n[tun]\nname = \"!alagg\"\n"),
                "tun.name",
                &["'!'", "negation"],
            ),
            (
                "option-like tun name",
                format!("{BASE}\n[tun]\nname = \"-alagg\"\n"),
                "tun.name",
                &["'-'", "option"],
            ),
            (
                "non-ASCII tun name",
                format!("{BASE}\n[tun]\nname = \"alägg\"\n"),
                "tun.name",
                &["'ä'", "ASCII"],
            ),
            (
                "no links",
                BASE.split("[[link]]").next().unwrap().to_owned(),
                "link",
                &["[[link]]"],
            ),
            (
                "too many links",
                BASE.to_owned()
                    + &(3..=17)
                        .map(|n| {
                            format!("\n[[link]]\ninterface = \"eth{n}\"\npeer_mac = \"02:00:00:00:{n:02x}:02\"\n")
                        })
                        .collect::<String>(),
                "link",
                &["17 links", "at most 16"],
            ),
            (
                "empty destinations",
                BASE.replace(r#"["10.0.9.2/32", "fd00::2/128"]"#, "[]"),
                "capture.destinations",
                &["no destinations"],
            ),
            (
                "no [capture]",
                BASE.replace("[capture]\ndestinations = [\"10.0.9.2/32\", \"fd00::2/128\"]", ""),
                "capture.destinations",
                &["no destinations"],
            ),
            (
                "overlapping IPv4",
                BASE.replace("\"fd00::2/128\"", "\"fd00::2/128\", \"10.0.8.0/22\""),
                "capture.destinations[2]",
                &["10.0.8.0/22", "capture.destinations[0]", "10.0.9.2/32"],
            ),
            (
                "overlapping IPv6",
                BASE.replace("\"fd00::2/128\"", "\"fd00::/64\", \"fd00::2/128\""),
                "capture.destinations[2]",
                &["fd00::2/128", "capture.destinations[1]", "fd00::/64"],
            ),
            (
                "duplicate destination",
                BASE.replace("\"fd00::2/128\"", "\"fd00::2/128\", \"10.0.9.2\""),
                "capture.destinations[2]",
                &["listed twice", "capture.destinations[0]"],
            ),
            (
                "host bits",
                BASE.replace("10.0.9.2/32", "10.0.9.1/24"),
                "capture.destinations[0]",
                &["10.0.9.1/24", "host bits", "10.0.9.0/24", "10.0.9.1/32"],
            ),
            (
                "host bits IPv6",
                BASE.replace("fd00::2/128", "fd00::2/64"),
                "capture.destinations[1]",
                &["fd00::/64", "fd00::2/128"],
            ),
            (
                "IPv4 default route",
                BASE.replace("10.0.9.2/32", "0.0.0.0/0"),
                "capture.destinations[0]",
                &["0.0.0.0/0", "default route", "IPv4"],
            ),
            (
                "IPv6 default route",
                BASE.replace("fd00::2/128", "::/0"),
                "capture.destinations[1]",
                &["::/0", "default route", "IPv6"],
            ),
            (
                "loopback",
                BASE.replace("10.0.9.2/32", "127.0.0.53/32"),
                "capture.destinations[0]",
                &["loopback", "127.0.0.0/8"],
            ),
            (
                "IPv6 loopback",
                BASE.replace("fd00::2/128", "::1"),
                "capture.destinations[1]",
                &["loopback"],
            ),
            (
                "ethertype below 0x0600",
                format!("{BASE}\n[protocol]\nethertype = \"0x05dc\"\n"),
                "protocol.ethertype",
                &["0x05dc", "length", "0x0600"],
            ),
            (
                "ethertype of IPv4",
                format!("{BASE}\n[protocol]\nethertype = 0x0800\n"),
                "protocol.ethertype",
                &["IPv4"],
            ),
            (
                "hold_ms zero",
                format!("{BASE}\n[protocol]\nhold_ms = 0\n"),
                "protocol.hold_ms",
                &["from 1 to 10000"],
            ),
            (
                "dedup_window not a power of two",
                format!("{BASE}\n[protocol]\ndedup_window = 5000\n"),
                "protocol.dedup_window",
                &["power of two", "8192"],
            ),
            (
                "dedup_window too small",
                format!("{BASE}\n[protocol]\ndedup_window = 32\n"),
                "protocol.dedup_window",
                &["from 64"],
            ),
            (
                "reorder_capacity above dedup_window",
                format!("{BASE}\n[protocol]\ndedup_window = 128\nreorder_capacity = 256\n"),
                "protocol.reorder_capacity",
                &["dedup_window"],
            ),
            (
                "queues zero",
                BASE.replace("[capture]", "[capture]\nqueues = 0"),
                "capture.queues",
                &["from 1 to 64"],
            ),
            (
                "queues past 65535",
                BASE.replace("[capture]", "[capture]\nqueue = 65535\nqueues = 2\ngso = false"),
                "capture.queue",
                &["65535..=65536", "at most 65534"],
            ),
            (
                "the TCP queue past 65535",
                BASE.replace("[capture]", "[capture]\nqueue = 65535"),
                "capture.queue",
                &["65535..=65536", "the second half for TCP", "at most 65534"],
            ),
            (
                "spread with one queue",
                BASE.replace("[capture]", "[capture]\nspread = \"cpu\""),
                "capture.spread",
                &["no effect", "raise queues"],
            ),
            (
                "the TCP queues of two workers past 65535",
                BASE.replace("[capture]", "[capture]\nqueue = 65533\nqueues = 2"),
                "capture.queue",
                &["65533..=65536", "at most 65532"],
            ),
            (
                "a fail-open mark of no bits",
                BASE.replace("[capture]", "[capture]\nfwmark = 0"),
                "capture.fwmark",
                &["sets no bit", "0x2000"],
            ),
            (
                "tun mtu too small",
                format!("{BASE}\n[tun]\nmtu = 60\n"),
                "tun.mtu",
                &["from 68"],
            ),
            (
                "tun mtu too small for IPv6",
                format!("{BASE}\n[tun]\nmtu = 1000\n"),
                "tun.mtu",
                &["1280"],
            ),
            (
                "xdp_mode with af_packet",
                BASE.replace(
                    "interface = \"eth2\"",
                    "interface = \"eth2\"\nio = \"af_packet\"\nxdp_mode = \"native\"",
                ),
                "link[1].xdp_mode",
                &["af_packet"],
            ),
            (
                "fec with redundant",
                format!("{BASE}\n[scheduler]\nfec = \"8+1\"\n"),
                "scheduler.fec",
                &["redundant", "\"stripe\"", "fec = \"off\""],
            ),
            (
                "fec timeout too long",
                format!("{BASE}\n[scheduler]\nmode = \"stripe\"\nfec = \"8+1\"\nfec_timeout_us = 5000\n"),
                "scheduler.fec_timeout_us",
                &["from 50 to 2000"],
            ),
            (
                "weight zero",
                format!("{BASE}{extra_link}weight = 0\n"),
                "link[2].weight",
                &["from 1 to 1000"],
            ),
            (
                "empty cores",
                format!("{BASE}\n[cpu]\ncores = []\n"),
                "cpu.cores",
                &["empty"],
            ),
            (
                "core too large",
                format!("{BASE}\n[cpu]\ncores = [0, 1024]\n"),
                "cpu.cores[1]",
                &["1024"],
            ),
            (
                "busy poll too long",
                format!("{BASE}\n[cpu]\nbusy_poll_us = 2000000\n"),
                "cpu.busy_poll_us",
                &["1000000"],
            ),
            (
                "duplicate core",
                format!("{BASE}\n[cpu]\ncores = [2, 2]\n"),
                "cpu.cores[1]",
                &["twice"],
            ),
            (
                "cores without pinning",
                format!("{BASE}\n[cpu]\npin = false\ncores = [1]\n"),
                "cpu.cores",
                &["pin = false"],
            ),
            (
                "metrics port 0",
                format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
                "metrics.listen",
                &["port 0"],
            ),
        ];
        for (what, text, expected_key, words) in cases {
            let error = parse(text).unwrap_err();
            let ConfigError::Invalid { origin, key, .. } = &error else {
                panic!("{what}: expected Invalid, got {error:?}");
            };
            assert_eq!(origin, "test.toml", "{what}");
            assert_eq!(key, expected_key, "{what}: {error}");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("test.toml: {expected_key}: ")),
                "{what}: {message}"
            );
            for word in *words {
                assert!(message.contains(word), "{what}: {word:?} not in {message}");
            }
        }
    }

    #[test]
    fn disjoint_neighbours_are_accepted() {
        let text = BASE.replace(
            r#"["10.0.9.2/32", "fd00::2/128"]"#,
            r#"["10.0.8.0/24", "10.0.9.0/24", "fd00::/64", "fd00:0:0:1::/64", "128.0.0.0/1"]"#,
        );
        assert_eq!(parse(&text).unwrap().capture.destinations.len(), 5);
    }

    #[test]
    fn load_reports_missing_file() {
        let error = Config::load(Path::new("/nonexistent/alagg.toml")).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/alagg.toml"),
            "{error}"
        );
    }

    #[test]
    fn from_str_names_its_origin() {
        let error = "".parse::<Config>().unwrap_err();
        assert!(error.to_string().starts_with("<string>: "), "{error}");
    }

    #[test]
    fn plan_shows_links_destinations_and_defaults() {
        let plan = parse(BASE).unwrap().plan().to_string();
        for word in [
            "10.0.9.2/32",
            "fd00::2/128",
            "NFQUEUE 0..=0 (default)",
            "link[0] eth1 -> peer 02:00:00:00:01:02, AF_XDP, XDP auto (default)",
            "link[1] eth2 -> peer 02:00:00:00:02:02",
            "scheduler redundant (default)",
            "ethertype 0x88b5 (default)",
            "up to 100 ms (default)",
            "alagg0 (default)",
            "fail-open",
            "metrics\n  off (default)",
        ] {
            assert!(plan.contains(word), "{word:?} not in\n{plan}");
        }
        let text = format!("{BASE}\n[metrics]\nlisten = \"[::1]:9000\"\n");
        let plan = parse(&text).unwrap().plan().to_string();
        assert!(plan.contains("http://[::1]:9000/metrics"), "{plan}");
    }
}
