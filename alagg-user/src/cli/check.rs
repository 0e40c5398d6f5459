//! `alagg check`: validate a configuration and this host, and print the plan.

use std::path::Path;

use anyhow::bail;

use crate::config::{Config, IoMode};

/// Validates the configuration at `path` and this host, and prints what `up` would do.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!(
        "{} is valid. alagg up would:\n{}",
        path.display(),
        config.plan()
    );
    let mut problems = Vec::new();
    match &config.auth {
        Some(auth) => {
            if let Err(error) = crate::config::key::read_key(&auth.key_file) {
                problems.push(error.to_string());
            }
        }
        None => println!(
            "note: frames are not authenticated: anyone who can put a frame on a link can \
             inject packets into this host; add [auth] with a key from `alagg genkey`"
        ),
    }
    let (memory, warnings) = super::judge_memory(&config, super::HostMemory::this_machine());
    problems.extend(memory);
    for warning in warnings
        .into_iter()
        .chain(super::judge_frames(&config, super::interface_mtu))
    {
        println!("warning: {warning}");
    }
    if !crate::sys::is_root() {
        problems.push("not running as root: `alagg up` needs root (CAP_NET_ADMIN, CAP_BPF)".into());
    }
    for link in &config.links {
        match crate::netdev::attribute(&link.interface, "operstate") {
            Err(_) => problems.push(format!(
                "link {}: no such interface (check `ip link`)",
                link.interface
            )),
            Ok(state) if state.trim() == "down" => problems.push(format!(
                "link {}: interface is down (`ip link set {} up`)",
                link.interface, link.interface
            )),
            Ok(_) => {
                let queues = crate::netdev::queues(&link.interface);
                let workers = usize::from(config.capture.queues);
                if link.io == IoMode::Xdp && workers > queues {
                    problems.push(format!(
                        "link {}: capture.queues = {workers} needs a queue per capture worker, \
                         the interface has {queues} (`ethtool -L`, or io = \"af_packet\")",
                        link.interface
                    ));
                }
            }
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        problems.push("/dev/net/tun is missing: load the tun module".into());
    }
    for tool in ["ip", "iptables", "ip6tables"] {
        let version = std::process::Command::new(tool)
            .arg("-V")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        match version {
            None => problems.push(format!(
                "`{tool}` is not installed (Debian: iproute2, iptables)"
            )),
            Some(version) if tool == "iptables" => println!("capture rules: {}", backend(&version)),
            Some(_) => {}
        }
    }
    if config.tun.coalesce && !crate::deliver::tun::gso_udp_supported() {
        println!(
            "note: UDP coalescing (tun.coalesce) needs Linux 6.9 or later; on this kernel ({}) \
             every packet is written to the TUN alone",
            crate::deliver::tun::kernel_release()
        );
    }
    if problems.is_empty() {
        println!("host: ready");
        Ok(())
    } else {
        bail!("the host is not ready:\n  {}", problems.join("\n  "))
    }
}

/// What `iptables -V` says of the backend capture rules go through. alagg uses iptables either
/// way: this kernel's nftables has no `queue` statement of its own to capture with.
fn backend(version: &str) -> String {
    if version.contains("nf_tables") {
        format!("{version}: iptables on nftables (`nft list ruleset` shows them)")
    } else if version.contains("legacy") {
        format!("{version}: legacy iptables (`iptables-save` shows them)")
    } else {
        format!("{version}: iptables of an unknown backend")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iptables_backend_is_named() {
        let nft = backend("iptables v1.8.9 (nf_tables)");
        assert!(nft.contains("on nftables"), "{nft}");
        let legacy = backend("iptables v1.8.7 (legacy)");
        assert!(legacy.contains("legacy iptables"), "{legacy}");
        assert!(backend("iptables v1.4.21").contains("unknown backend"));
    }
}
