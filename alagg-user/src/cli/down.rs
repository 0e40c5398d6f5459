//! `alagg down`: clean up after an `alagg up` that crashed or was killed.

use std::path::Path;

use anyhow::bail;

use crate::{
    config::Config,
    host::{HostSetup, Recovery, journal_path, lock_path, recover},
};

/// Removes what an `alagg up` for the configuration at `path` that crashed or was killed left
/// behind.
pub fn down(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    super::require_root()?;
    let tun = &config.tun.name;
    let journal = journal_path(tun);
    let mut done = Vec::new();
    let mut left = 0;
    // Held to the end: no `alagg up` for this TUN starts while this cleans up.
    let _lock = match recover(&journal)? {
        Recovery::Live { pid } => match pid {
            Some(pid) => bail!(
                "alagg is running for {} (pid {pid}); stop it with `kill {pid}` (SIGTERM), it \
                 cleans up after itself",
                path.display()
            ),
            None => bail!(
                "alagg is running for {} (it holds {}); stop it with SIGTERM, it cleans up \
                 after itself",
                path.display(),
                lock_path(&journal).display()
            ),
        },
        Recovery::Clean(lock) => lock,
        Recovery::Undone {
            changes,
            errors,
            left: failed,
            lock,
        } => {
            done.push(format!(
                "undid {} of {changes} recorded change(s)",
                changes - failed.len()
            ));
            for error in errors {
                eprintln!("alagg: warning: {error}");
            }
            left = failed.len();
            lock
        }
    };
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
    if left > 0 {
        bail!(
            "{left} change(s) could not be undone (see the warnings above); they stay in {}: \
             fix the cause and run `alagg down` again{}",
            journal.display(),
            if done.is_empty() {
                String::new()
            } else {
                format!(" (done: {})", done.join("; "))
            }
        );
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
