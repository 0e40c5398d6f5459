//! Man pages and shell completions of `alagg`, generated from the clap definition the binary
//! parses with (`alagg::cli::command()`), so they never disagree with `--help`.
//!
//! Only an xtask built with the `docs` feature has the generators (see xtask/Cargo.toml for why
//! that is a feature); `cargo xtask package` runs such a build as `xtask docs DIR`.

use std::path::Path;

/// The man pages' section: alagg is a daemon run by root (`man 7 man-pages`: section 8,
/// system administration commands).
#[cfg(feature = "docs")]
const SECTION: &str = "8";

/// Writes `DIR/man/alagg.8` and one page per visible subcommand (`alagg-up.8`, ...), and
/// `DIR/completions/{alagg.bash,_alagg,alagg.fish}`. Returns the files written.
#[cfg(feature = "docs")]
pub fn generate(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context as _;
    use clap_complete::Shell;

    let mut command = alagg::cli::command().disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();

    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let version = command.get_version().unwrap_or_default().to_owned();
    let pages = std::iter::once((command.clone(), None)).chain(
        command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(|sub| (sub.clone(), Some(sub.get_name().to_owned()))),
    );
    for (page, subcommand) in pages {
        let page = clap_mangen::Man::new(page)
            .section(SECTION)
            .source(format!("alagg {version}"))
            .manual("System Administration");
        let path = man.join(page.get_filename());
        let mut roff = Vec::new();
        page.render(&mut roff)
            .with_context(|| format!("rendering {}", path.display()))?;
        roff.extend_from_slice(see_also(&command, subcommand.as_deref()).as_bytes());
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }

    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    // clap_complete completes hidden subcommands too: complete from a copy without them.
    // (clap takes a version as a `&'static str`; this process ends soon.)
    let version: &'static str = Box::leak(version.into_boxed_str());
    let unbuilt = alagg::cli::command();
    let mut visible = clap::Command::new("alagg")
        .version(version)
        .args(unbuilt.get_arguments().cloned())
        .subcommands(
            unbuilt
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        );
    for (shell, name) in [
        (Shell::Bash, "alagg.bash"),
        (Shell::Zsh, "_alagg"),
        (Shell::Fish, "alagg.fish"),
    ] {
        let path = completions.join(name);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut visible, "alagg", &mut script);
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Without the `docs` feature: says how to get the generators.
#[cfg(not(feature = "docs"))]
pub fn generate(_dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    anyhow::bail!(
        "this xtask was built without the `docs` feature: run `cargo xtask package`, which \
         builds it with the feature"
    )
}

/// FILES (on the main page) and SEE ALSO sections in roff: where the package puts the
/// configuration, the unit and the runtime state, and the other pages.
#[cfg(feature = "docs")]
fn see_also(command: &clap::Command, subcommand: Option<&str>) -> String {
    let mut roff = String::new();
    if subcommand.is_none() {
        roff.push_str(
            ".SH FILES\n\
             .TP\n/etc/alagg/\\fINAME\\fR.toml\n\
             The configuration of the instance \\fINAME\\fR, run by \\fBsystemctl enable \\-\\-now \
             alagg@\\fINAME\\fR.\n\
             .TP\n/usr/share/doc/alagg/examples/alagg.example.toml\n\
             Every key with its default and what it means.\n\
             .TP\n/usr/lib/systemd/system/alagg@.service\n\
             The systemd unit template: \\fBalagg check\\fR, then \\fBalagg up\\fR, and \
             \\fBalagg down\\fR after a crash.\n\
             .TP\n/run/alagg/\n\
             Undo journals, locks and control sockets of running instances.\n",
        );
    }
    let own = subcommand.map_or_else(|| "alagg".to_owned(), |name| format!("alagg\\-{name}"));
    let others: Vec<String> = std::iter::once("alagg".to_owned())
        .chain(
            command
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .map(|sub| format!("alagg\\-{}", sub.get_name())),
        )
        .filter(|name| *name != own)
        .map(|name| format!("\\fB{name}\\fR({SECTION})"))
        .chain(["\\fBsystemd.service\\fR(5)".to_owned()])
        .collect();
    roff.push_str(".SH \"SEE ALSO\"\n");
    roff.push_str(&others.join(", "));
    roff.push('\n');
    roff
}

#[cfg(all(test, feature = "docs"))]
#[expect(clippy::unwrap_used, reason = "tests panic on failure by design")]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("alagg-docs-{}", std::process::id()));
        let written = generate(&dir).unwrap();
        let mut names: Vec<String> = written
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let pages: Vec<String> = std::fs::read_dir(dir.join("man"))
            .unwrap()
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect();
        let bash = std::fs::read_to_string(dir.join("completions/alagg.bash")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            names,
            [
                "_alagg",
                "alagg-attach.8",
                "alagg-check.8",
                "alagg-down.8",
                "alagg-genkey.8",
                "alagg-reload.8",
                "alagg-status.8",
                "alagg-up.8",
                "alagg.8",
                "alagg.bash",
                "alagg.fish",
            ],
            "the hidden `steal` and clap's `help` get no page"
        );
        for page in &pages {
            assert!(
                page.starts_with(".ie \\n(.g .ds Aq"),
                "not roff: {page:.80}"
            );
            assert!(page.contains(".TH alagg"), "no title: {page:.200}");
            assert!(
                page.contains(".SH \"SEE ALSO\""),
                "no SEE ALSO: {page:.200}"
            );
        }
        assert!(
            pages.iter().any(|p| p.contains(".SH FILES")),
            "no FILES on the main page"
        );
        assert!(bash.contains("complete -F _alagg"), "{bash:.200}");
        assert!(
            bash.contains("alagg,genkey") && !bash.contains("steal"),
            "{bash}"
        );
    }
}
