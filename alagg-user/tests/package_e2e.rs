//! The Debian package (`cargo xtask package`, issue 15) holds every file it should, with the
//! right modes, and what it installs runs: the packaged `alagg` prints its version and passes
//! `alagg check` on the packaged example configuration in a network namespace that has the
//! example's interfaces, every man page renders without a warning, and the bash completion
//! completes; purging it removes every file and the instances' `enable` links. It is installed
//! with `dpkg --root` into a scratch directory with a dpkg database of its own (maintainer
//! scripts run outside a chroot, with `$DPKG_ROOT` set), never into the host's /usr; the
//! scratch directory and the namespaces go when the test ends, failed or not.
//!
//! Which package: `ALAGG_DEB` when set (`cargo xtask test` builds one from the debug binary and
//! sets it), else the newest `target/debian/alagg_*.deb` that `cargo xtask package` wrote. With
//! neither the test says so and is not run, unless `CI` is set, where it fails.
#![expect(clippy::unwrap_used, reason = "test code panics with a message")]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use alagg_testbed::{Netns, veth};

/// Every regular file the package holds (path, mode as `dpkg-deb --contents` shows it). A file
/// added to `[package.metadata.deb]` must be added here, and one that goes missing fails.
const FILES: &[(&str, &str)] = &[
    ("usr/bin/alagg", "-rwxr-xr-x"),
    ("usr/lib/systemd/system/alagg@.service", "-rw-r--r--"),
    ("usr/share/bash-completion/completions/alagg", "-rw-r--r--"),
    ("usr/share/doc/alagg/README.md", "-rw-r--r--"),
    ("usr/share/doc/alagg/changelog.Debian.gz", "-rw-r--r--"),
    ("usr/share/doc/alagg/copyright", "-rw-r--r--"),
    (
        "usr/share/doc/alagg/examples/alagg.example.toml",
        "-rw-r--r--",
    ),
    ("usr/share/doc/alagg/examples/site-a.toml", "-rw-r--r--"),
    ("usr/share/doc/alagg/examples/site-b.toml", "-rw-r--r--"),
    (
        "usr/share/fish/vendor_completions.d/alagg.fish",
        "-rw-r--r--",
    ),
    ("usr/share/lintian/overrides/alagg", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-attach.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-check.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-down.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-genkey.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-reload.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-status.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg-up.8.gz", "-rw-r--r--"),
    ("usr/share/man/man8/alagg.8.gz", "-rw-r--r--"),
    ("usr/share/zsh/vendor-completions/_alagg", "-rw-r--r--"),
];

/// Files the package takes from the repository as they are.
const COPIED: &[(&str, &str)] = &[
    (
        "usr/lib/systemd/system/alagg@.service",
        "config/alagg@.service",
    ),
    (
        "usr/share/doc/alagg/examples/alagg.example.toml",
        "config/alagg.example.toml",
    ),
    (
        "usr/share/doc/alagg/examples/site-a.toml",
        "config/site-a.toml",
    ),
    (
        "usr/share/doc/alagg/examples/site-b.toml",
        "config/site-b.toml",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A directory removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("alagg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The package to test, or `None` (with one line saying why) outside CI when there is none.
fn package() -> Option<PathBuf> {
    if let Some(deb) = std::env::var_os("ALAGG_DEB").filter(|deb| !deb.is_empty()) {
        let deb = PathBuf::from(deb);
        assert!(deb.is_file(), "ALAGG_DEB={} is no file", deb.display());
        return Some(deb);
    }
    let newest = fs::read_dir(workspace().join("target/debian"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("alagg_") && name.ends_with(".deb")
        })
        .max_by_key(|path| fs::metadata(path).and_then(|m| m.modified()).ok());
    if newest.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no package to test in CI: `cargo xtask test` builds one and sets ALAGG_DEB"
        );
        eprintln!(
            "NOT RUN: no target/debian/alagg_*.deb and no ALAGG_DEB: run `cargo xtask package`"
        );
    }
    newest
}

/// Runs `command`, panicking with its output unless it succeeds; returns its output.
fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The regular files `dpkg-deb --contents` lists, with their modes; every entry owned by root
/// (cargo-deb writes ids, `dpkg-deb --build` names).
fn contents(deb: &Path) -> BTreeMap<String, String> {
    let listing = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(deb)));
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        // -rw-r--r-- 0/0  1211 2026-12-04 00:00 ./usr/share/man/man8/alagg.8.gz
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, _size, _date, _time, path, ..] = fields[..] else {
            panic!("unexpected dpkg-deb --contents line: {line}");
        };
        assert!(
            owner == "0/0" || owner == "root/root",
            "not owned by root: {line}"
        );
        if mode.starts_with('-') {
            files.insert(path.trim_start_matches("./").to_owned(), mode.to_owned());
        }
    }
    files
}

#[test]
fn the_package_holds_every_file_and_what_it_installs_runs() {
    alagg_testbed::require_root!();
    let Some(deb) = package() else {
        return;
    };
    eprintln!("testing {}", deb.display());

    let files = contents(&deb);
    let expected: BTreeMap<String, String> = FILES
        .iter()
        .map(|&(path, mode)| (path.to_owned(), mode.to_owned()))
        .collect();
    assert_eq!(files, expected, "the package's files and modes");

    let field = |name: &str| {
        stdout(&run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)))
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "alagg");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Section"), "net");
    let depends = field("Depends");
    for needed in ["libc6", "libelf1", "zlib1g", "iproute2", "iptables"] {
        assert!(
            depends.contains(needed),
            "Depends lacks {needed}: {depends}"
        );
    }

    let scratch = Scratch::new("package");
    let root = scratch.0.join("root");
    let control = scratch.0.join("DEBIAN");
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--log=/dev/null"])
            .args(args))
    };
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The scratch database has none of the dependencies.
    dpkg(&["--force-depends", "--install", deb.to_str().unwrap()]);
    let listed = stdout(&dpkg(&["--listfiles", "alagg"]));
    assert!(listed.lines().any(|l| l == "/usr/bin/alagg"), "{listed}");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("#DEBHELPER#"), "{script}: token left");
    }

    for (packaged, source) in COPIED {
        assert_eq!(
            fs::read(root.join(packaged)).unwrap(),
            fs::read(workspace().join(source)).unwrap(),
            "{packaged} differs from {source}"
        );
    }
    // The unit runs the packaged binary.
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/alagg@.service")).unwrap();
    let execs: Vec<&str> = unit
        .lines()
        .filter(|line| line.starts_with("Exec"))
        .collect();
    assert_eq!(execs.len(), 4, "{unit}");
    for line in execs {
        assert!(line.contains("=/usr/bin/alagg "), "{line}");
    }
    let changelog = stdout(&run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/doc/alagg/changelog.Debian.gz"))));
    assert!(
        changelog.starts_with(&format!("alagg ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "alagg-user/debian/changelog has no entry for this version first: {changelog:.80}"
    );

    let alagg = root.join("usr/bin/alagg");
    let version = stdout(&run(Command::new(&alagg).arg("--version")));
    assert_eq!(version, format!("alagg {}\n", env!("CARGO_PKG_VERSION")));

    // `alagg check` on the packaged example, in a namespace with its links (eth1 and eth2, up,
    // their peers in a second namespace): the file is valid and the host ready.
    let host = Netns::new("pkg").unwrap();
    let peer = Netns::new("pkg-peer").unwrap();
    for (link, interface) in ["eth1", "eth2"].into_iter().enumerate() {
        veth(
            &host,
            interface,
            &format!("02:a1:a9:0e:00:{link:02x}"),
            &peer,
            interface,
            &format!("02:a1:a9:0e:01:{link:02x}"),
        )
        .unwrap();
    }
    let example = root.join("usr/share/doc/alagg/examples/alagg.example.toml");
    let check = run(host
        .command(alagg.to_str().unwrap())
        .args(["check", "--config"])
        .arg(&example));
    let said = stdout(&check);
    assert!(
        said.contains("is valid") && said.contains("host: ready"),
        "{said}"
    );

    // Every man page renders, with groff's warnings on, and says what its command is.
    let man_dir = root.join("usr/share/man/man8");
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 8, "{pages:?}");
    let man = has("man");
    assert!(
        man || std::env::var_os("CI").is_none(),
        "man is missing in CI: `cargo xtask bootstrap` installs man-db"
    );
    for page in &pages {
        let name = page
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".8.gz")
            .to_owned();
        if !man {
            let roff = stdout(&run(Command::new("gzip").arg("-dc").arg(page)));
            assert!(roff.contains(".TH "), "{name}: no roff title");
            continue;
        }
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-P", "cat", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8"));
        // Words, as man justifies lines with extra spaces.
        let text = stdout(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{name}: {warnings}");
        assert!(
            text.contains("NAME") && text.contains(&format!("{name} - ")),
            "{name}: no NAME line:\n{text}"
        );
        assert!(text.contains("SEE ALSO"), "{name}:\n{text}");
        if name != "alagg" && name != "alagg-genkey" {
            assert!(
                text.contains("--config") || text.contains("--interface"),
                "{name}:\n{text}"
            );
        }
    }

    // The bash completion, sourced, completes the subcommands (not the hidden `steal`) and
    // `up`'s options.
    let completion = root.join("usr/share/bash-completion/completions/alagg");
    let complete = |words: &str| {
        let script = format!(
            "source \"$1\"; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _alagg alagg \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = run(Command::new("bash")
            .args(["-c", &script, "bash"])
            .arg(&completion));
        stdout(&out)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    let subcommands = complete("alagg ''");
    for sub in [
        "up", "down", "reload", "status", "check", "genkey", "attach",
    ] {
        assert!(
            subcommands.iter().any(|w| w == sub),
            "{sub}: {subcommands:?}"
        );
    }
    assert!(!subcommands.iter().any(|w| w == "steal"), "{subcommands:?}");
    let options = complete("alagg up --c");
    assert_eq!(options, ["--config"], "alagg up --c<TAB>");

    // Purging removes every file the package installed, and the links `systemctl enable
    // alagg@NAME` made (a stand-in here).
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/alagg@.service",
        wants.join("alagg@site.service"),
    )
    .unwrap();
    dpkg(&["--purge", "alagg"]);
    let left: Vec<String> = FILES
        .iter()
        .map(|(path, _)| *path)
        .filter(|path| root.join(path).exists())
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(
        fs::symlink_metadata(wants.join("alagg@site.service")).is_err(),
        "the enable link outlived the purge"
    );

    if has("lintian") {
        let out = Command::new("lintian")
            .args(["--fail-on", "error", "--tag-display-limit", "0"])
            .arg(&deb)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        eprintln!("lintian:\n{said}");
        assert!(out.status.success(), "lintian reports errors:\n{said}");
    } else {
        eprintln!("lintian not installed: its checks not run (optional)");
    }
}
