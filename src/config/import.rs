//! The settings of `import-dhamps-vdb`: the source database, dhamps-vdb's encryption keys (from
//! the environment or files, never from a command-line value, which any user of the machine can
//! read in the process list), the source's time zone, and the registry side as `serve` has it.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::Args;
use zeroize::Zeroizing;

use super::{KeyArgs, SecretText};
use crate::import::ImportOptions;

/// The environment variable that holds dhamps-vdb's `ENCRYPTION_KEY`.
pub const DHAMPS_KEY_VARIABLE: &str = "DHAMPS_ENCRYPTION_KEY";

#[derive(Debug, Clone, Args)]
pub struct ImportDhampsVdbArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// PostgreSQL URL of the dhamps-vdb database; only read, in a read-only transaction.
    #[arg(long, env = "DHAMPS_DATABASE_URL", hide_env_values = true)]
    pub source_url: SecretText,
    /// A file holding dhamps-vdb's ENCRYPTION_KEY (instead of the DHAMPS_ENCRYPTION_KEY
    /// environment variable); one trailing line break is ignored. Must not be readable by group
    /// or others.
    #[arg(long)]
    pub source_encryption_key_file: Option<PathBuf>,
    /// A file of older dhamps-vdb encryption keys that some rows may still be sealed under, one
    /// per line. Must not be readable by group or others.
    #[arg(long)]
    pub source_previous_keys_file: Option<PathBuf>,
    /// The time zone of dhamps-vdb's timestamps (they are stored without one), as PostgreSQL
    /// names zones, e.g. UTC or Europe/Berlin.
    #[arg(long, default_value = "UTC")]
    pub source_timezone: String,
    /// Do everything but commit: the report says what would be done, nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// The import's options; `environment_key` is the value of [`DHAMPS_KEY_VARIABLE`], if set.
pub fn import_options(
    args: &ImportDhampsVdbArgs,
    environment_key: Option<Zeroizing<String>>,
) -> anyhow::Result<ImportOptions> {
    let environment_key = environment_key.filter(|key| !key.is_empty());
    let current = match (environment_key, &args.source_encryption_key_file) {
        (Some(_), Some(_)) => {
            bail!("both {DHAMPS_KEY_VARIABLE} and --source-encryption-key-file are given: give one")
        }
        (Some(key), None) => Some(key),
        (None, Some(path)) => {
            let text = read_secret_file(path, "--source-encryption-key-file")?;
            let key = text
                .strip_suffix('\n')
                .map(|k| k.strip_suffix('\r').unwrap_or(k))
                .unwrap_or(&text);
            if key.is_empty() {
                bail!("--source-encryption-key-file {} is empty", path.display());
            }
            Some(Zeroizing::new(key.to_owned()))
        }
        (None, None) => None,
    };
    let mut source_keys: Vec<Zeroizing<String>> = current.into_iter().collect();
    if let Some(path) = &args.source_previous_keys_file {
        if source_keys.is_empty() {
            bail!(
                "--source-previous-keys-file needs the current key too ({DHAMPS_KEY_VARIABLE} or \
                 --source-encryption-key-file)"
            );
        }
        let text = read_secret_file(path, "--source-previous-keys-file")?;
        source_keys.extend(
            text.lines()
                .map(|line| line.strip_suffix('\r').unwrap_or(line))
                .filter(|line| !line.is_empty())
                .map(|line| Zeroizing::new(line.to_owned())),
        );
    }
    Ok(ImportOptions {
        source_url: Zeroizing::new(String::from(&*args.source_url)),
        source_keys,
        source_timezone: args.source_timezone.clone(),
        dry_run: args.dry_run,
    })
}

/// A file of secrets, refused when group or others may read it (as ssh refuses a private key).
fn read_secret_file(path: &Path, flag: &str) -> anyhow::Result<Zeroizing<String>> {
    let metadata = fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow::anyhow!("{flag} {}: no such file", path.display()),
        _ => anyhow::anyhow!("{flag} {}: {e}", path.display()),
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        bail!(
            "{flag} {} may be read by group or others (mode {:o}): chmod 600 it",
            path.display(),
            metadata.permissions().mode() & 0o777
        );
    }
    let bytes =
        Zeroizing::new(fs::read(path).with_context(|| format!("{flag} {}", path.display()))?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{flag} {} is not UTF-8 text", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::{Cli, Command};

    fn args(extra: &[&str]) -> ImportDhampsVdbArgs {
        let mut argv = vec![
            "llm-registry",
            "import-dhamps-vdb",
            "--source-url",
            "postgres://x/y",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Some(Command::ImportDhampsVdb(args)) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn private_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("llmr-import-{name}-{}", std::process::id()));
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn keys_come_from_the_environment_or_files_never_both() {
        let env_key = || Some(Zeroizing::new("from the environment".to_owned()));
        let options = import_options(&args(&[]), env_key()).unwrap();
        assert_eq!(options.source_keys.len(), 1);
        assert_eq!(options.source_timezone, "UTC");

        let current = private_file("current", "from a file\r\n");
        let previous = private_file("previous", "older one\n\nolder two\n");
        let (current_arg, previous_arg) = (current.to_str().unwrap(), previous.to_str().unwrap());
        let both = args(&["--source-encryption-key-file", current_arg]);
        assert!(
            import_options(&both, env_key())
                .unwrap_err()
                .to_string()
                .contains("give one")
        );
        let from_files = args(&[
            "--source-encryption-key-file",
            current_arg,
            "--source-previous-keys-file",
            previous_arg,
        ]);
        let keys: Vec<String> = import_options(&from_files, None)
            .unwrap()
            .source_keys
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys, ["from a file", "older one", "older two"]);
        let previous_alone = args(&["--source-previous-keys-file", previous_arg]);
        assert!(
            import_options(&previous_alone, None)
                .unwrap_err()
                .to_string()
                .contains("needs the current key")
        );
        let _ = fs::remove_file(current);
        let _ = fs::remove_file(previous);
    }
}
