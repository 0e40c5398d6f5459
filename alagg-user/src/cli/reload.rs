//! `alagg reload`: a changed configuration applied to a running instance (SIGHUP).

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::{config::Config, ops::control};

/// Checks `path`, finds the instance running from it (by its TUN name, over the control
/// socket), and asks it to read the file again.
pub fn reload(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let socket = control::socket_path(&config.tun.name);
    let snapshot = control::query(&socket)
        .with_context(|| format!("no alagg running with TUN {} to reload", config.tun.name))?;
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if Path::new(&snapshot.config) != file {
        bail!(
            "the alagg on TUN {} runs from {}, not {}: it reads its own file again on reload, so \
             change that one (or restart it with this one)",
            config.tun.name,
            snapshot.config,
            file.display()
        );
    }
    let pid = i32::try_from(snapshot.pid).context("the instance's pid")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling alagg (pid {pid}) to reload"));
    }
    println!(
        "asked alagg (pid {pid}, TUN {}) to reload {}: [scheduler] changes apply at once; \
         changes to other tables are refused (its log says which)",
        config.tun.name,
        file.display()
    );
    Ok(())
}
