//! The testbed: two hosts, A and B, joined by N links through a wire namespace, each link
//! impairable on its own. The same code serves the end-to-end tests (an RAII guard:
//! [`Testbed::new`]), the demo and the benchmarks, and `cargo xtask testbed up|down` (fixed
//! names that outlive the process: [`Testbed::named`] then [`Testbed::persist`]).
//!
//! ```text
//!   host A                     wire                       host B
//!   link{i} 02:a1:a9:0a:00:ii ── a{i} ─ br{i} ─ b{i} ── link{i} 02:a1:a9:0b:00:ii
//! ```
//!
//! Link `i` is a veth pair `A:link{i}` ↔ `W:a{i}`, a bridge `W:br{i}` (STP off, forward delay 0,
//! multicast snooping off, so every frame is flooded or forwarded at once) and a veth pair
//! `W:b{i}` ↔ `B:link{i}`. The wire namespace has IPv6 disabled, so it sends nothing of its own.
//! Each host has its service addresses on `lo` ([`A_V4`], [`A_V6`], [`B_V4`], [`B_V6`]); hosts
//! have IPv6 duplicate address detection off ([`Netns::new`]), so addresses work at once.
//!
//! Impairments live in the wire namespace only, so they never touch the hosts' own state, and
//! each applies to both directions of one link:
//! - loss: an nft table `bridge alagg` whose `forward` chain jumps, for frames entering from
//!   `a{i}` or `b{i}`, to the chains `cut{i}` and `loss{i}`; [`Testbed::set_loss`] replaces the
//!   `numgen random mod 100 < P drop` rule in `loss{i}` (nft's bridge family; `iifname`, as
//!   `meta ibrname` is not available here);
//! - rate: a tbf qdisc on the egress of `W:a{i}` and `W:b{i}` ([`Testbed::set_rate`]);
//! - cut: [`Testbed::cut`] drops every frame in `cut{i}`, so both hosts keep carrier and see
//!   silence, as over a real WAN path; [`Testbed::cut_carrier`] sets `W:a{i}` and `W:b{i}` down
//!   instead, so both hosts see their `link{i}` lose carrier. [`Testbed::heal`] undoes either.
//!
//! - delay, jitter, per-direction loss and rate, as netem would give (this kernel has none):
//!   [`Testbed::set_path`] replaces the link's bridge by an impairment relay, threads of this
//!   process between `W:a{i}` and `W:b{i}`; [`Testbed::clear_path`] puts the bridge back. While
//!   a relay runs, the relay applies the link's loss and cut too (see [`crate::relay`]).
//!
//! All impairment state but the relays' is in the kernel (nft, tc, link state), none in this
//! struct, so a bed made by another process can be impaired with `nft` and `tc` in the wire
//! namespace by hand (on a link without a relay).
//!
//! Dropping a `Testbed` deletes its three namespaces, killing the processes left inside; a bed
//! half-made when `new` fails or panics is removed the same way, as its namespaces are guards
//! from the first step. Test namespaces a killed process left behind are swept by the next
//! [`Netns::new`].

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use crate::{
    Error, Netns, Result,
    relay::{Direction, Path as RelayPath, PathStats, Relay},
    veth,
};

/// Host A's IPv4 service address (on its `lo`, /32). 198.18.0.0/15 is for network tests
/// (RFC 2544).
pub const A_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
/// Host B's IPv4 service address (on its `lo`, /32).
pub const B_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 2));
/// Host A's IPv6 service address (on its `lo`, /128), a unique local address (RFC 4193).
pub const A_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa1a9, 0x100, 0, 0, 0, 0, 1));
/// Host B's IPv6 service address (on its `lo`, /128).
pub const B_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xa1a9, 0x100, 0, 0, 0, 0, 2));

/// The most links a bed has: the link number is one byte of the hosts' MACs.
pub const MAX_LINKS: usize = 256;

/// How long [`Testbed::new`] and [`Testbed::heal`] wait for carrier on every link.
const CARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// The nft table (bridge family) in the wire namespace that holds loss and cuts.
const TABLE: &str = "alagg";

/// One of the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// Host A.
    A,
    /// Host B.
    B,
}

impl Host {
    /// The other host.
    pub const fn peer(self) -> Host {
        match self {
            Host::A => Host::B,
            Host::B => Host::A,
        }
    }

    /// The host's IPv4 service address.
    pub const fn v4(self) -> IpAddr {
        match self {
            Host::A => A_V4,
            Host::B => B_V4,
        }
    }

    /// The host's IPv6 service address.
    pub const fn v6(self) -> IpAddr {
        match self {
            Host::A => A_V6,
            Host::B => B_V6,
        }
    }

    /// `"a"` or `"b"`: the suffix of the host's namespace and config file, and the prefix of
    /// its bridge port in the wire namespace.
    pub const fn letter(self) -> &'static str {
        match self {
            Host::A => "a",
            Host::B => "b",
        }
    }
}

/// Two hosts joined by N impairable links; see the module documentation for the layout.
#[derive(Debug)]
pub struct Testbed {
    /// The impairment relays, by link. First, so that they stop before the namespaces go.
    relays: Mutex<Vec<Option<Relay>>>,
    /// Host A.
    pub a: Netns,
    /// Host B.
    pub b: Netns,
    /// The wire between them: one bridge per link, and the impairments (empty on a bed from
    /// [`Testbed::new_direct`]).
    pub wire: Netns,
    links: usize,
    /// Links go through the wire's bridges (and can be impaired); false: plain veth pairs.
    bridged: bool,
}

impl Testbed {
    /// Makes a bed of `links` links (1 to [`MAX_LINKS`]) in fresh test namespaces
    /// `alagg-t<pid>-<n>-<tag>-{a,b,wire}`, and returns once every link has carrier.
    pub fn new(tag: &str, links: usize) -> Result<Testbed> {
        check_links(links)?;
        let a = Netns::new(&format!("{tag}-a"))?;
        let b = Netns::new(&format!("{tag}-b"))?;
        let wire = Netns::new(&format!("{tag}-wire"))?;
        Testbed {
            relays: Mutex::default(),
            a,
            b,
            wire,
            links,
            bridged: true,
        }
        .build()
    }

    /// Like [`Testbed::new`], but each link is one plain veth pair from host A to host B, with
    /// no bridge between (the cheapest wire there is, for measuring alagg rather than the
    /// wire). Such links cannot be impaired: [`Testbed::set_loss`] and the like fail.
    pub fn new_direct(tag: &str, links: usize) -> Result<Testbed> {
        check_links(links)?;
        let a = Netns::new(&format!("{tag}-a"))?;
        let b = Netns::new(&format!("{tag}-b"))?;
        let wire = Netns::new(&format!("{tag}-wire"))?;
        let bed = Testbed {
            relays: Mutex::default(),
            a,
            b,
            wire,
            links,
            bridged: false,
        };
        for link in 0..links {
            veth(
                &bed.a,
                &bed.interface(link),
                &format_mac(Testbed::mac(Host::A, link)),
                &bed.b,
                &bed.interface(link),
                &format_mac(Testbed::mac(Host::B, link)),
            )?;
        }
        bed.add_service_addresses()?;
        bed.wait_for_carrier(0..links)?;
        Ok(bed)
    }

    /// Makes a bed in the namespaces with the fixed names [`Testbed::named_namespaces`]`(prefix)`,
    /// none of which may exist yet. It is removed on drop, like one from [`Testbed::new`],
    /// unless [`Testbed::persist`] is called.
    pub fn named(prefix: &str, links: usize) -> Result<Testbed> {
        check_links(links)?;
        let [a, b, wire] = Testbed::named_namespaces(prefix);
        let a = Netns::named(&a)?;
        let b = Netns::named(&b)?;
        let wire = Netns::named(&wire)?;
        Testbed {
            relays: Mutex::default(),
            a,
            b,
            wire,
            links,
            bridged: true,
        }
        .build()
    }

    /// The names of host A's, host B's and the wire's namespaces of a bed made by
    /// [`Testbed::named`]: `<prefix>-a`, `<prefix>-b`, `<prefix>-wire`.
    pub fn named_namespaces(prefix: &str) -> [String; 3] {
        [
            format!("{prefix}-a"),
            format!("{prefix}-b"),
            format!("{prefix}-wire"),
        ]
    }

    /// Removes whichever of the namespaces of the named bed `prefix` exist, killing processes in
    /// them. Returns how many there were.
    pub fn remove_named(prefix: &str) -> Result<usize> {
        let mut removed = 0;
        for name in Testbed::named_namespaces(prefix) {
            if Netns::remove_named(&name)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Leaves the bed in place when this process ends (see [`Netns::persist`]). Links with an
    /// impairment relay get their bridge back first, as the relay ends with the process.
    pub fn persist(self) {
        for link in 0..self.links {
            let _ = self.clear_path(link);
        }
        self.a.persist();
        self.b.persist();
        self.wire.persist();
    }

    fn build(self) -> Result<Testbed> {
        // The wire only forwards: no IPv6 of its own (no link-local addresses, router
        // solicitations or MLD reports) on the bridges and ports made from now on.
        for key in ["all", "default"] {
            self.wire.exec(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
            )?;
        }
        // Where br_netfilter is loaded, bridged frames would also traverse the wire's iptables
        // hooks: a cost no real wire has. Its switches exist only with the module, hence no `?`.
        for table in ["iptables", "ip6tables", "arptables"] {
            let _ = self.wire.exec(
                "sysctl",
                &["-qw", &format!("net.bridge.bridge-nf-call-{table}=0")],
            );
        }
        let mut nft = format!(
            "add table bridge {TABLE}; \
             add chain bridge {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}; "
        );
        for link in 0..self.links {
            let bridge = format!("br{link}");
            self.wire.ip(&[
                "link",
                "add",
                &bridge,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ])?;
            for host in [Host::A, Host::B] {
                let port = port(host, link);
                veth(
                    self.host(host),
                    &self.interface(link),
                    &format_mac(Testbed::mac(host, link)),
                    &self.wire,
                    &port,
                    &format_mac(wire_mac(host, link)),
                )?;
                self.wire.ip(&["link", "set", &port, "master", &bridge])?;
            }
            self.wire.ip(&["link", "set", &bridge, "up"])?;
            let _ = write!(
                nft,
                "add chain bridge {TABLE} cut{link}; \
                 add chain bridge {TABLE} loss{link}; \
                 add rule bridge {TABLE} forward {ports} jump cut{link}; \
                 add rule bridge {TABLE} forward {ports} jump loss{link}; ",
                ports = ports_match(link),
            );
        }
        self.wire.exec("nft", &[&nft])?;
        self.add_service_addresses()?;
        self.wait_for_carrier(0..self.links)?;
        Ok(self)
    }

    /// Each host's service addresses on its `lo`.
    fn add_service_addresses(&self) -> Result<()> {
        for host in [Host::A, Host::B] {
            let netns = self.host(host);
            netns.ip(&["addr", "add", &format!("{}/32", host.v4()), "dev", "lo"])?;
            netns.ip(&["addr", "add", &format!("{}/128", host.v6()), "dev", "lo"])?;
        }
        Ok(())
    }

    /// The host's namespace.
    pub fn host(&self, host: Host) -> &Netns {
        match host {
            Host::A => &self.a,
            Host::B => &self.b,
        }
    }

    /// How many links the bed has.
    pub fn links(&self) -> usize {
        self.links
    }

    /// The name of link `link`'s interface on either host: `link<link>`.
    pub fn interface(&self, link: usize) -> String {
        format!("link{link}")
    }

    /// The MAC of `host`'s interface of link `link`: `02:a1:a9:0a:00:<link>` on A,
    /// `02:a1:a9:0b:00:<link>` on B (locally administered, unicast). `link` is taken modulo 256.
    pub fn mac(host: Host, link: usize) -> [u8; 6] {
        let id = match host {
            Host::A => 0x0a,
            Host::B => 0x0b,
        };
        [0x02, 0xa1, 0xa9, id, 0x00, (link & 0xff) as u8]
    }

    /// Drops `percent` % (0 to 100) of the frames on link `link`, independently in each
    /// direction, replacing the previous loss of that link; 0 removes it.
    pub fn set_loss(&self, link: usize, percent: u8) -> Result<()> {
        self.check_impairable(link)?;
        if percent > 100 {
            return Err(invalid(format!(
                "loss of {percent} % on link {link}: at most 100"
            )));
        }
        let mut nft = format!("flush chain bridge {TABLE} loss{link}");
        // `numgen random mod 100` is 0..=99, and nft refuses `< 100` as out of range.
        match percent {
            0 => {}
            100 => {
                let _ = write!(nft, "; add rule bridge {TABLE} loss{link} counter drop");
            }
            _ => {
                let _ = write!(
                    nft,
                    "; add rule bridge {TABLE} loss{link} numgen random mod 100 < {percent} counter drop"
                );
            }
        }
        self.wire.exec("nft", &[&nft])?;
        if let Some(relay) = self.relays().get(link).and_then(Option::as_ref) {
            relay.set_link_loss(percent);
        }
        Ok(())
    }

    /// Drops every `n`-th frame on link `link` (counting both directions together: a
    /// deterministic loss pattern, where [`Testbed::set_loss`] is random), replacing the
    /// previous loss of that link; 0 removes it.
    pub fn drop_every(&self, link: usize, n: u32) -> Result<()> {
        self.check_impairable(link)?;
        let mut nft = format!("flush chain bridge {TABLE} loss{link}");
        match n {
            0 => {}
            1 => {
                let _ = write!(nft, "; add rule bridge {TABLE} loss{link} counter drop");
            }
            _ => {
                let _ = write!(
                    nft,
                    "; add rule bridge {TABLE} loss{link} numgen inc mod {n} == 0 counter drop"
                );
            }
        }
        self.wire.exec("nft", &[&nft])?;
        Ok(())
    }

    /// Limits link `link` to `mbit` Mbit/s in each direction (a tbf qdisc on both wire ports'
    /// egress, with a 10 ms burst and at most 50 ms of queue), replacing the previous limit;
    /// 0 removes it.
    pub fn set_rate(&self, link: usize, mbit: u32) -> Result<()> {
        self.check_impairable(link)?;
        for host in [Host::A, Host::B] {
            let port = port(host, link);
            if mbit == 0 {
                let qdiscs = self.wire.exec("tc", &["qdisc", "show", "dev", &port])?;
                if qdiscs.contains("qdisc tbf") {
                    self.wire
                        .exec("tc", &["qdisc", "del", "dev", &port, "root"])?;
                }
            } else {
                // 10 ms at the rate, and never less than two full frames.
                let burst = (u64::from(mbit) * 1250).max(3028);
                self.wire.exec(
                    "tc",
                    &[
                        "qdisc",
                        "replace",
                        "dev",
                        &port,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{mbit}mbit"),
                        "burst",
                        &burst.to_string(),
                        "latency",
                        "50ms",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Sets the MTU of link `link` (68 to 65535): both hosts' interfaces and, on a bridged bed,
    /// the wire's ports and bridge, so frames that large cross it.
    pub fn set_mtu(&self, link: usize, mtu: u32) -> Result<()> {
        self.check_link(link)?;
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(format!("MTU {mtu} on link {link}: 68 to 65535")));
        }
        let mtu = mtu.to_string();
        if self.bridged {
            for device in [
                port(Host::A, link),
                port(Host::B, link),
                format!("br{link}"),
            ] {
                self.wire.ip(&["link", "set", &device, "mtu", &mtu])?;
            }
        }
        for host in [Host::A, Host::B] {
            self.host(host)
                .ip(&["link", "set", &self.interface(link), "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Cuts link `link`: every frame on it is dropped in the wire, both ways, while both hosts
    /// keep carrier (silence, as a real WAN path fails). Loss and rate settings are kept.
    pub fn cut(&self, link: usize) -> Result<()> {
        self.check_impairable(link)?;
        self.wire.exec(
            "nft",
            &[&format!(
                "flush chain bridge {TABLE} cut{link}; \
                 add rule bridge {TABLE} cut{link} counter drop"
            )],
        )?;
        if let Some(relay) = self.relays().get(link).and_then(Option::as_ref) {
            relay.set_cut(true);
        }
        Ok(())
    }

    /// Cuts link `link` by setting both wire ports down, so both hosts see their `link<link>`
    /// lose carrier.
    pub fn cut_carrier(&self, link: usize) -> Result<()> {
        self.check_impairable(link)?;
        for host in [Host::A, Host::B] {
            self.wire.ip(&["link", "set", &port(host, link), "down"])?;
        }
        Ok(())
    }

    /// Undoes [`Testbed::cut`] and [`Testbed::cut_carrier`] on link `link`, and returns once
    /// the link has carrier again. Loss and rate settings are untouched.
    pub fn heal(&self, link: usize) -> Result<()> {
        self.check_impairable(link)?;
        self.wire
            .exec("nft", &[&format!("flush chain bridge {TABLE} cut{link}")])?;
        if let Some(relay) = self.relays().get(link).and_then(Option::as_ref) {
            relay.set_cut(false);
        }
        for host in [Host::A, Host::B] {
            self.wire.ip(&["link", "set", &port(host, link), "up"])?;
        }
        self.wait_for_carrier(link..link + 1)
    }

    /// Gives link `link` the impaired path `path` in `direction` (delay, jitter, loss, rate; see
    /// [`crate::relay`]), replacing that direction's previous path. The first call on a link
    /// takes its wire ports out of the bridge and starts an impairment relay between them, the
    /// other direction a plain wire until set; [`Testbed::clear_path`] undoes it.
    /// [`Testbed::set_loss`], [`Testbed::cut`], [`Testbed::set_rate`] and
    /// [`Testbed::cut_carrier`] still apply on top.
    ///
    /// Two links of unequal delay, for striping tests:
    /// ```no_run
    /// use std::time::Duration;
    /// use alagg_testbed::{Direction, Path, Testbed};
    ///
    /// let bed = Testbed::new("unequal", 2)?;
    /// let path = |mbit, ms| Path {
    ///     rate_mbit: Some(mbit),
    ///     ..Path::delay(Duration::from_millis(ms))
    /// };
    /// bed.set_path(0, Direction::Both, path(200, 5))?;
    /// bed.set_path(1, Direction::Both, path(100, 25))?;
    /// // ... run traffic, then:
    /// let stats = bed.path_stats(1, Direction::AtoB).unwrap_or_default();
    /// println!("link 1, A to B: {} relayed, {} queue drops", stats.relayed, stats.queue_dropped);
    /// # Ok::<(), alagg_testbed::Error>(())
    /// ```
    pub fn set_path(&self, link: usize, direction: Direction, path: RelayPath) -> Result<()> {
        self.check_impairable(link)?;
        path.check()
            .map_err(|why| invalid(format!("path on link {link}: {why}")))?;
        let mut relays = self.relays();
        if relays.len() < self.links {
            relays.resize_with(self.links, || None);
        }
        if let Some(relay) = &relays[link] {
            relay.configure(direction, &path);
            return Ok(());
        }
        let (cut, loss) = self.bridge_impairments(link)?;
        let ports = [port(Host::A, link), port(Host::B, link)];
        for port in &ports {
            self.wire.ip(&["link", "set", port, "nomaster"])?;
        }
        let started = self
            .wire
            .enter(|| Relay::open(&ports[0], &ports[1]))
            .and_then(|opened| {
                opened.map_err(|source| Error::Io {
                    what: format!("opening the relay's sockets on link {link}"),
                    source,
                })
            })
            .and_then(|sockets| {
                let mut paths = [RelayPath::default(), RelayPath::default()];
                for way in direction.ways() {
                    paths[usize::from(*way == Direction::BtoA)] = path.clone();
                }
                Relay::start(&format!("relay{link}"), sockets, paths, cut, loss).map_err(|source| {
                    Error::Io {
                        what: format!("starting the relay of link {link}"),
                        source,
                    }
                })
            });
        match started {
            Ok(relay) => {
                relays[link] = Some(relay);
                Ok(())
            }
            Err(error) => {
                drop(relays);
                let _ = self.attach_ports(link);
                Err(error)
            }
        }
    }

    /// Stops link `link`'s impairment relay, if it has one, and puts its wire ports back in the
    /// bridge, returning once the link has carrier. Frames in flight in the relay are lost.
    pub fn clear_path(&self, link: usize) -> Result<()> {
        self.check_impairable(link)?;
        let relay = self.relays().get_mut(link).and_then(Option::take);
        if relay.is_none() {
            return Ok(());
        }
        drop(relay);
        self.attach_ports(link)?;
        self.wait_for_carrier(link..link + 1)
    }

    /// What link `link`'s relay did in `direction` (both summed for [`Direction::Both`]);
    /// `None` if the link has no relay.
    pub fn path_stats(&self, link: usize, direction: Direction) -> Option<PathStats> {
        self.relays()
            .get(link)
            .and_then(Option::as_ref)
            .map(|relay| relay.stats(direction))
    }

    /// Whether link `link` runs through an impairment relay rather than its bridge.
    pub fn has_path(&self, link: usize) -> bool {
        self.relays().get(link).is_some_and(Option::is_some)
    }

    fn relays(&self) -> MutexGuard<'_, Vec<Option<Relay>>> {
        self.relays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attach_ports(&self, link: usize) -> Result<()> {
        for host in [Host::A, Host::B] {
            self.wire.ip(&[
                "link",
                "set",
                &port(host, link),
                "master",
                &format!("br{link}"),
            ])?;
        }
        Ok(())
    }

    /// Whether the bridge's nft rules cut link `link`, and the loss they give it (read back, so
    /// that a relay taking over honours what was set, by this process or another).
    fn bridge_impairments(&self, link: usize) -> Result<(bool, u8)> {
        let chain = |name: &str| {
            self.wire.exec(
                "nft",
                &["list", "chain", "bridge", TABLE, &format!("{name}{link}")],
            )
        };
        Ok((
            rule_drops(&chain("cut")?).is_some(),
            rule_drops(&chain("loss")?).unwrap_or(0),
        ))
    }

    /// The alagg configuration of `host`: capture traffic to the other host's service
    /// addresses, one `[[link]]` per link with the other host's MAC on it.
    pub fn config(&self, host: Host) -> String {
        self.config_with_links(host, self.links)
    }

    /// [`Testbed::config`] with only the first `links` links (at most all of them).
    pub fn config_with_links(&self, host: Host, links: usize) -> String {
        let links = links.min(self.links);
        let peer = host.peer();
        let mut text = format!(
            "# alagg testbed, host {} (namespace {}): {} link(s) to host {} (namespace {}).\n\
             # Written by alagg-testbed; see config/alagg.example.toml for every key.\n\n\
             [capture]\n\
             destinations = [\"{}/32\", \"{}/128\"]\n",
            host.letter().to_uppercase(),
            self.host(host).name(),
            links,
            peer.letter().to_uppercase(),
            self.host(peer).name(),
            peer.v4(),
            peer.v6(),
        );
        for link in 0..links {
            let _ = write!(
                text,
                "\n[[link]]\ninterface = \"{}\"\npeer_mac = \"{}\"\n",
                self.interface(link),
                format_mac(Testbed::mac(peer, link)),
            );
        }
        text
    }

    /// Writes [`Testbed::config`] of A and B to `dir/a.toml` and `dir/b.toml` (making `dir` if
    /// needed) and returns the two paths.
    pub fn write_configs(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let write = |host: Host| {
            let path = dir.join(format!("{}.toml", host.letter()));
            std::fs::write(&path, self.config(host)).map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
            Ok::<_, Error>(path)
        };
        Ok((write(Host::A)?, write(Host::B)?))
    }

    fn check_impairable(&self, link: usize) -> Result<()> {
        if !self.bridged {
            return Err(invalid(
                "the links of a bed from Testbed::new_direct are plain veth pairs and cannot be \
                 impaired: use Testbed::new"
                    .to_owned(),
            ));
        }
        self.check_link(link)
    }

    fn check_link(&self, link: usize) -> Result<()> {
        if link < self.links {
            Ok(())
        } else {
            Err(invalid(format!(
                "no link {link}: the testbed has links 0 to {}",
                self.links - 1
            )))
        }
    }

    /// Polls until every interface of the given links, on both hosts and in the wire, has
    /// carrier (`LOWER_UP`).
    /// A bridge whose ports a relay took has no carrier, and is not waited for.
    fn wait_for_carrier(&self, links: std::ops::Range<usize>) -> Result<()> {
        let deadline = Instant::now() + CARRIER_TIMEOUT;
        let relayed: Vec<bool> = links.clone().map(|l| self.has_path(l)).collect();
        loop {
            let mut missing = Vec::new();
            for (netns, names) in [
                (&self.a, links.clone().map(|l| self.interface(l)).collect()),
                (&self.b, links.clone().map(|l| self.interface(l)).collect()),
                (
                    &self.wire,
                    links
                        .clone()
                        .filter(|_| self.bridged)
                        .flat_map(|l| {
                            let mut names = vec![port(Host::A, l), port(Host::B, l)];
                            if !relayed[l - links.start] {
                                names.push(format!("br{l}"));
                            }
                            names
                        })
                        .collect::<Vec<_>>(),
                ),
            ] {
                let up = lower_up(&netns.ip(&["-o", "link", "show"])?);
                missing.extend(
                    names
                        .into_iter()
                        .filter(|name| !up.contains(name))
                        .map(|name| format!("{}:{name}", netns.name())),
                );
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Io {
                    what: format!(
                        "no carrier within {CARRIER_TIMEOUT:?} on {}",
                        missing.join(", ")
                    ),
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The wire namespace's end of `host`'s veth of link `link`: `a<link>` or `b<link>`.
fn port(host: Host, link: usize) -> String {
    format!("{}{link}", host.letter())
}

/// A fixed MAC for a wire port, so that captures in the wire read the same every run.
fn wire_mac(host: Host, link: usize) -> [u8; 6] {
    let mut mac = Testbed::mac(host, link);
    mac[4] = 0xff;
    mac
}

/// The nft match for frames entering the wire from either end of link `link`.
fn ports_match(link: usize) -> String {
    format!(
        "iifname {{ \"{}\", \"{}\" }}",
        port(Host::A, link),
        port(Host::B, link)
    )
}

/// What a `cut{i}` or `loss{i}` chain (`nft list chain` output) drops: `None` if nothing,
/// else the percentage (`numgen random mod 100 < P ... drop`, or 100 for a plain `drop`).
fn rule_drops(chain: &str) -> Option<u8> {
    let rule = chain
        .lines()
        .find(|line| line.trim_end().ends_with(" drop"))?;
    match rule.split_once("numgen random mod 100 < ") {
        Some((_, rest)) => rest.split_whitespace().next()?.parse().ok(),
        None => Some(100),
    }
}

fn check_links(links: usize) -> Result<()> {
    if (1..=MAX_LINKS).contains(&links) {
        Ok(())
    } else {
        Err(invalid(format!(
            "a testbed of {links} links: it takes 1 to {MAX_LINKS}"
        )))
    }
}

fn invalid(what: String) -> Error {
    Error::Io {
        what,
        source: std::io::ErrorKind::InvalidInput.into(),
    }
}

/// The names of the interfaces with carrier in `ip -o link show` output
/// (`2: link0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu ...`).
fn lower_up(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ": ");
            let _index = fields.next()?;
            let name = fields.next()?.split('@').next()?;
            let rest = fields.next()?;
            let flags = rest.strip_prefix('<')?.split('>').next()?;
            flags
                .split(',')
                .any(|flag| flag == "LOWER_UP")
                .then(|| name.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_names() {
        assert_eq!(format_mac(Testbed::mac(Host::A, 0)), "02:a1:a9:0a:00:00");
        assert_eq!(format_mac(Testbed::mac(Host::B, 15)), "02:a1:a9:0b:00:0f");
        assert_eq!(format_mac(wire_mac(Host::B, 1)), "02:a1:a9:0b:ff:01");
        assert_eq!(port(Host::A, 3), "a3");
        assert_eq!(ports_match(2), "iifname { \"a2\", \"b2\" }");
        assert_eq!(Host::A.peer(), Host::B);
        assert_eq!(A_V6.to_string(), "fd00:a1a9:100::1");
        assert_eq!(B_V4.to_string(), "198.18.100.2");
        assert_eq!(
            Testbed::named_namespaces("alaggbed"),
            ["alaggbed-a", "alaggbed-b", "alaggbed-wire"]
        );
    }

    #[test]
    fn carrier_is_read_from_ip_link_flags() {
        let output = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
            2: link0@if3: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue\n\
            3: link1@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n\
            4: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n";
        assert_eq!(lower_up(output), ["lo", "link1", "br0"]);
    }

    #[test]
    fn bridge_impairments_are_read_from_nft_chains() {
        let chain =
            |rules: &str| format!("table bridge alagg {{\n\tchain loss0 {{\n{rules}\t}}\n}}\n");
        assert_eq!(rule_drops(&chain("")), None);
        assert_eq!(
            rule_drops(&chain(
                "\t\tnumgen random mod 100 < 30 counter packets 0 bytes 0 drop\n"
            )),
            Some(30)
        );
        assert_eq!(
            rule_drops(&chain("\t\tcounter packets 5 bytes 420 drop\n")),
            Some(100)
        );
    }

    #[test]
    fn bad_link_counts_are_refused() {
        for links in [0, MAX_LINKS + 1] {
            let error = check_links(links).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains("1 to 256")),
                "{error:?}"
            );
        }
    }
}
