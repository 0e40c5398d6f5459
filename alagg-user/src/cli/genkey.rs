//! `alagg genkey`: a new random key for `[auth] key_file`, like `wg genkey`.

use anyhow::bail;

/// Prints a new random key (base64 of 32 bytes) on standard output.
pub fn genkey() -> anyhow::Result<()> {
    let Some(key) = crate::config::key::generate() else {
        bail!("the kernel's random source (getrandom) failed; no key was made");
    };
    println!("{key}");
    Ok(())
}
