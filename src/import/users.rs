//! Users. A handle valid here is kept, others are normalized (numbered on collision); the display
//! name comes from `name`; `email` has no place here (counted as dropped). The hex SHA-256 of the
//! user's dhamps-vdb API key, which dhamps-vdb stores, becomes the digest of their bearer token,
//! so the key they already have keeps working (the key itself is never needed). `_system` is the
//! registry's own `_system` and never gets a token.

use serde_json::json;

use super::{
    Import,
    ledger::{Handles, Verdict, Written, fingerprint, judge, numbered, record},
    report::{Action, Kind},
    source::SourceUser,
    text,
};
use crate::{
    domain::names::SYSTEM_USER,
    store::import::{HandleTable, LedgerKind, NewUser, Times},
};

/// The token digest dhamps-vdb stored: 64 hex digits, or nothing usable.
fn digest(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceUser>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows.iter().map(|r| r.handle.clone()).collect();
    let ledger = import.tx.ledger(LedgerKind::User, &keys).await?;
    let digests: Vec<Option<Vec<u8>>> = rows.iter().map(|r| digest(&r.key_digest)).collect();
    let known: Vec<Vec<u8>> = digests.iter().flatten().cloned().collect();
    let taken_digests = import.tx.taken_token_hashes(&known).await?;
    let current_digests = import
        .tx
        .user_token_hashes(&ledger.values().map(|e| e.target_id).collect::<Vec<_>>())
        .await?;

    let mut new_rows = Vec::new();
    let mut wanted = Vec::new();
    let mut written = Written::default();
    for (row, digest) in rows.iter().zip(digests) {
        let source = row.identity();
        if row.has_email {
            import.report.drop_count("user emails", 1);
        }
        if row.handle == SYSTEM_USER {
            import.report.add(
                Kind::User,
                source,
                Some(format!("users/{SYSTEM_USER}")),
                Action::Matched,
                vec![
                    "dhamps-vdb's _system is the registry's _system, which has no token".to_owned(),
                ],
            );
            continue;
        }
        let (display_name, mut reasons) = text::display_name(&row.name);
        let print = fingerprint(&json!([
            row.handle,
            row.name,
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        let verdict = judge(ledger.get(&row.handle), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::User, source, target, action, vec![why]);
            continue;
        }
        // A digest some other registry user has already is not given to this one.
        let usable = |entry_id: Option<i64>| match &digest {
            Some(d) if taken_digests.contains(d) => {
                let theirs = entry_id.and_then(|id| current_digests.get(&id).cloned().flatten());
                (theirs.as_ref() == Some(d)).then(|| d.clone())
            }
            other => other.clone(),
        };
        match verdict {
            Verdict::New => {
                let token_hash = usable(None);
                match (&digest, &token_hash) {
                    (None, _) => reasons.push(
                        "its stored dhamps-vdb key digest is not 64 hex digits: imported without \
                         a token (an administrator can issue one)"
                            .to_owned(),
                    ),
                    (Some(_), None) => reasons.push(
                        "another registry user already has its key as their token: imported \
                         without a token"
                            .to_owned(),
                    ),
                    _ => {}
                }
                let base = text::handle(&row.handle, "u");
                if base != row.handle {
                    reasons.push(format!("handle is not valid here: made {base:?}"));
                }
                wanted.push((0, base));
                new_rows.push((row, print, display_name, token_hash, reasons));
            }
            Verdict::Same { entry, untouched } => {
                let current = current_digests.get(&entry.target_id).cloned().flatten();
                let wanted_digest = usable(Some(entry.target_id));
                if untouched && wanted_digest.is_some() && wanted_digest != current {
                    let revision = import
                        .tx
                        .update_user(
                            entry.target_id,
                            &display_name,
                            wanted_digest.as_deref(),
                            row.updated,
                        )
                        .await?;
                    let reasons = vec!["its dhamps-vdb key changed: the token follows".to_owned()];
                    written.wrote(
                        &mut import.report,
                        Kind::User,
                        Action::Updated,
                        source,
                        record(
                            &row.handle,
                            entry.target_id,
                            &entry.target_name,
                            print,
                            revision,
                        ),
                        reasons,
                    );
                } else {
                    import.report.add(
                        Kind::User,
                        source,
                        Some(entry.target_name.clone()),
                        Action::Unchanged,
                        vec![],
                    );
                }
            }
            Verdict::Changed { entry } => {
                let token_hash = usable(Some(entry.target_id));
                let revision = import
                    .tx
                    .update_user(
                        entry.target_id,
                        &display_name,
                        token_hash.as_deref(),
                        row.updated,
                    )
                    .await?;
                written.wrote(
                    &mut import.report,
                    Kind::User,
                    Action::Updated,
                    source,
                    record(
                        &row.handle,
                        entry.target_id,
                        &entry.target_name,
                        print,
                        revision,
                    ),
                    reasons,
                );
            }
            Verdict::Conflict { .. } | Verdict::Gone { .. } => {}
        }
    }

    let mut handles = Handles::default();
    let given = handles
        .allocate(import, HandleTable::Users, &wanted)
        .await?;
    let inserts: Vec<NewUser> = new_rows
        .iter()
        .zip(&given)
        .map(|((row, _, display_name, token_hash, _), handle)| NewUser {
            handle: handle.clone(),
            display_name: display_name.clone(),
            token_hash: token_hash.clone(),
            times: Times {
                created: row.created,
                updated: row.updated,
            },
        })
        .collect();
    let ids = import.tx.insert_users(&inserts).await?;
    for (((row, print, _, _, mut reasons), handle), (_, base)) in
        new_rows.into_iter().zip(given).zip(wanted)
    {
        let name = format!("users/{handle}");
        let id = *ids
            .get(&handle)
            .ok_or_else(|| anyhow::anyhow!("an imported user was not written"))?;
        reasons.extend(numbered(&base, &handle, "here"));
        let source = row.identity();
        written.wrote(
            &mut import.report,
            Kind::User,
            Action::Imported,
            source,
            record(&row.handle, id, &name, print, 1),
            reasons,
        );
    }
    written.flush(import, LedgerKind::User).await
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn digests_are_64_hex_digits() {
        let hex = "ab".repeat(32);
        assert_eq!(digest(&hex).unwrap(), vec![0xab; 32]);
        assert_eq!(digest(&hex.to_uppercase()).unwrap(), vec![0xab; 32]);
        assert!(digest(&"ab".repeat(31)).is_none());
        assert!(digest(&"zz".repeat(32)).is_none());
        assert!(digest("").is_none());
    }
}
