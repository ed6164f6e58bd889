//! Instances (schema 4) and LLM services (schema 3). The key is opened the way dhamps-vdb sealed
//! it (schema 4) or taken from the legacy plaintext column (schema 3, `''` meaning none), trimmed
//! of surrounding whitespace, and sealed by the registry's vault under the new instance's uid. A
//! key that does not open, or that the registry would refuse, is left out and reported: the
//! instance is imported without it, the import goes on. An endpoint the registry refuses skips
//! the instance. The definition link is kept where the registry allows it (the owner's own or a
//! `_system` definition).
//!
//! Run again, an instance the registry has not changed since is compared key to key with the
//! source (both opened in memory, never stored or hashed): a key that changed in dhamps-vdb, or
//! that now opens under the right `DHAMPS_ENCRYPTION_KEY`, is put in.

use std::collections::HashMap;

use serde_json::json;

use super::{
    Import,
    definitions::{SourceService, service_of},
    ledger::{
        Handles, Resolved, Verdict, Written, fingerprint, judge, last_segment, numbered, record,
        resolve, resolve_users,
    },
    report::{Action, Kind},
    source::{SchemaVersion, SourceInstance},
    text,
};
use crate::{
    domain::{instance::api_key, names::SYSTEM_USER},
    store::import::{HandleTable, LedgerKind, NewInstance, ServiceUpdate, Times},
    vault::{ApiKey, Sealed},
};

/// The source's key for an instance: none, opened, or not usable (why).
enum SourceKey {
    None,
    Opened(ApiKey),
    Unusable(String),
}

fn source_key(import: &Import<'_>, row: &SourceInstance, reasons: &mut Vec<String>) -> SourceKey {
    let raw = match import.version {
        SchemaVersion::V4 => match row.sealed_key.as_deref() {
            None | Some([]) => return SourceKey::None,
            Some(sealed) => match import.source_keys.open(sealed) {
                Ok(key) => key,
                Err(why) => {
                    return SourceKey::Unusable(format!(
                        "{}: imported without a key",
                        why.explain()
                    ));
                }
            },
        },
        SchemaVersion::V3 => match row.plain_key.as_deref() {
            None | Some("") => return SourceKey::None,
            Some(plain) => ApiKey::new(plain.to_owned()),
        },
    };
    let trimmed = raw.expose().trim();
    if trimmed.is_empty() {
        return SourceKey::None;
    }
    if trimmed.len() != raw.expose().len() {
        reasons.push("surrounding whitespace trimmed from its key".to_owned());
    }
    // The registry's own rules for a key (length, no inner whitespace); the message never
    // quotes the key.
    match api_key("api_key", trimmed) {
        Ok(key) => SourceKey::Opened(key),
        Err(e) => SourceKey::Unusable(format!(
            "its key is refused here ({e}): imported without a key"
        )),
    }
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceInstance>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let ledger = import.tx.ledger(LedgerKind::Instance, &keys).await?;
    let owners = resolve_users(import, rows.iter().map(|r| r.owner.clone())).await?;
    let standard_keys: Vec<String> = rows.iter().map(|r| r.api_standard.clone()).collect();
    let standards = resolve(import, LedgerKind::ApiStandard, &standard_keys).await?;
    let definitions = linkable_definitions(import, &rows).await?;
    let stored = import
        .tx
        .instance_keys(&ledger.values().map(|e| e.target_id).collect::<Vec<_>>())
        .await?;

    let mut written = Written::default();
    let mut new_rows = Vec::new();
    let mut wanted = Vec::new();
    for row in &rows {
        let source = row.identity();
        let key = row.id.to_string();
        let Some(owner) = owners.get(&row.owner).filter(|_| row.owner != SYSTEM_USER) else {
            import.report.skip(
                Kind::Instance,
                source,
                format!(
                    "its owner {:?} has no user here that may own instances",
                    row.owner
                ),
            );
            continue;
        };
        let service = SourceService {
            endpoint: &row.endpoint,
            model: &row.model,
            dimensions: row.dimensions,
            context_limit: row.context_limit,
            description: &row.description,
            has_context_limit: import.version == SchemaVersion::V4,
        };
        let (fields, mut reasons) = match service_of(&standards, &row.api_standard, &service) {
            Ok(mapped) => mapped,
            Err(why) => {
                import.report.skip(Kind::Instance, source, why);
                continue;
            }
        };
        let definition_id = match row.definition_id {
            None => None,
            Some(id) => match definitions.get(&id.to_string()) {
                Some((definition, owner_id))
                    if *owner_id == owner.id || definition.name.starts_with("users/_system/") =>
                {
                    Some(definition.id)
                }
                Some((definition, _)) => {
                    reasons.push(format!(
                        "its link to {} was dropped: an instance here may only come from its \
                         owner's or a _system definition",
                        definition.name
                    ));
                    None
                }
                None => {
                    reasons.push(format!(
                        "its link to dhamps-vdb definition {id} was dropped: that definition \
                         was not imported"
                    ));
                    None
                }
            },
        };
        let has_source_key = row.sealed_key.as_ref().is_some_and(|k| !k.is_empty())
            || row.plain_key.as_ref().is_some_and(|k| !k.is_empty());
        let print = fingerprint(&json!([
            row.id,
            row.handle,
            row.owner,
            row.endpoint,
            row.description,
            row.api_standard,
            row.model,
            row.dimensions,
            row.context_limit,
            row.definition_id,
            has_source_key,
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        let verdict = judge(ledger.get(&key), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::Instance, source, target, action, vec![why]);
            continue;
        }
        let opened = source_key(import, row, &mut reasons);
        if let SourceKey::Unusable(why) = &opened {
            reasons.push(why.clone());
        }
        match verdict {
            Verdict::New => {
                let base = text::handle(&row.handle, "i");
                if base != row.handle {
                    reasons.push(format!("handle is not valid here: made {base:?}"));
                }
                wanted.push((owner.id, base));
                let uid = uuid::Uuid::new_v4().to_string();
                let sealed = match &opened {
                    SourceKey::Opened(key) => Some(import.ring.seal(key, &uid)),
                    _ => None,
                };
                new_rows.push((
                    row,
                    key,
                    print,
                    owner.clone(),
                    uid,
                    fields,
                    definition_id,
                    sealed,
                    reasons,
                ));
            }
            Verdict::Same { entry, untouched } => {
                // If the instance is as the import left it, its key follows the source's.
                let change = if untouched {
                    key_change(import, &opened, stored.get(&entry.target_id))?
                } else {
                    None
                };
                match change {
                    Some((sealed, why)) => {
                        reasons.push(why);
                        let update = ServiceUpdate {
                            id: entry.target_id,
                            service: fields,
                            definition_id,
                            key: Some(sealed),
                            updated: row.updated,
                        };
                        let revision = import.tx.update_instance(&update).await?;
                        written.wrote(
                            &mut import.report,
                            Kind::Instance,
                            Action::Updated,
                            source,
                            record(&key, entry.target_id, &entry.target_name, print, revision),
                            reasons,
                        );
                    }
                    None => {
                        // Only what still matters: a key that does not open is worth saying again.
                        let still = match opened {
                            SourceKey::Unusable(why) => vec![why],
                            _ => vec![],
                        };
                        import.report.add(
                            Kind::Instance,
                            source,
                            Some(entry.target_name.clone()),
                            Action::Unchanged,
                            still,
                        );
                    }
                }
            }
            Verdict::Changed { entry } => {
                let key_update = match (&opened, stored.get(&entry.target_id)) {
                    (SourceKey::Opened(key), Some((uid, _))) => {
                        Some(Some(import.ring.seal(key, uid)))
                    }
                    (SourceKey::None, _) => Some(None),
                    // A key that does not open does not take away the one the registry has.
                    _ => None,
                };
                let update = ServiceUpdate {
                    id: entry.target_id,
                    service: fields,
                    definition_id,
                    key: key_update,
                    updated: row.updated,
                };
                let revision = import.tx.update_instance(&update).await?;
                written.wrote(
                    &mut import.report,
                    Kind::Instance,
                    Action::Updated,
                    source,
                    record(&key, entry.target_id, &entry.target_name, print, revision),
                    reasons,
                );
            }
            Verdict::Conflict { .. } | Verdict::Gone { .. } => {}
        }
    }

    let given = Handles::default()
        .allocate(import, HandleTable::Instances, &wanted)
        .await?;
    let inserts: Vec<NewInstance> = new_rows
        .iter()
        .zip(&given)
        .map(
            |((row, _, _, owner, uid, fields, definition_id, sealed, _), handle)| NewInstance {
                uid: uid.clone(),
                owner_id: owner.id,
                handle: handle.clone(),
                definition_id: *definition_id,
                service: fields.clone(),
                sealed: sealed.clone(),
                times: Times {
                    created: row.created,
                    updated: row.updated,
                },
            },
        )
        .collect();
    let ids = import.tx.insert_instances(&inserts).await?;
    for (((row, key, print, owner, uid, _, _, _, mut reasons), handle), (_, base)) in
        new_rows.into_iter().zip(given).zip(wanted)
    {
        let name = format!("{}/instances/{handle}", owner.name);
        let id = *ids
            .get(&uid)
            .ok_or_else(|| anyhow::anyhow!("an imported instance was not written"))?;
        reasons.extend(numbered(
            &base,
            &handle,
            &format!("in {}", last_segment(&owner.name)),
        ));
        let source = row.identity();
        written.wrote(
            &mut import.report,
            Kind::Instance,
            Action::Imported,
            source,
            record(&key, id, &name, print, 1),
            reasons,
        );
    }
    written.flush(import, LedgerKind::Instance).await
}

/// The source's definitions these rows link to, as imported: the registry definition and its
/// owner.
async fn linkable_definitions(
    import: &mut Import<'_>,
    rows: &[SourceInstance],
) -> anyhow::Result<HashMap<String, (Resolved, i64)>> {
    let keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.definition_id)
        .map(|id| id.to_string())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let resolved = resolve(import, LedgerKind::Definition, &keys).await?;
    let owners = import
        .tx
        .definition_owners(&resolved.values().map(|r| r.id).collect::<Vec<_>>())
        .await?;
    Ok(resolved
        .into_iter()
        .filter_map(|(key, definition)| {
            owners
                .get(&definition.id)
                .map(|owner| (key, (definition.clone(), *owner)))
        })
        .collect())
}

/// For an instance the registry has not changed since the import: the key to put in when the
/// source's (opened) key differs from the stored one, with the reason.
fn key_change(
    import: &Import<'_>,
    opened: &SourceKey,
    stored: Option<&(String, Option<Sealed>)>,
) -> anyhow::Result<Option<(Option<Sealed>, String)>> {
    let (SourceKey::Opened(source), Some((uid, sealed))) = (opened, stored) else {
        return Ok(None);
    };
    let current = sealed
        .as_ref()
        .map(|sealed| import.ring.open(sealed, uid))
        .transpose()
        .map_err(|e| anyhow::anyhow!("a stored key of an imported instance does not open: {e}"))?;
    Ok(match current {
        Some(current) if current == *source => None,
        Some(_) => Some((
            Some(import.ring.seal(source, uid)),
            "its key changed in dhamps-vdb: the new one is put in".to_owned(),
        )),
        None => Some((
            Some(import.ring.seal(source, uid)),
            "its key opens now: put in".to_owned(),
        )),
    })
}
