//! `alagg status`: a running instance's links and counters, like `wg show`.

use std::path::Path;

use crate::{
    config::{self, Config},
    ops::control,
};

/// Prints a running instance's counters (text, or JSON with `json`); the instance is found by
/// the configuration's TUN name, or `tun`, or the default.
pub fn status(config: Option<&Path>, tun: Option<String>, json: bool) -> anyhow::Result<()> {
    let tun = match (config, tun) {
        (Some(path), _) => Config::load(path)?.tun.name,
        (None, Some(tun)) => {
            config::check_interface_name(&tun).map_err(|e| anyhow::anyhow!("--tun: {e}"))?;
            tun
        }
        (None, None) => config::DEFAULT_TUN_NAME.to_owned(),
    };
    let snapshot = control::query(&control::socket_path(&tun))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        println!("{}", snapshot.render_text());
    }
    Ok(())
}
