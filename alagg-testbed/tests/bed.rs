//! Privileged tests of the testbed: links carry traffic, each impairment bites on its own link
//! only and is undone, and the namespaces go away with the bed, also a half-made one.
#![expect(clippy::unwrap_used, reason = "test code panics with a message")]

use alagg_testbed::{A_V4, A_V6, B_V4, B_V6, Host, Netns, Testbed, bed::format_mac};

fn require_root() {
    assert!(
        alagg_testbed::is_root(),
        "this test makes network namespaces, bridges, nft tables and qdiscs: run it as root \
         (`cargo xtask test`, or `sudo -E cargo test -p alagg-testbed`)"
    );
}

/// A bed whose hosts have test addresses on each link (see [`add_link_addresses`]).
fn bed_with_link_addresses(tag: &str, links: usize) -> Testbed {
    require_root();
    let bed = Testbed::new(tag, links).unwrap();
    add_link_addresses(&bed);
    bed
}

/// Gives the hosts test addresses on each link: `198.18.20<i>.1/24` and
/// `fd00:a1a9:200:<i>::1/64` on `A:link<i>`, `.2` and `::2` on `B:link<i>`.
fn add_link_addresses(bed: &Testbed) {
    for link in 0..bed.links() {
        for (host, n) in [(Host::A, 1), (Host::B, 2)] {
            let netns = bed.host(host);
            let interface = bed.interface(link);
            for address in [format!("{}/24", v4(link, n)), format!("{}/64", v6(link, n))] {
                netns
                    .ip(&["addr", "add", &address, "dev", &interface])
                    .unwrap();
            }
        }
    }
}

fn v4(link: usize, n: u8) -> String {
    format!("198.18.{}.{n}", 200 + link)
}

fn v6(link: usize, n: u8) -> String {
    format!("fd00:a1a9:200:{link}::{n}")
}

/// Pings B's address on link `link` from A `count` times every `interval` seconds; returns
/// (transmitted, received).
fn ping(bed: &Testbed, link: usize, count: u32, interval: &str) -> (u32, u32) {
    let output = bed
        .a
        .command("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", interval])
        .args(["-W", "1", &v4(link, 2)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{stdout}"));
    let number = |word: &str| -> u32 {
        let before = summary
            .split(", ")
            .find(|part| part.contains(word))
            .unwrap_or_else(|| panic!("no {word:?} in {summary:?}"));
        before.split_whitespace().next().unwrap().parse().unwrap()
    };
    (number("transmitted"), number("received"))
}

fn assert_link_works(bed: &Testbed, link: usize, what: &str) {
    let (sent, received) = ping(bed, link, 5, "0.05");
    assert_eq!((sent, received), (5, 5), "link {link} {what}");
}

fn assert_link_dead(bed: &Testbed, link: usize, what: &str) {
    let (sent, received) = ping(bed, link, 5, "0.05");
    assert_eq!((sent, received), (5, 0), "link {link} {what}");
}

fn has_carrier(netns: &Netns, interface: &str) -> bool {
    let line = netns.ip(&["-o", "link", "show", "dev", interface]).unwrap();
    line.contains(",LOWER_UP") || line.contains("<LOWER_UP")
}

#[test]
fn each_link_carries_v4_and_v6_with_the_documented_macs_and_addresses() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("links", 2);
    for link in 0..2 {
        assert_link_works(&bed, link, "fresh");
        // IPv6 straight away: duplicate address detection is off on the new interfaces.
        let out = bed
            .a
            .exec(
                "ping",
                &["-n", "-c", "2", "-i", "0.05", "-W", "1", &v6(link, 2)],
            )
            .unwrap();
        assert!(
            out.contains(" 0% packet loss"),
            "v6 over link {link}:\n{out}"
        );
        for host in [Host::A, Host::B] {
            let netns = bed.host(host);
            let interface = bed.interface(link);
            let shown = netns.ip(&["link", "show", "dev", &interface]).unwrap();
            let mac = format_mac(Testbed::mac(host, link));
            assert!(shown.contains(&mac), "{host:?} link {link}: {shown}");
            let dad = netns
                .exec(
                    "sysctl",
                    &["-n", &format!("net.ipv6.conf.{interface}.accept_dad")],
                )
                .unwrap();
            assert_eq!(dad.trim(), "0", "{host:?} {interface} does DAD");
        }
    }
    for (host, v4, v6) in [(Host::A, A_V4, A_V6), (Host::B, B_V4, B_V6)] {
        let lo = bed.host(host).ip(&["addr", "show", "dev", "lo"]).unwrap();
        assert!(lo.contains(&format!("{v4}/32")), "{host:?} lo: {lo}");
        assert!(lo.contains(&format!("{v6}/128")), "{host:?} lo: {lo}");
    }
    // The bridges are plain forwarders.
    let bridge = bed.wire.ip(&["-d", "link", "show", "dev", "br0"]).unwrap();
    for setting in ["stp_state 0", "forward_delay 0", "mcast_snooping 0"] {
        assert!(bridge.contains(setting), "br0 lacks {setting}: {bridge}");
    }
}

#[test]
fn loss_applies_to_its_link_only_and_is_undone() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("loss", 2);
    bed.set_loss(0, 100).unwrap();
    assert_link_dead(&bed, 0, "at 100 % loss");
    assert_link_works(&bed, 1, "while link 0 loses everything");

    // 30 % each way: an echo and its reply both survive with probability 0.49, so 51 % of
    // pings are lost. Over 400 pings the standard deviation is 2.5 points; the bounds are 8.
    bed.set_loss(0, 30).unwrap();
    let (sent, received) = ping(&bed, 0, 400, "0.005");
    assert_eq!(sent, 400);
    let lost = f64::from(sent - received) / f64::from(sent) * 100.0;
    assert!(
        (31.0..=71.0).contains(&lost),
        "30 % loss each way lost {lost:.1} % of 400 pings"
    );
    assert_link_works(&bed, 1, "while link 0 loses 30 %");

    bed.set_loss(0, 0).unwrap();
    assert_link_works(&bed, 0, "after loss 0");
    assert!(bed.set_loss(0, 101).is_err());
    assert!(bed.set_loss(2, 10).is_err(), "a third link of two");
}

#[test]
fn drop_every_nth_frame_is_exact_and_undone() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("every", 2);
    // Every 4th frame, echoes and replies counted together: of 100 pings (200 frames), 50
    // frames go, and no two in a row, so between 25 and 50 pings are lost.
    bed.drop_every(0, 4).unwrap();
    let (sent, received) = ping(&bed, 0, 100, "0.005");
    assert_eq!(sent, 100);
    assert!(
        (50..=75).contains(&received),
        "every 4th frame dropped: {received} of 100 pings came back"
    );
    assert_link_works(&bed, 1, "while link 0 drops every 4th frame");
    bed.drop_every(0, 0).unwrap();
    assert_link_works(&bed, 0, "after drop_every 0");
    assert!(bed.drop_every(2, 3).is_err(), "a third link of two");
}

#[test]
fn cut_and_heal_silence_or_carrier_loss_on_one_link() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("cut", 2);
    bed.cut(1).unwrap();
    assert_link_dead(&bed, 1, "cut");
    assert_link_works(&bed, 0, "while link 1 is cut");
    for host in [Host::A, Host::B] {
        assert!(
            has_carrier(bed.host(host), "link1"),
            "{host:?} lost carrier on a silent cut"
        );
    }
    bed.heal(1).unwrap();
    assert_link_works(&bed, 1, "healed");

    bed.cut_carrier(1).unwrap();
    for host in [Host::A, Host::B] {
        assert!(
            !has_carrier(bed.host(host), "link1"),
            "{host:?} kept carrier on a carrier cut"
        );
    }
    assert_link_dead(&bed, 1, "carrier cut");
    assert_link_works(&bed, 0, "while link 1 has no carrier");
    bed.heal(1).unwrap();
    assert!(has_carrier(&bed.a, "link1") && has_carrier(&bed.b, "link1"));
    assert_link_works(&bed, 1, "healed after a carrier cut");
}

#[test]
fn rate_limit_is_a_tbf_on_both_wire_ports_of_its_link() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("rate", 2);
    let qdiscs = |port: &str| {
        bed.wire
            .exec("tc", &["-s", "qdisc", "show", "dev", port])
            .unwrap()
    };
    bed.set_rate(0, 10).unwrap();
    assert_link_works(&bed, 0, "rate-limited to 10 Mbit/s");
    for port in ["a0", "b0"] {
        let shown = qdiscs(port);
        assert!(
            shown.contains("qdisc tbf") && shown.contains("rate 10Mbit"),
            "{port}: {shown}"
        );
        // The echoes went through it.
        assert!(!shown.contains("Sent 0 bytes"), "{port}: {shown}");
    }
    for port in ["a1", "b1"] {
        assert!(!qdiscs(port).contains("tbf"), "link 1 got a rate limit");
    }
    bed.set_rate(0, 20).unwrap();
    assert!(qdiscs("a0").contains("rate 20Mbit"), "rate not replaced");
    bed.set_rate(0, 0).unwrap();
    bed.set_rate(0, 0).unwrap();
    for port in ["a0", "b0"] {
        assert!(!qdiscs(port).contains("tbf"), "{port} kept its tbf");
    }
    assert_link_works(&bed, 0, "rate limit removed");
}

#[test]
fn configs_name_the_peer_addresses_and_macs() {
    alagg_testbed::require_root!();
    require_root();
    let bed = Testbed::new("config", 3).unwrap();
    let a = bed.config(Host::A);
    assert!(
        a.contains(&format!("destinations = [\"{B_V4}/32\", \"{B_V6}/128\"]")),
        "{a}"
    );
    assert_eq!(a.matches("[[link]]").count(), 3, "{a}");
    assert!(
        a.contains("interface = \"link2\"\npeer_mac = \"02:a1:a9:0b:00:02\""),
        "{a}"
    );
    let dir = std::env::temp_dir().join(bed.a.name());
    let (path_a, path_b) = bed.write_configs(&dir).unwrap();
    assert_eq!(std::fs::read_to_string(&path_a).unwrap(), a);
    let b = std::fs::read_to_string(&path_b).unwrap();
    assert!(b.contains(&format!("\"{A_V4}/32\", \"{A_V6}/128\"")), "{b}");
    assert!(b.contains("peer_mac = \"02:a1:a9:0a:00:00\""), "{b}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn namespaces() -> String {
    alagg_testbed::run("ip", &["netns", "list"]).unwrap()
}

fn listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

#[test]
fn dropping_the_bed_removes_its_namespaces_and_what_runs_in_them() {
    alagg_testbed::require_root!();
    require_root();
    let bed = Testbed::new("drop", 1).unwrap();
    let names = [&bed.a, &bed.b, &bed.wire].map(|netns| netns.name().to_owned());
    let before = namespaces();
    for name in &names {
        assert!(listed(&before, name), "{name} missing:\n{before}");
    }
    let mut sleeper = bed.b.command("sleep").arg("600").spawn().unwrap();
    drop(bed);
    let after = namespaces();
    for name in &names {
        assert!(!listed(&after, name), "{name} left behind:\n{after}");
    }
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process inside was not killed");
}

/// Removes a named bed even when a test fails half-way.
struct NamedGuard(String);

impl Drop for NamedGuard {
    fn drop(&mut self) {
        let _ = Testbed::remove_named(&self.0);
    }
}

#[test]
fn a_named_bed_persists_until_removed_and_a_half_made_one_leaves_nothing() {
    alagg_testbed::require_root!();
    require_root();
    let prefix = format!("alaggbedtest{}", std::process::id());
    let guard = NamedGuard(prefix.clone());
    let [a, b, wire] = Testbed::named_namespaces(&prefix);

    // The wire's name is taken: A and B are made, the bed fails, and A and B are removed again
    // while the namespace that was there before is left alone.
    let squatter = Netns::named(&wire).unwrap();
    assert!(Testbed::named(&prefix, 1).is_err());
    let list = namespaces();
    assert!(
        !listed(&list, &a) && !listed(&list, &b),
        "half-made bed left:\n{list}"
    );
    assert!(listed(&list, &wire), "the squatter was removed:\n{list}");
    drop(squatter);

    Testbed::named(&prefix, 2).unwrap().persist();
    let list = namespaces();
    for name in [&a, &b, &wire] {
        assert!(listed(&list, name), "{name} did not persist:\n{list}");
    }
    assert_eq!(Testbed::remove_named(&prefix).unwrap(), 3);
    assert_eq!(Testbed::remove_named(&prefix).unwrap(), 0);
    let list = namespaces();
    for name in [&a, &b, &wire] {
        assert!(!listed(&list, name), "{name} not removed:\n{list}");
    }
    drop(guard);
}

#[test]
fn a_direct_bed_joins_the_hosts_with_plain_veth_pairs_that_cannot_be_impaired() {
    alagg_testbed::require_root!();
    require_root();
    let bed = Testbed::new_direct("direct", 2).unwrap();
    add_link_addresses(&bed);
    for link in 0..2 {
        let interface = bed.interface(link);
        // A's link is B's link's veth peer: no bridge, nothing in the wire namespace.
        let shown = bed.a.ip(&["-d", "link", "show", &interface]).unwrap();
        assert!(shown.contains("veth"), "{shown}");
        assert_link_works(&bed, link, "on a direct bed");
    }
    assert!(
        bed.wire
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .count()
            <= 1
    );
    let error = bed.set_loss(0, 10).unwrap_err().to_string();
    assert!(error.contains("cannot be impaired"), "{error}");
    assert!(bed.cut(1).is_err());
    assert!(bed.set_rate(0, 100).is_err());
}

#[test]
fn a_raised_mtu_lets_large_frames_cross_one_link_only() {
    alagg_testbed::require_root!();
    let bed = bed_with_link_addresses("mtu", 2);
    // An 8000-byte ICMP payload that must not be fragmented: it crosses only a link whose
    // every hop (host ports, wire ports, bridge) takes it.
    let big_ping = |link: usize| {
        bed.a
            .command("ping")
            .args(["-n", "-q", "-c", "2", "-i", "0.05", "-W", "1"])
            .args(["-M", "do", "-s", "8000", &v4(link, 2)])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!big_ping(0), "an 8000-byte ping crossed a 1500-byte link");
    bed.set_mtu(0, 9000).unwrap();
    assert!(
        big_ping(0),
        "an 8000-byte ping did not cross a 9000-byte link"
    );
    assert!(!big_ping(1), "link 1 took the MTU of link 0");
    assert_link_works(&bed, 1, "beside a jumbo link");
    for mtu in [0, 67, 65536] {
        assert!(bed.set_mtu(0, mtu).is_err(), "MTU {mtu} accepted");
    }
    assert!(bed.set_mtu(2, 9000).is_err(), "a link the bed lacks");
}
