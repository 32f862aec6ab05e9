//! Where the admin key comes from: the config (or `HERALD_ADMIN_KEY`), else
//! `<data_dir>/admin.key`, generated on first start with owner-only permissions. The key is
//! printed once, when it is generated, and never logged.

use std::io::Write;
use std::path::Path;

use herald_core::secret;

/// The admin key and whether it was just generated (the caller prints it once).
pub struct AdminKey {
    pub key: String,
    pub generated: bool,
}

pub fn load_or_generate(configured: &str, data_dir: &Path) -> std::io::Result<AdminKey> {
    if !configured.is_empty() {
        return Ok(AdminKey {
            key: configured.to_string(),
            generated: false,
        });
    }
    let path = data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= crate::config::MIN_ADMIN_KEY_LEN => {
            return Ok(AdminKey {
                key: s.trim().to_string(),
                generated: false,
            });
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is shorter than 12 characters: fix or delete it",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let key = secret::new_admin_key();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&path)?;
    file.write_all(key.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(AdminKey {
        key,
        generated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate("", dir.path()).unwrap();
        assert!(first.generated);
        assert!(first.key.len() >= 32);
        assert!(first.key.starts_with(secret::ADMIN_KEY_PREFIX));
        let again = load_or_generate("", dir.path()).unwrap();
        assert!(!again.generated);
        assert_eq!(again.key, first.key);
        let configured = load_or_generate("configured-key-123456", dir.path()).unwrap();
        assert_eq!(configured.key, "configured-key-123456");
    }
}
