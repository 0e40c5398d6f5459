//! `alagg down`: clean up after an `alagg up` that crashed or was killed.

use std::path::Path;

use anyhow::bail;

use crate::{
    config::Config,
    host::{HostSetup, Recovery, journal_path, recover},
};

/// Removes what an `alagg up` for the configuration at `path` that crashed or was killed left
/// behind.
pub fn down(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    super::require_root()?;
    let tun = &config.tun.name;
    let journal = journal_path(tun);
    let mut done = Vec::new();
    match recover(&journal)? {
        Recovery::Live { pid } => bail!(
            "alagg is running for {} (pid {pid}); stop it with `kill {pid}` (SIGTERM), it cleans \
             up after itself",
            path.display()
        ),
        Recovery::Clean => {}
        Recovery::Undone { changes, errors } => {
            done.push(format!("undid {changes} recorded change(s)"));
            for error in errors {
                eprintln!("alagg: warning: {error}");
            }
        }
    }
    if crate::netdev::exists(tun) {
        // A TUN device alagg creates lives only as long as its process: one that exists
        // belongs to a live process.
        bail!("TUN device {tun} exists: an alagg (or another program) still runs with it");
    }
    let mut host = HostSetup::new();
    if host.remove_stale_capture(tun) {
        done.push(format!("removed capture rules of {tun}"));
    }
    for link in &config.links {
        match detach_stale_xdp(&link.interface) {
            Ok(true) => done.push(format!("detached XDP from {}", link.interface)),
            Ok(false) => {}
            Err(error) => eprintln!("alagg: warning: {}: {error}", link.interface),
        }
    }
    if done.is_empty() {
        println!("nothing to clean up for {}", path.display());
    } else {
        println!(
            "cleaned up after alagg for {}: {}",
            path.display(),
            done.join("; ")
        );
    }
    Ok(())
}
/// Detaches an XDP program named `alagg` that a netlink attachment left on `interface` (bpf_link
/// attachments end with their process by themselves). Returns whether one was there.
fn detach_stale_xdp(interface: &str) -> anyhow::Result<bool> {
    let output = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", interface])
        .output()?;
    let shown = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !shown.contains("prog/xdp") || !shown.contains("name alagg") {
        return Ok(false);
    }
    for mode in ["xdp", "xdpgeneric"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", interface, mode, "off"])
            .status();
    }
    Ok(true)
}
