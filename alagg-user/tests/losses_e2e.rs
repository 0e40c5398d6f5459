//! Privileged end-to-end tests of losses that used to go uncounted (issue 17): a frame lost on
//! the way in must show in `alagg status` (JSON and text) and in the exit summary, under the
//! counter the table in `counters.rs` names for its cause.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

mod common;

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use alagg_testbed::Netns;
use common::*;

/// Sends `frames` raw Ethernet frames out of `interface` in `ns` (AF_PACKET, as the peer's
/// alagg would, but of any length).
fn send_raw(ns: &Netns, interface: &str, frames: &[Vec<u8>]) {
    let interface = interface.to_owned();
    ns.enter(move || {
        let name = std::ffi::CString::new(interface.clone()).unwrap();
        // SAFETY: a NUL-terminated name that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no {interface} here");
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        for frame in frames {
            // SAFETY: `frame` and `address` are live for the call, of the lengths passed.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const address).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(
                usize::try_from(sent).ok(),
                Some(frame.len()),
                "sending a {}-byte frame: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
    })
    .expect("enter the sending host");
}

/// An Ethernet frame of alagg's ethertype from B to A on link 0, `len` bytes long in all.
fn frame_from_b(len: usize) -> Vec<u8> {
    let mac = |text: String| -> Vec<u8> {
        text.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let mut frame = mac(common::mac(0xa, 0));
    frame.extend(mac(common::mac(0xb, 0)));
    frame.extend(alagg_common::DEFAULT_ETHERTYPE.to_be_bytes());
    frame.resize(len, 0x5a);
    frame
}

/// An AF_PACKET link receives frames into 9216-byte slots; a longer frame arrives cut short
/// (`MSG_TRUNC`) and is dropped. Before issue 17 it vanished without a trace (not even as a
/// received frame); now it is `rx_truncated` in `alagg status` and the exit summary, and a
/// frame that fits is still received.
#[test]
fn frames_longer_than_an_af_packet_slot_are_counted_truncated() {
    alagg_testbed::require_root!();
    let pair = Pair::new("trunc", 1);
    // Room on the wire for jumbo frames longer than a slot (no XDP here, so any veth MTU).
    for ns in [&pair.a, &pair.b] {
        ns.ip(&["link", "set", "link0", "mtu", "12000"]).unwrap();
    }
    let config = pair.config(0xa, 1);
    let text = fs::read_to_string(&config).unwrap().replace(
        "interface = \"link0\"\n",
        "interface = \"link0\"\nio = \"af_packet\"\n",
    );
    fs::write(&config, text).unwrap();
    let a = Alagg::start(&pair.a, &config, pair.dir.join("a.log"));

    let long = 5;
    let mut frames = vec![frame_from_b(10_000); long];
    // One that fits (not an alagg frame inside: the engine calls it malformed).
    frames.push(frame_from_b(200));
    send_raw(&pair.b, "link0", &frames);

    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = status_json(&pair.a);
        let link = &snapshot.links[0];
        if link.rx.rx_truncated >= long as u64 && link.rx.rx_frames >= 1 {
            break snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "the truncated frames were not counted within 10 s:\n{}",
            snapshot.render_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let link = &snapshot.links[0];
    assert_eq!(
        link.rx.rx_truncated,
        long as u64,
        "{}",
        snapshot.render_text()
    );
    assert_eq!(link.rx.rx_frames, 1, "only the frame that fits is received");
    let text = snapshot.render_text();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("truncated frames:") && l.ends_with("5 frames")),
        "{text}"
    );

    let log = a.stop();
    assert_eq!(
        summary_link_value(&log, "link0", "rx_truncated"),
        long as u64,
        "{log}"
    );
    assert_eq!(summary_link_value(&log, "link0", "rx_frames"), 1, "{log}");
    assert_eq!(
        summary_link_value(&log, "link0", "rx_buffer_full"),
        0,
        "{log}"
    );
}

/// An AF_XDP socket's frames hold 3840 bytes; a longer alagg frame that the XDP program
/// steers to it is dropped by the kernel (`XDP_STATISTICS` `rx_dropped`), which alagg never
/// read before issue 17. Now it is `xsk_rx_dropped` in `alagg status` and the exit summary.
#[test]
fn frames_an_af_xdp_socket_drops_are_counted_from_its_statistics() {
    alagg_testbed::require_root!();
    let pair = Pair::new("xskdrop", 1);
    for ns in [&pair.a, &pair.b] {
        ns.ip(&["link", "set", "link0", "mtu", "6000"]).unwrap();
    }
    let config = pair.config(0xa, 1);
    let a = Alagg::start(&pair.a, &config, pair.dir.join("a.log"));

    let long = 3;
    send_raw(&pair.b, "link0", &vec![frame_from_b(5000); long]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let snapshot = status_json(&pair.a);
        if snapshot.links[0].rx.xsk_rx_dropped >= long as u64 {
            break snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped frames were not counted within 10 s:\n{}",
            snapshot.render_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let text = snapshot.render_text();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("AF_XDP rx dropped:") && l.ends_with("3 frames")),
        "{text}"
    );
    assert_eq!(snapshot.links[0].rx.rx_frames, 0, "{text}");
    let log = a.stop();
    assert_eq!(
        summary_link_value(&log, "link0", "xsk_rx_dropped"),
        long as u64,
        "{log}"
    );
}
