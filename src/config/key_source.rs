//! `KEY_SOURCE` and its settings turned into a [`KeySource`]: keys from the environment, from
//! files only their owner can read, or data keys wrapped by OpenBao/Vault transit. Problems name
//! the setting (and the file), never a key or a token.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use zeroize::Zeroizing;

use super::{KeyArgs, KeySourceKind, Mode};
use crate::{
    keys::KeySource,
    vault::{
        KeyRing, MasterKey,
        transit::{TokenSource, TransitSettings},
    },
};

/// The key source `keys` describe. `development_key` is development mode's stored key, the
/// primary of `KEY_SOURCE=env` when ENCRYPTION_KEY is not given (None in production). Every
/// problem is pushed, so that production's refusal lists them all.
pub(super) fn resolve(
    mode: Mode,
    keys: &KeyArgs,
    development_key: Option<MasterKey>,
    problems: &mut Vec<String>,
) -> Option<KeySource> {
    match keys.key_source {
        KeySourceKind::Env => env_ring(mode, keys, development_key, problems).map(KeySource::Ring),
        KeySourceKind::File => file_ring(keys, problems).map(KeySource::Ring),
        KeySourceKind::VaultTransit => vault_transit(keys, problems),
    }
}

/// ENCRYPTION_KEY (required in production) and ENCRYPTION_KEYS_PREVIOUS.
fn env_ring(
    mode: Mode,
    keys: &KeyArgs,
    development_key: Option<MasterKey>,
    problems: &mut Vec<String>,
) -> Option<KeyRing> {
    for (name, given) in [
        ("ENCRYPTION_KEY_FILE", keys.encryption_key_file.is_some()),
        (
            "ENCRYPTION_KEYS_PREVIOUS_FILE",
            keys.encryption_keys_previous_file.is_some(),
        ),
    ] {
        if given {
            problems.push(format!(
                "{name} is set but KEY_SOURCE is env: set KEY_SOURCE=file to read keys from files"
            ));
        }
    }
    let primary = match (
        keys.encryption_key.as_deref().filter(|k| !k.is_empty()),
        mode,
    ) {
        (Some(encoded), _) => MasterKey::from_base64(encoded)
            .map_err(|e| problems.push(format!("ENCRYPTION_KEY {e}")))
            .ok(),
        (None, Mode::Development) => development_key,
        (None, Mode::Production) => {
            problems.push(
                "ENCRYPTION_KEY is missing (make one with `openssl rand -base64 32`)".to_owned(),
            );
            None
        }
    };
    let previous = keys
        .encryption_keys_previous
        .as_deref()
        .map(|list| parse_list(list, "ENCRYPTION_KEYS_PREVIOUS", problems))
        .unwrap_or_default();
    ring(primary?, previous, problems)
}

/// ENCRYPTION_KEY_FILE (required) and ENCRYPTION_KEYS_PREVIOUS_FILE; keys in the environment
/// too would leave two places to look, so they are refused.
fn file_ring(keys: &KeyArgs, problems: &mut Vec<String>) -> Option<KeyRing> {
    refuse_environment_keys(keys, "file", problems);
    let primary = match &keys.encryption_key_file {
        None => {
            problems.push("KEY_SOURCE=file needs ENCRYPTION_KEY_FILE".to_owned());
            None
        }
        Some(path) => read_secret_file(path, "ENCRYPTION_KEY_FILE", problems).and_then(|text| {
            MasterKey::from_base64(&text)
                .map_err(|e| {
                    problems.push(format!(
                        "ENCRYPTION_KEY_FILE {}: the key {e}",
                        path.display()
                    ))
                })
                .ok()
        }),
    };
    let previous = previous_from_file(keys, problems);
    ring(primary?, previous, problems)
}

/// The transit settings, and static previous keys (ENCRYPTION_KEYS_PREVIOUS or its file) for
/// the move from `env`.
fn vault_transit(keys: &KeyArgs, problems: &mut Vec<String>) -> Option<KeySource> {
    if keys
        .encryption_key
        .as_deref()
        .is_some_and(|k| !k.is_empty())
        || keys.encryption_key_file.is_some()
    {
        problems.push(
            "KEY_SOURCE=vault-transit makes its own primary key: unset ENCRYPTION_KEY and \
             ENCRYPTION_KEY_FILE (give the old key as ENCRYPTION_KEYS_PREVIOUS until \
             `rotate-keys` has re-sealed everything)"
                .to_owned(),
        );
    }
    let mut previous = keys
        .encryption_keys_previous
        .as_deref()
        .map(|list| parse_list(list, "ENCRYPTION_KEYS_PREVIOUS", problems))
        .unwrap_or_default();
    previous.extend(previous_from_file(keys, problems));
    let address = match keys.vault_addr.as_deref().map(str::trim) {
        None | Some("") => {
            problems.push("KEY_SOURCE=vault-transit needs VAULT_ADDR".to_owned());
            None
        }
        Some(text) => match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            _ => {
                problems.push(format!(
                    "VAULT_ADDR {text:?} is not an http(s) URL (e.g. https://vault.internal:8200)"
                ));
                None
            }
        },
    };
    let token = match (&keys.vault_token_file, keys.vault_token.as_deref()) {
        (Some(path), _) => {
            // Checked here so that a readable-by-all file refuses the start; read again by the
            // client, and at every renewal.
            read_secret_file(path, "VAULT_TOKEN_FILE", problems)
                .map(|_| TokenSource::File(path.clone()))
        }
        (None, Some(token)) if !token.trim().is_empty() => {
            Some(TokenSource::Value(Zeroizing::new(token.trim().to_owned())))
        }
        (None, _) => {
            problems.push(
                "KEY_SOURCE=vault-transit needs VAULT_TOKEN_FILE (or VAULT_TOKEN)".to_owned(),
            );
            None
        }
    };
    let key = match keys.vault_transit_key.as_deref().map(str::trim) {
        None | Some("") => {
            problems.push("KEY_SOURCE=vault-transit needs VAULT_TRANSIT_KEY".to_owned());
            None
        }
        Some(name) if is_path_segment(name) => Some(name.to_owned()),
        Some(name) => {
            problems.push(format!(
                "VAULT_TRANSIT_KEY {name:?} may hold only letters, digits, '-', '_' and '.'"
            ));
            None
        }
    };
    let mount = keys.vault_transit_mount.trim().trim_matches('/').to_owned();
    if mount.is_empty() || !mount.split('/').all(is_path_segment) {
        problems.push(format!(
            "VAULT_TRANSIT_MOUNT {:?} must be a path of letters, digits, '-', '_' and '.'",
            keys.vault_transit_mount
        ));
    }
    let ca_pem = match &keys.vault_cacert {
        None => Some(None),
        Some(path) => match fs::read(path) {
            Ok(pem) => Some(Some(pem)),
            Err(e) => {
                problems.push(format!(
                    "VAULT_CACERT {} cannot be read: {e}",
                    path.display()
                ));
                None
            }
        },
    };
    let namespace = keys
        .vault_namespace
        .as_deref()
        .map(str::trim)
        .filter(|namespace| !namespace.is_empty())
        .map(str::to_owned);
    Some(KeySource::VaultTransit {
        transit: TransitSettings {
            address: address?,
            token: token?,
            mount,
            key: key?,
            ca_pem: ca_pem?,
            namespace,
        },
        previous,
    })
}

fn is_path_segment(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text != "."
        && text != ".."
}

fn refuse_environment_keys(keys: &KeyArgs, source: &str, problems: &mut Vec<String>) {
    for (name, given) in [
        (
            "ENCRYPTION_KEY",
            keys.encryption_key
                .as_deref()
                .is_some_and(|k| !k.is_empty()),
        ),
        (
            "ENCRYPTION_KEYS_PREVIOUS",
            keys.encryption_keys_previous
                .as_deref()
                .is_some_and(|k| !k.trim().is_empty()),
        ),
    ] {
        if given {
            problems.push(format!(
                "{name} is set but KEY_SOURCE is {source}: keys come from files only (unset it)"
            ));
        }
    }
}

fn previous_from_file(keys: &KeyArgs, problems: &mut Vec<String>) -> Vec<MasterKey> {
    let Some(path) = &keys.encryption_keys_previous_file else {
        return Vec::new();
    };
    read_secret_file(path, "ENCRYPTION_KEYS_PREVIOUS_FILE", problems)
        .map(|text| parse_list(&text, "ENCRYPTION_KEYS_PREVIOUS_FILE", problems))
        .unwrap_or_default()
}

/// Comma- or line-separated base64 keys; problems name the entry, not the key.
fn parse_list(list: &str, setting: &str, problems: &mut Vec<String>) -> Vec<MasterKey> {
    list.split([',', '\n'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .filter_map(|(i, entry)| {
            MasterKey::from_base64(entry)
                .map_err(|e| problems.push(format!("{setting} entry {} {e}", i + 1)))
                .ok()
        })
        .collect()
}

/// A secret file's text, refused when group or others may read or write it (a key in a file
/// anyone on the host can read is no better than one in the environment).
fn read_secret_file(
    path: &Path,
    setting: &str,
    problems: &mut Vec<String>,
) -> Option<Zeroizing<String>> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) => {
            problems.push(format!("{setting} {} cannot be read: {e}", path.display()));
            return None;
        }
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        problems.push(format!(
            "{setting} {} may be read by group or others (mode {mode:04o}): make it readable by \
             its owner only (chmod 600, or defaultMode 0400 for a Kubernetes secret volume)",
            path.display()
        ));
        return None;
    }
    // Start-up only, before the runtime serves anything.
    #[allow(clippy::disallowed_methods)]
    let text = fs::read_to_string(path);
    match text {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(e) => {
            problems.push(format!("{setting} {} cannot be read: {e}", path.display()));
            None
        }
    }
}

fn ring(
    primary: MasterKey,
    previous: Vec<MasterKey>,
    problems: &mut Vec<String>,
) -> Option<KeyRing> {
    KeyRing::new(primary, previous)
        .map_err(|e| problems.push(e.to_string()))
        .ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::Cli;

    /// The problems production reports for these flags (after `--mode production`).
    fn problems(flags: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(
            ["llm-registry", "--mode", "production"]
                .iter()
                .chain(flags)
                .copied(),
        )
        .unwrap();
        let mut problems = Vec::new();
        resolve(Mode::Production, &cli.serve.keys, None, &mut problems);
        problems
    }

    fn mentions(problems: &[String], needle: &str) -> bool {
        problems.iter().any(|problem| problem.contains(needle))
    }

    #[test]
    fn vault_transit_names_every_missing_or_malformed_setting() {
        let missing = problems(&["--key-source", "vault-transit"]);
        for needle in [
            "VAULT_ADDR",
            "VAULT_TOKEN_FILE (or VAULT_TOKEN)",
            "VAULT_TRANSIT_KEY",
        ] {
            assert!(mentions(&missing, needle), "{needle}: {missing:?}");
        }
        let token = "s.never-printed-token";
        let malformed = problems(&[
            "--key-source",
            "vault-transit",
            "--vault-addr",
            "vault.internal:8200",
            "--vault-token",
            token,
            "--vault-transit-key",
            "a/b",
            "--vault-transit-mount",
            "../x",
            "--encryption-key",
            MasterKey::generate().to_base64().as_str(),
        ]);
        for needle in [
            "is not an http(s) URL",
            "VAULT_TRANSIT_KEY \"a/b\"",
            "VAULT_TRANSIT_MOUNT",
            "unset ENCRYPTION_KEY",
        ] {
            assert!(mentions(&malformed, needle), "{needle}: {malformed:?}");
        }
        assert!(!malformed.iter().any(|problem| problem.contains(token)));
    }

    #[test]
    fn vault_transit_takes_static_previous_keys_for_the_move_from_env() {
        let old = MasterKey::generate();
        let cli = Cli::try_parse_from([
            "llm-registry",
            "--key-source",
            "vault-transit",
            "--vault-addr",
            "https://vault.internal:8200/",
            "--vault-token",
            "s.token",
            "--vault-transit-key",
            "registry",
            "--vault-transit-mount",
            "/kv/transit/",
            "--encryption-keys-previous",
            old.to_base64().as_str(),
        ])
        .unwrap();
        let mut problems = Vec::new();
        let source = resolve(Mode::Production, &cli.serve.keys, None, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let shown = format!("{source:?}");
        assert!(
            !shown.contains("s.token") && !shown.contains(old.to_base64().as_str()),
            "{shown}"
        );
        let Some(KeySource::VaultTransit { transit, previous }) = source else {
            panic!("not vault-transit");
        };
        assert_eq!(transit.mount, "kv/transit");
        assert_eq!(
            transit.place(),
            "VAULT_ADDR=https://vault.internal:8200 (transit key registry on mount kv/transit)"
        );
        assert_eq!(
            previous.iter().map(MasterKey::id).collect::<Vec<_>>(),
            [old.id()]
        );
    }

    #[test]
    fn env_and_file_do_not_mix() {
        let file = problems(&["--key-source", "file"]);
        assert!(
            mentions(&file, "KEY_SOURCE=file needs ENCRYPTION_KEY_FILE"),
            "{file:?}"
        );
        let env = problems(&[
            "--encryption-key",
            MasterKey::generate().to_base64().as_str(),
            "--encryption-key-file",
            "/run/secrets/key",
        ]);
        assert!(
            mentions(&env, "ENCRYPTION_KEY_FILE is set but KEY_SOURCE is env"),
            "{env:?}"
        );
    }
}
