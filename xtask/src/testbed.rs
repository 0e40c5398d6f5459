//! `cargo xtask testbed up|down`: the tests' testbed ([`alagg_testbed::Testbed`]) as a lasting
//! one, for trying `alagg up` by hand, the demo and benchmarks.
//!
//! `up` makes the namespaces `alaggbed-a`, `alaggbed-b` and `alaggbed-wire`, writes both hosts'
//! alagg configurations under `target/testbed/`, and leaves everything in place when it exits;
//! `down` removes it all. `target/testbed/testbed.txt` (what `up` printed) is written last and
//! marks a finished bed: namespaces without it were left by an interrupted `up`, and the next
//! `up` removes them and starts again.

use std::{fmt::Write as _, fs, path::PathBuf};

use alagg_testbed::{Host, Testbed, bed::format_mac};
use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::root;

/// Prefix of the lasting bed's namespace names.
const PREFIX: &str = "alaggbed";

/// What to do with the testbed.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Make two hosts joined by N links through a wire namespace, with alagg configurations for
    /// both, and leave them in place. Needs root.
    Up {
        /// Number of links.
        #[arg(long, default_value_t = 3)]
        links: usize,
        /// Remove an existing testbed and make a new one.
        #[arg(long)]
        force: bool,
    },
    /// Remove the testbed, killing whatever runs in it. Needs root.
    Down,
}

/// Runs `action`.
pub fn run(action: Action) -> anyhow::Result<()> {
    if !alagg_testbed::is_root() {
        bail!("the testbed is made of network namespaces: run `cargo xtask testbed` as root");
    }
    match action {
        Action::Up { links, force } => up(links, force),
        Action::Down => down(),
    }
}

/// Where `up` writes the configurations and the summary.
fn dir() -> PathBuf {
    root().join("target").join("testbed")
}

fn summary_path() -> PathBuf {
    dir().join("testbed.txt")
}

fn up(links: usize, force: bool) -> anyhow::Result<()> {
    let names = Testbed::named_namespaces(PREFIX);
    let existing = names
        .iter()
        .filter(|name| alagg_testbed::Netns::exists(name))
        .count();
    if existing > 0 {
        let summary = fs::read_to_string(summary_path()).ok();
        match summary {
            Some(summary) if existing == names.len() && !force => {
                print!("{summary}");
                println!(
                    "\nThe testbed is already up (above). `cargo xtask testbed up --force` \
                     makes a new one, `cargo xtask testbed down` removes it."
                );
                return Ok(());
            }
            Some(_) if existing == names.len() => {
                println!("Removing the existing testbed (--force).");
            }
            _ => println!("Removing a half-made testbed that an interrupted `up` left."),
        }
        remove()?;
    }

    let bed = Testbed::named(PREFIX, links)
        .with_context(|| format!("making a testbed of {links} links"))?;
    let (config_a, config_b) = bed
        .write_configs(&dir())
        .context("writing the testbed's alagg configurations")?;
    let summary = describe(&bed, &config_a, &config_b);
    bed.persist();
    // Written last: its presence says the bed is complete.
    fs::write(summary_path(), &summary)
        .with_context(|| format!("writing {}", summary_path().display()))?;
    print!("{summary}");
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let removed = remove()?;
    if removed == 0 {
        println!("No testbed to remove (no {PREFIX}-* namespaces).");
    } else {
        println!(
            "Removed the testbed: {}.",
            Testbed::named_namespaces(PREFIX).join(", ")
        );
    }
    Ok(())
}

/// Removes the namespaces, the configurations and the summary; returns how many namespaces
/// there were.
fn remove() -> anyhow::Result<usize> {
    let removed = Testbed::remove_named(PREFIX).context("removing the testbed's namespaces")?;
    for file in ["testbed.txt", "a.toml", "b.toml"] {
        let path = dir().join(file);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(removed)
}

/// What `up` made, and how to use it.
fn describe(bed: &Testbed, config_a: &std::path::Path, config_b: &std::path::Path) -> String {
    let links = bed.links();
    let mut text = format!("alagg testbed: hosts A and B joined by {links} link(s)\n\n");
    for host in [Host::A, Host::B] {
        let _ = writeln!(
            text,
            "host {}: namespace {}, service addresses {}/32 and {}/128 on lo",
            host.letter().to_uppercase(),
            bed.host(host).name(),
            host.v4(),
            host.v6(),
        );
    }
    let _ = writeln!(
        text,
        "wire:   namespace {}, one bridge br<i> per link, impairments (nft table `bridge alagg`, tbf)\n",
        bed.wire.name()
    );
    for link in 0..links {
        let interface = bed.interface(link);
        let _ = writeln!(
            text,
            "link {link}: A {interface} {}  <->  wire a{link} - br{link} - b{link}  <->  B {interface} {}",
            format_mac(Testbed::mac(Host::A, link)),
            format_mac(Testbed::mac(Host::B, link)),
        );
    }
    let binary = root().join("target").join("release").join("alagg");
    let [a, b, wire] = [&bed.a, &bed.b, &bed.wire].map(|netns| netns.name().to_owned());
    let _ = write!(
        text,
        "\nalagg configurations:\n  {config_a}\n  {config_b}\n\
         \nRun alagg on both hosts (build it first: `cargo xtask build --release`):\n\
         \x20 sudo ip netns exec {a} {binary} up --config {config_a}\n\
         \x20 sudo ip netns exec {b} {binary} up --config {config_b}\n\
         then talk between the service addresses:\n\
         \x20 sudo ip netns exec {a} ping {b_v4}\n\
         \x20 sudo ip netns exec {a} ping {b_v6}\n\
         \nImpair link 0 (both directions; the same for any link i):\n\
         \x20 loss 10 %:  sudo ip netns exec {wire} nft 'flush chain bridge alagg loss0; add rule bridge alagg loss0 numgen random mod 100 < 10 drop'\n\
         \x20 no loss:    sudo ip netns exec {wire} nft flush chain bridge alagg loss0\n\
         \x20 10 Mbit/s:  for p in a0 b0; do sudo ip netns exec {wire} tc qdisc replace dev $p root tbf rate 10mbit burst 12500 latency 50ms; done\n\
         \x20 no limit:   for p in a0 b0; do sudo ip netns exec {wire} tc qdisc del dev $p root; done\n\
         \x20 cut:        sudo ip netns exec {wire} nft add rule bridge alagg cut0 drop\n\
         \x20 heal:       sudo ip netns exec {wire} nft flush chain bridge alagg cut0\n\
         \x20 no carrier: sudo ip netns exec {wire} ip link set a0 down   (and `up` again)\n\
         \nRemove it all: cargo xtask testbed down\n",
        config_a = config_a.display(),
        config_b = config_b.display(),
        binary = binary.display(),
        b_v4 = Host::B.v4(),
        b_v6 = Host::B.v6(),
    );
    text
}
