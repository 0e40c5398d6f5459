//! Fuzz target: the whole receive path (epoch, dedup, reassembly, reorder, timers).
//!
//! Input: records of `[time step u8][length u16 be][frame bytes]`, each frame the bytes after
//! the Ethernet header. A small receiver makes eviction, overflow and timeouts reachable. The
//! receiver must never panic, deliver only packets within its limits, and its counters must
//! account for every delivery.
#![no_main]

use std::time::Duration;

use alagg_proto::{Receiver, ReceiverConfig, Timestamp};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let config = ReceiverConfig {
        dedup_window: 64,
        reorder_capacity: 16,
        hold_time: Duration::from_micros(300),
        slot_size: 64,
        large_slots: 2,
        max_packet_len: MAX_PACKET,
        reassembly_slots: 2,
        reassembly_timeout: Duration::from_micros(500),
        deliver_late: data.first().is_some_and(|b| b & 1 == 0),
        release_passed_gaps: data.first().is_some_and(|b| b & 2 == 0),
    };
    let Ok(mut rx) = Receiver::new(&config) else {
        return;
    };
    let mut delivered = 0u64;
    let mut deliver = |p: &[u8]| {
        assert!(p.len() <= MAX_PACKET);
        delivered += 1;
    };
    let mut now = 0u64;
    let mut rest = data;
    while rest.len() >= 3 {
        now += u64::from(rest[0]) * 10_000;
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let end = (3 + len).min(rest.len());
        let frame = &rest[3..end];
        rest = &rest[end..];
        let t = Timestamp::from_nanos(now);
        if rx.next_deadline().is_some_and(|d| d <= t) {
            rx.poll(t, &mut deliver);
        }
        rx.on_frame(frame, t, &mut deliver);
    }
    rx.poll(Timestamp::from_nanos(u64::MAX), &mut deliver);
    let s = rx.stats();
    assert_eq!(
        delivered,
        s.reorder.in_order + s.reorder.reordered + s.reorder.late
    );
    assert!(delivered <= s.dedup.passed);
    assert_eq!(rx.held(), 0);
});
