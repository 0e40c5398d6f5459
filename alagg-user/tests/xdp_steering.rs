//! Privileged end-to-end test of the XDP program (issue 2): attached to a veth in a namespace
//! of its own, it steers frames of the alagg ethertype, and only those, into the registered
//! AF_XDP socket; ARP, IP (ping) and other ethertypes reach the kernel; and while no socket is
//! registered, alagg frames reach the kernel too. Everything is torn down by RAII guards.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code panics with a message"
)]

use std::time::{Duration, Instant};

use alagg::{
    link::xdp::{XdpMode, XdpSteering},
    link::xsk::{XskConfig, XskSocket},
};
use alagg_common::{Action, DEFAULT_ETHERTYPE};
use alagg_testbed::{Netns, RawSocket, veth};

const A_MAC: [u8; 6] = [0x02, 0xa1, 0xa9, 0x10, 0x00, 0x01];
const B_MAC: [u8; 6] = [0x02, 0xa1, 0xa9, 0x10, 0x00, 0x02];
const OTHER_ETHERTYPE: u16 = 0x88b6;
const FRAMES: u32 = 200;

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// A 64-byte frame from B to A with `marker` in its first payload bytes.
fn frame(ethertype: u16, marker: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&A_MAC);
    frame.extend_from_slice(&B_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(b"ALAG");
    frame.extend_from_slice(&marker.to_be_bytes());
    frame.resize(64, 0);
    frame
}

/// Sends `FRAMES` alagg frames numbered from `first` and as many of another ethertype, from B.
fn send_from_b(b: &Netns, first: u32) {
    b.enter(|| {
        let socket = RawSocket::open("eth0", DEFAULT_ETHERTYPE).expect("raw socket on B");
        for i in first..first + FRAMES {
            socket
                .send(&frame(DEFAULT_ETHERTYPE, i))
                .expect("send alagg frame");
            socket
                .send(&frame(OTHER_ETHERTYPE, i))
                .expect("send other frame");
        }
    })
    .expect("enter B");
}

fn counter(steering: &XdpSteering, action: Action) -> u64 {
    steering
        .counters()
        .expect("read counters")
        .iter()
        .find(|(a, _)| *a == action)
        .map_or(0, |(_, c)| c.packets)
}

#[test]
fn xdp_steers_alagg_frames_to_the_socket_and_passes_everything_else() {
    alagg_testbed::require_root!();
    assert!(
        alagg_testbed::is_root(),
        "this test makes network namespaces and attaches XDP: run it as root (`cargo xtask test`)"
    );
    let a = Netns::new("xdp-a").expect("namespace A");
    let b = Netns::new("xdp-b").expect("namespace B");
    veth(&a, "eth0", &mac_text(A_MAC), &b, "eth0", &mac_text(B_MAC)).expect("veth A-B");
    a.ip(&["addr", "add", "198.18.1.1/24", "dev", "eth0"])
        .unwrap();
    b.ip(&["addr", "add", "198.18.1.2/24", "dev", "eth0"])
        .unwrap();

    a.enter(|| {
        let mut steering = XdpSteering::load().expect("load the XDP program");
        let mode = steering
            .attach("eth0", 0, DEFAULT_ETHERTYPE, XdpMode::Native)
            .expect("attach in native mode on veth");
        assert_eq!(mode, XdpMode::Native);
        let observer = RawSocket::open("eth0", DEFAULT_ETHERTYPE).expect("observer on A");
        let other_observer = RawSocket::open("eth0", OTHER_ETHERTYPE).expect("observer on A");

        // 1. No socket registered: alagg frames pass to the kernel.
        send_from_b(&b, 0);
        let seen = observer.drain_count(Duration::from_millis(300)).unwrap();
        assert_eq!(
            seen, FRAMES as usize,
            "alagg frames reach the stack while no socket is set"
        );
        assert_eq!(
            counter(&steering, Action::PassedNoSocket),
            u64::from(FRAMES)
        );
        assert_eq!(counter(&steering, Action::Redirected), 0);
        let others = other_observer
            .drain_count(Duration::from_millis(100))
            .unwrap();
        assert_eq!(others, FRAMES as usize);

        // 2. A socket registered: alagg frames, and only they, arrive on it.
        let mut xsk = XskSocket::open("eth0", 0, XskConfig::default()).expect("AF_XDP socket");
        steering
            .register_socket(0, 0, xsk.fd())
            .expect("register socket");
        send_from_b(&b, 1000);
        let ping = b.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "198.18.1.1"]);
        assert!(
            ping.is_ok(),
            "ping through the XDP-attached link failed: {ping:?}"
        );

        let mut markers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while markers.len() < FRAMES as usize && Instant::now() < deadline {
            xsk.poll_rx(100).unwrap();
            xsk.recv(|frame| {
                assert_eq!(
                    &frame[12..14],
                    &DEFAULT_ETHERTYPE.to_be_bytes(),
                    "only alagg frames"
                );
                assert_eq!(&frame[14..18], b"ALAG");
                markers.push(u32::from_be_bytes(frame[18..22].try_into().unwrap()));
            })
            .unwrap();
        }
        // A little longer, to catch anything that should not be there.
        xsk.poll_rx(200).unwrap();
        xsk.recv(|frame| markers.push(u32::from_be_bytes(frame[18..22].try_into().unwrap())))
            .unwrap();
        let expected: Vec<u32> = (1000..1000 + FRAMES).collect();
        assert_eq!(
            markers, expected,
            "every alagg frame, once, in order, on the socket"
        );
        assert_eq!(
            observer.drain_count(Duration::from_millis(200)).unwrap(),
            0,
            "steered frames must not also reach the stack"
        );
        assert_eq!(
            other_observer
                .drain_count(Duration::from_millis(100))
                .unwrap(),
            FRAMES as usize,
            "other ethertypes pass untouched"
        );
        assert_eq!(counter(&steering, Action::Redirected), u64::from(FRAMES));
        assert!(counter(&steering, Action::PassedOther) >= u64::from(FRAMES) + 6);

        // 3. Socket unregistered again: alagg frames go back to the stack.
        steering.unregister_socket(0, 0).expect("unregister");
        send_from_b(&b, 2000);
        assert_eq!(
            observer.drain_count(Duration::from_millis(300)).unwrap(),
            FRAMES as usize
        );
        assert_eq!(counter(&steering, Action::Redirected), u64::from(FRAMES));

        let attached = a.ip(&["link", "show", "eth0"]).unwrap();
        assert!(
            attached.contains("prog/xdp"),
            "XDP not shown as attached: {attached}"
        );
        steering.detach("eth0").expect("detach");
        let attached = a.ip(&["link", "show", "eth0"]).unwrap();
        assert!(
            !attached.contains("prog/xdp"),
            "XDP still attached after detach: {attached}"
        );
    })
    .expect("enter A");
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    alagg_testbed::require_root!();
    assert!(alagg_testbed::is_root(), "run as root (`cargo xtask test`)");
    let a = Netns::new("xdp-missing").expect("namespace");
    a.enter(|| {
        let mut steering = XdpSteering::load().expect("load");
        let error = steering
            .attach("nosuch0", 0, DEFAULT_ETHERTYPE, XdpMode::Auto)
            .expect_err("attaching to a missing interface must fail");
        assert!(error.to_string().contains("nosuch0"), "{error}");
    })
    .expect("enter");
}

#[test]
fn dropping_the_loader_detaches_the_program() {
    alagg_testbed::require_root!();
    assert!(alagg_testbed::is_root(), "run as root (`cargo xtask test`)");
    let a = Netns::new("xdp-drop").expect("namespace A");
    let b = Netns::new("xdp-drop-b").expect("namespace B");
    veth(&a, "eth0", &mac_text(A_MAC), &b, "eth0", &mac_text(B_MAC)).expect("veth A-B");
    a.enter(|| {
        let mut steering = XdpSteering::load().expect("load");
        steering
            .attach("eth0", 0, DEFAULT_ETHERTYPE, XdpMode::Auto)
            .expect("attach");
        assert!(
            a.ip(&["link", "show", "eth0"])
                .unwrap()
                .contains("prog/xdp")
        );
        drop(steering);
        let shown = a.ip(&["link", "show", "eth0"]).unwrap();
        assert!(
            !shown.contains("prog/xdp"),
            "still attached after drop: {shown}"
        );
    })
    .expect("enter A");
}
