//! The `[auth]` key file: one line, the base64 (RFC 4648, standard alphabet) of a 32-byte site
//! key, as `alagg genkey` prints it, like `wg genkey`. Refused unless it is a regular file of
//! mode 0600 or stricter owned by root, holding exactly one valid key.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use alagg_proto::auth::{KEY_LEN, SiteKey};
use base64::{Engine as _, engine::general_purpose::STANDARD};

/// Why a key file is refused; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error(
        "[auth] key_file {path}: {source} (create it with `(umask 077; alagg genkey > {path})`)"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file.
    #[error("[auth] key_file {path} is not a regular file")]
    NotAFile {
        /// The file.
        path: String,
    },
    /// Readable or writable by others than its owner.
    #[error(
        "[auth] key_file {path} has mode {mode:04o}: others can read the key; `chmod 600 {path}`"
    )]
    Mode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Not owned by root.
    #[error("[auth] key_file {path} is owned by uid {uid}, not root: `chown root: {path}`")]
    Owner {
        /// The file.
        path: String,
        /// Its owner.
        uid: u32,
    },
    /// Not exactly one valid key.
    #[error(
        "[auth] key_file {path}: {what}; it must hold one line, the base64 of 32 bytes, as `alagg genkey` prints it"
    )]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// Reads and checks the key file at `path`.
pub fn read_key(path: &Path) -> Result<SiteKey, KeyError> {
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile { path: shown });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode { path: shown, mode });
    }
    if meta.uid() != 0 {
        return Err(KeyError::Owner {
            path: shown,
            uid: meta.uid(),
        });
    }
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_key(&text).map_err(|what| KeyError::Content { path: shown, what })
}

/// The key in a key file's text: exactly one non-empty line, the base64 of [`KEY_LEN`] bytes.
fn parse_key(text: &str) -> Result<SiteKey, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines.next().ok_or("it is empty")?;
    if lines.next().is_some() {
        return Err("it holds more than one line".into());
    }
    let bytes = STANDARD
        .decode(line)
        .map_err(|e| format!("not base64 ({e})"))?;
    let key: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, not {KEY_LEN}", b.len()))?;
    if key.iter().all(|&b| b == 0) {
        return Err("the key is all zeros".into());
    }
    Ok(SiteKey::from_bytes(key))
}

/// A new random key as a key file holds it: base64 of 32 bytes from the kernel's random source.
pub fn generate() -> Option<String> {
    let mut key = [0u8; KEY_LEN];
    crate::sys::random_bytes(&mut key).then(|| STANDARD.encode(key))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_bad_contents_are_named() {
        let key = generate().unwrap();
        assert_eq!(key.len(), 44);
        assert!(parse_key(&format!("{key}\n")).is_ok());
        assert_ne!(generate(), Some(key.clone()));
        for (text, what) in [
            ("", "empty"),
            ("\n  \n", "empty"),
            ("not base64!", "not base64"),
            ("AAAA", "3 bytes"),
            (&format!("{key}\n{key}\n"), "more than one line"),
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "all zeros"),
        ] {
            let error = parse_key(text).err().unwrap_or_default();
            assert!(error.contains(what), "{text:?}: {error}");
        }
    }

    #[test]
    fn files_others_can_read_or_that_are_not_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("alagg-key-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("site.key");
        fs::write(&path, generate().unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_key(&path).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let result = read_key(&path);
        if crate::sys::is_root() {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert!(result.unwrap_err().to_string().contains("not root"));
        }
        assert!(matches!(read_key(&dir), Err(KeyError::NotAFile { .. })));
        let missing = read_key(&dir.join("none")).unwrap_err().to_string();
        assert!(missing.contains("alagg genkey"), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
