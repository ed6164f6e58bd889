//! Development mode's secrets: an admin token and an encryption key generated once and kept in a
//! file only its owner can read, so that `cargo run` needs nothing but PostgreSQL.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::{GlobalArgs, admin_token};
use crate::{domain::token::IssuedToken, vault::MasterKey};

/// Where development secrets live unless told otherwise.
pub fn default_dev_secrets_file() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    match state {
        Some(dir) => dir.join("llm-registry").join("dev-secrets.env"),
        None => PathBuf::from(".llm-registry-dev-secrets.env"),
    }
}

/// Development secrets from the secrets file, created on first use.
pub(super) fn development_secrets(global: &GlobalArgs) -> anyhow::Result<DevSecrets> {
    let path = global
        .dev_secrets_file
        .clone()
        .unwrap_or_else(default_dev_secrets_file);
    let stored = load_or_create_secrets_file(&path)?;
    tracing::warn!(
        secrets_file = %path.display(),
        "DEVELOPMENT MODE: generated secrets, defaults everywhere. NOT FOR PRODUCTION \
         (use --mode production with DATABASE_URL, ADMIN_TOKEN and ENCRYPTION_KEY)"
    );
    Ok(stored)
}

pub(super) struct DevSecrets {
    pub(super) admin_token: Zeroizing<String>,
    pub(super) encryption_key: MasterKey,
}

#[allow(
    clippy::disallowed_methods,
    reason = "start-up, before anything is served: a small private file read once"
)]
fn load_or_create_secrets_file(path: &Path) -> anyhow::Result<DevSecrets> {
    if !path.exists() {
        create_secrets_file(path)?;
    }
    let metadata = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        // Someone loosened it; secrets must stay the owner's.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
        tracing::warn!(file = %path.display(), "secrets file was readable by others; reset to 0600");
    }
    let contents = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let value = |key: &str| {
        contents
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .map(|v| Zeroizing::new(v.trim().to_owned()))
    };
    let (Some(token), Some(key)) = (value("ADMIN_TOKEN"), value("ENCRYPTION_KEY")) else {
        bail!(
            "{} lacks ADMIN_TOKEN or ENCRYPTION_KEY; delete it to have new secrets generated",
            path.display()
        );
    };
    if let Err(problem) = admin_token(&token) {
        bail!("{problem} (in {})", path.display());
    }
    let encryption_key = MasterKey::from_base64(&key)
        .map_err(|e| anyhow::anyhow!("ENCRYPTION_KEY in {} {e}", path.display()))?;
    Ok(DevSecrets {
        admin_token: token,
        encryption_key,
    })
}

fn create_secrets_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = IssuedToken::generate();
    let key = MasterKey::generate();
    let contents = Zeroizing::new(format!(
        "# llm-registry development secrets. Generated once; not for production.\n\
         ADMIN_TOKEN={}\nENCRYPTION_KEY={}\n",
        token.reveal(),
        key.to_base64().as_str()
    ));
    // create_new: if another process created it first, keep theirs and read it.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(contents.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            file.sync_all()?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}
