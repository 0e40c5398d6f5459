//! `cargo xtask demo`: the main job on a built-in default.
//!
//! Two test hosts in network namespaces joined by one link. `alagg attach` runs on host A while
//! host B sends alagg frames, frames of another ethertype and pings: the alagg frames are steered
//! by the XDP program (no AF_XDP socket is open in this demo, so they are counted and passed),
//! everything else passes untouched and ping keeps working. Everything is torn down at the end,
//! and on Ctrl-C.

use std::{process::Stdio, thread, time::Duration};

use alagg_testbed::{Netns, RawSocket, veth};
use anyhow::{Context as _, bail};

use crate::build;

const A_MAC: &str = "02:a1:a9:00:00:01";
const B_MAC: &str = "02:a1:a9:00:00:02";

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    if !alagg_testbed::is_root() {
        bail!("the demo makes network namespaces and attaches XDP: run it as root");
    }
    let alagg = build(true)?;
    println!("\n== alagg demo: two hosts, one link, alagg's XDP program on host A ==");
    let a = Netns::new("demo-a")?;
    let b = Netns::new("demo-b")?;
    veth(&a, "link0", A_MAC, &b, "link0", B_MAC)?;
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "link0"])?;
    b.ip(&["addr", "add", "198.18.0.2/24", "dev", "link0"])?;
    println!(
        "host A {} (198.18.0.1) <-> host B {} (198.18.0.2)",
        a.name(),
        b.name()
    );

    let mut child = a
        .command(alagg.to_str().context("binary path is not UTF-8")?)
        .args(["attach", "--interface", "link0", "--seconds", "4"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting alagg attach")?;
    thread::sleep(Duration::from_millis(800));

    let frames = 1000;
    b.enter(|| -> anyhow::Result<()> {
        let socket = RawSocket::open("link0", alagg_common_ethertype())?;
        for i in 0..frames {
            socket.send(&frame(alagg_common_ethertype(), i))?;
            socket.send(&frame(0x88b6, i))?;
        }
        Ok(())
    })??;
    println!("host B sent {frames} alagg frames and {frames} frames of ethertype 0x88b6");
    let ping = b.exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", "198.18.0.1"]);
    match ping {
        Ok(out) => println!("ping through the XDP-attached link: {}", last_line(&out)),
        Err(error) => println!("ping failed: {error}"),
    }
    let status = child.wait().context("waiting for alagg")?;
    if !status.success() {
        bail!("alagg attach exited with {status}");
    }
    println!("== done: namespaces and the XDP attachment are removed ==");
    Ok(())
}

fn alagg_common_ethertype() -> u16 {
    0x88b5
}

fn frame(ethertype: u16, i: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&mac(A_MAC));
    frame.extend_from_slice(&mac(B_MAC));
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(&i.to_be_bytes());
    frame.resize(64, 0);
    frame
}

fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (byte, part) in out.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}
