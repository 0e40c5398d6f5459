//! The commands of the `alagg` binary, one module each: [`up`](up()), [`down`](down()),
//! [`status`](status()), [`check`](check()), [`genkey`](genkey()), and the debugging verbs [`steal`](steal()) and
//! [`attach`](attach()). `main.rs` parses the command line and calls one of these; they return
//! errors that name the file, key or interface at fault.

mod check;
mod debug;
mod down;
mod genkey;
mod status;
mod up;

pub use check::check;
pub use debug::{attach, steal};
pub use down::down;
pub use genkey::genkey;
pub use status::status;
pub use up::up;

pub use crate::link::xdp::XdpMode;

fn require_root() -> anyhow::Result<()> {
    if !crate::sys::is_root() {
        anyhow::bail!(
            "alagg needs root (CAP_NET_ADMIN and CAP_BPF) to attach XDP: run it with sudo"
        );
    }
    Ok(())
}

/// Parses an ethertype given in hexadecimal (`0x88b5` or `88b5`); refuses values that are
/// lengths.
pub fn parse_ethertype(text: &str) -> Result<u16, String> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    let value = u16::from_str_radix(digits, 16)
        .map_err(|_| format!("{text:?} is not a 16-bit hexadecimal ethertype such as 0x88b5"))?;
    if value < 0x0600 {
        return Err(format!(
            "{text} is a length, not an ethertype: ethertypes start at 0x0600 (IEEE 802.3 clause 3.2.6)"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethertypes_parse_in_hex_and_reject_lengths() {
        assert_eq!(parse_ethertype("0x88b5"), Ok(0x88b5));
        assert_eq!(parse_ethertype("88B5"), Ok(0x88b5));
        assert!(parse_ethertype("0x05dc").is_err());
        assert!(parse_ethertype("zz").is_err());
        assert!(parse_ethertype("0x1ffff").is_err());
    }
}
