//! Fuzz target: the wire parser. Input: one whole Ethernet frame.
//!
//! Checked views and `Repr::parse` must never panic; whatever parses must re-emit to a frame
//! that parses to the same `Repr`.
#![no_main]

use alagg_proto::wire::{EthernetFrame, EthernetRepr, Frame, Repr};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(frame) = Frame::new_checked(bytes) else {
        return;
    };
    let Ok(repr) = Repr::parse(&frame) else {
        return;
    };
    let payload = frame.payload();
    let mut out = vec![0u8; repr.frame_len()];
    let n = repr.emit_with_payload(payload, &mut out).unwrap_or(0);
    assert_eq!(n, out.len());
    let again = Frame::new_checked(&out[..]).map(|f| Repr::parse(&f));
    assert_eq!(again, Ok(Ok(repr)));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(eth) = EthernetFrame::new_checked(data) {
        let _ = EthernetRepr::parse(&eth);
        check(eth.payload());
    }
    check(data);
});
