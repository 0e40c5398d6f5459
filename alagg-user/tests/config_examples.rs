//! Every example under `config/` loads, validates and says what its comments say, so the examples
//! never rot. A new example must be added to [`KNOWN`] with a test of its values.
#![expect(clippy::unwrap_used, reason = "tests panic on failure by design")]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use alagg::config::{
    Capture, Config, CpuConfig, IoMode, MacAddr, ProtocolConfig, SchedulerMode, TunConfig, XdpMode,
};
use ipnet::IpNet;

/// The examples this file checks value by value.
const KNOWN: &[&str] = &["alagg.example.toml", "site-a.toml", "site-b.toml"];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn load(name: &str) -> Config {
    let path = config_dir().join(name);
    Config::load(&path).unwrap_or_else(|error| panic!("{error}"))
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|net| net.parse().unwrap()).collect()
}

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

#[test]
fn every_example_loads_and_is_known() {
    let mut names: Vec<String> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    names.sort();
    for name in &names {
        let config = load(name);
        assert!(!config.plan().to_string().is_empty(), "{name}: empty plan");
        assert!(
            KNOWN.contains(&name.as_str()),
            "config/{name} has no test of its values: add it to KNOWN and write one"
        );
    }
    assert_eq!(
        names.len(),
        KNOWN.len(),
        "missing examples: {names:?} vs {KNOWN:?}"
    );
}

#[test]
fn full_example_spells_out_the_defaults() {
    let config = load("alagg.example.toml");
    assert_eq!(
        config.capture,
        Capture {
            destinations: nets(&["10.0.9.2/32", "fd00::2/128"]),
            ..Capture::default()
        }
    );
    assert_eq!(config.scheduler.mode, SchedulerMode::Redundant);
    assert_eq!(config.tun, TunConfig::default());
    assert_eq!(config.protocol, ProtocolConfig::default());
    assert_eq!(config.protocol.ethertype, 0x88b5);
    assert_eq!(config.cpu, CpuConfig::default());
    assert_eq!(config.metrics, None);
    let links: Vec<_> = config
        .links
        .iter()
        .map(|link| {
            (
                link.interface.as_str(),
                link.peer_mac,
                link.io,
                link.xdp_mode,
                link.priority,
                link.rate_mbit,
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            (
                "eth1",
                mac("02:00:00:00:01:02"),
                IoMode::Xdp,
                XdpMode::Auto,
                None,
                0
            ),
            (
                "eth2",
                mac("02:00:00:00:02:02"),
                IoMode::Xdp,
                XdpMode::Auto,
                None,
                0
            ),
        ]
    );
    // Leaving out every optional key changes nothing: the values written are the defaults.
    let required_only = r#"
        [capture]
        destinations = ["10.0.9.2/32", "fd00::2/128"]
        [[link]]
        interface = "eth1"
        peer_mac = "02:00:00:00:01:02"
        [[link]]
        interface = "eth2"
        peer_mac = "02:00:00:00:02:02"
    "#;
    assert_eq!(required_only.parse::<Config>().unwrap(), config);
}

#[test]
fn site_a_says_what_its_comments_say() {
    let config = load("site-a.toml");
    assert_eq!(
        config.capture.destinations,
        nets(&["198.18.2.0/24", "fd00:a1a9:0:2::/64"])
    );
    let links: Vec<_> = config
        .links
        .iter()
        .map(|link| (link.interface.as_str(), link.peer_mac, link.io))
        .collect();
    assert_eq!(
        links,
        [
            ("eth1", mac("02:a1:a9:01:00:02"), IoMode::Xdp),
            ("eth2", mac("02:a1:a9:02:00:02"), IoMode::Xdp),
        ]
    );
    assert_eq!(config.cpu.cores, Some(vec![1, 2, 3]));
    assert!(config.cpu.pin);
    let listen: SocketAddr = "127.0.0.1:9187".parse().unwrap();
    assert_eq!(config.metrics.map(|metrics| metrics.listen), Some(listen));
    assert_eq!(config.protocol, ProtocolConfig::default());
    assert_eq!(config.tun, TunConfig::default());
}

#[test]
fn site_b_says_what_its_comments_say() {
    let config = load("site-b.toml");
    assert_eq!(
        config.capture.destinations,
        nets(&["198.18.1.0/24", "fd00:a1a9:0:1::/64"])
    );
    let links: Vec<_> = config
        .links
        .iter()
        .map(|link| {
            (
                link.interface.as_str(),
                link.peer_mac,
                link.io,
                link.xdp_mode,
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            ("eth1", mac("02:a1:a9:01:00:01"), IoMode::Xdp, XdpMode::Auto),
            (
                "eth2",
                mac("02:a1:a9:02:00:01"),
                IoMode::Xdp,
                XdpMode::Generic
            ),
        ]
    );
    assert_eq!(config.cpu, CpuConfig::default());
    assert_eq!(config.metrics, None);
}

#[test]
fn sites_are_a_matching_pair() {
    let a = load("site-a.toml");
    let b = load("site-b.toml");
    assert_eq!(
        a.protocol, b.protocol,
        "both ends must speak the same protocol"
    );
    assert_eq!(a.links.len(), b.links.len());
    for (i, (la, lb)) in a.links.iter().zip(&b.links).enumerate() {
        // Each side's peer MAC is the other side's own MAC on the same link: 02:a1:a9:LL:00:SS
        // with SS the site (01 for A, 02 for B).
        let (ma, mb) = (la.peer_mac.octets(), lb.peer_mac.octets());
        assert_eq!(ma[..5], mb[..5], "link[{i}]: peer MACs are not mirrored");
        assert_eq!(
            (ma[5], mb[5]),
            (2, 1),
            "link[{i}]: A's peer is B (02), B's is A (01)"
        );
        assert_eq!(la.interface, lb.interface, "link[{i}]");
    }
    // Each side's destinations are the other's own networks, so they must be disjoint.
    for net_a in &a.capture.destinations {
        for net_b in &b.capture.destinations {
            assert!(
                !net_a.contains(&net_b.network()) && !net_b.contains(&net_a.network()),
                "{net_a} (site A's destination) overlaps {net_b} (site B's)"
            );
        }
    }
}

/// The systemd unit template's commands are ones `alagg` accepts: each `Exec*` line, with the
/// instance's file swapped for a missing one, fails on that file (exit 1, naming it), never on
/// its command line (clap's usage error, exit 2).
#[test]
fn systemd_unit_commands_are_valid_alagg_command_lines() {
    let unit = std::fs::read_to_string(config_dir().join("alagg@.service")).unwrap();
    let missing = std::env::temp_dir().join(format!("alagg-unit-{}.toml", std::process::id()));
    let mut commands = Vec::new();
    for line in unit.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("Exec") {
            continue;
        }
        let mut words = value.split_whitespace();
        assert_eq!(words.next(), Some("/usr/bin/alagg"), "{line}");
        let args: Vec<String> = words
            .map(|w| w.replace("/etc/alagg/%i.toml", missing.to_str().unwrap()))
            .collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_alagg"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{line}: {stderr}");
        assert!(
            stderr.contains(missing.to_str().unwrap()),
            "{line}: the error does not name the file: {stderr}"
        );
        commands.push(args[0].clone());
    }
    commands.sort();
    assert_eq!(commands, ["check", "down", "reload", "up"], "{unit}");
}

/// `systemd-analyze verify` accepts the unit template (as an instance, with `alagg` at the
/// built binary: verify insists every `Exec*` program exists). systemd's tools come with
/// `cargo xtask bootstrap` (Debian `systemd`; nothing is booted). Where they are missing the
/// test says so and is not run, unless `CI` is set, where it fails.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing in CI: run `cargo xtask bootstrap`"
        );
        eprintln!("NOT RUN: systemd-analyze is not installed (cargo xtask bootstrap installs it)");
        return;
    };
    assert!(probe.status.success(), "systemd-analyze --version failed");
    let unit = std::fs::read_to_string(config_dir().join("alagg@.service")).unwrap();
    let unit = unit.replace("/usr/bin/alagg", env!("CARGO_BIN_EXE_alagg"));
    let dir = std::env::temp_dir().join(format!("alagg-unit-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("alagg@site.service");
    std::fs::write(&path, &unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Verify reports what it cannot understand on stderr, some of it without failing
    // ("Unknown key name", "Unknown lvalue"): any line about this unit is a defect.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("alagg@site.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    for key in ["Type=notify", "WatchdogSec=", "CapabilityBoundingSet="] {
        assert!(unit.contains(key), "the unit lost {key}");
    }
}
