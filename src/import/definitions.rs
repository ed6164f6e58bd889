//! Definitions (dhamps-vdb schema 4). `_system` ones are matched by handle to the registry's
//! `_system` definitions (and created under `_system` when it has none of that handle); others
//! are created under their owner. `is_public` and `definitions_shared_with` have no equivalent
//! here (every user may read `_system` definitions, and only those): dropped and counted. A zero
//! `dimensions` or `context_limit` becomes unset. Also the service-field mapping instances share.

use serde_json::json;

use super::{
    Import,
    ledger::{
        Handles, Verdict, Written, fingerprint, judge, last_segment, numbered, record, resolve,
        resolve_users,
    },
    report::{Action, Kind},
    source::SourceDefinition,
    text,
};
use crate::{
    domain::{names::SYSTEM_USER, validate},
    store::import::{HandleTable, LedgerKind, NewDefinition, ServiceFields, ServiceUpdate, Times},
};

/// The service columns of a definition or instance as dhamps-vdb has them.
pub struct SourceService<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
    pub dimensions: i32,
    pub context_limit: i32,
    pub description: &'a str,
    /// Whether the source has a context limit at all (schema 3 does not).
    pub has_context_limit: bool,
}

/// [`service_fields`] with the API standard looked up among those imported (`standards`, by
/// dhamps-vdb handle); a standard that was not imported is a reason too.
pub fn service_of(
    standards: &std::collections::HashMap<String, super::ledger::Resolved>,
    api_standard: &str,
    service: &SourceService<'_>,
) -> Result<(ServiceFields, Vec<String>), String> {
    let standard = standards
        .get(api_standard)
        .ok_or_else(|| format!("its API standard {api_standard:?} was not imported"))?;
    service_fields(service, standard.id)
}

/// The registry's service fields for a source service, with what was changed on the way; or why
/// it cannot be taken over (an endpoint or model the registry refuses).
pub fn service_fields(
    service: &SourceService<'_>,
    api_standard_id: i64,
) -> Result<(ServiceFields, Vec<String>), String> {
    let mut reasons = Vec::new();
    let (endpoint, model) = (service.endpoint.trim(), service.model.trim());
    if endpoint.len() != service.endpoint.len() {
        reasons.push("surrounding whitespace trimmed from the endpoint".to_owned());
    }
    if model.len() != service.model.len() {
        reasons.push("surrounding whitespace trimmed from the model".to_owned());
    }
    // The refusal names the rule broken, never the value (an endpoint may hold credentials).
    let endpoint = validate::endpoint("endpoint", endpoint)
        .map_err(|e| format!("its endpoint is refused here: {e}"))?;
    let model = validate::line("model", model, validate::MAX_MODEL_LEN, true)
        .map_err(|e| format!("its model is refused here: {e}"))?;
    let mut count = |value: i32, what: &str, max: i32, meaningful: bool| {
        if value == 0 {
            if meaningful {
                reasons.push(format!("{what} 0 made unset"));
            }
            Ok(None)
        } else if !(1..=max).contains(&value) {
            Err(format!("its {what} {value} is outside 1..={max}"))
        } else {
            Ok(Some(value))
        }
    };
    let dimensions = count(
        service.dimensions,
        "dimensions",
        validate::MAX_DIMENSIONS,
        true,
    )?;
    let context_limit = count(
        service.context_limit,
        "context_limit",
        validate::MAX_CONTEXT_LIMIT,
        service.has_context_limit,
    )?;
    let (description, changes) = text::description(service.description);
    reasons.extend(changes);
    Ok((
        ServiceFields {
            endpoint,
            api_standard_id,
            model,
            dimensions,
            context_limit,
            description,
        },
        reasons,
    ))
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceDefinition>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let ledger = import.tx.ledger(LedgerKind::Definition, &keys).await?;
    let owners = resolve_users(import, rows.iter().map(|r| r.owner.clone())).await?;
    let standard_keys: Vec<String> = rows.iter().map(|r| r.api_standard.clone()).collect();
    let standards = resolve(import, LedgerKind::ApiStandard, &standard_keys).await?;
    let system_handles: Vec<String> = rows
        .iter()
        .filter(|r| r.owner == SYSTEM_USER)
        .map(|r| text::handle(&r.handle, "d"))
        .collect();
    let seeded = import.tx.system_definition_ids(&system_handles).await?;

    let mut written = Written::default();
    let mut new_rows = Vec::new();
    let mut wanted = Vec::new();
    for row in &rows {
        let source = row.identity();
        let key = row.id.to_string();
        if row.is_public && row.owner != SYSTEM_USER {
            import.report.drop_count("definition is_public flags", 1);
        }
        import.report.drop_count(
            "definition shares (definitions_shared_with)",
            row.shared_with.max(0) as u64,
        );
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
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        let Some(owner) = owners.get(&row.owner) else {
            import.report.skip(
                Kind::Definition,
                source,
                format!("its owner {:?} was not imported", row.owner),
            );
            continue;
        };
        if row.owner == SYSTEM_USER {
            let handle = text::handle(&row.handle, "d");
            if let Some(id) = seeded.get(&handle).filter(|_| {
                ledger
                    .get(&key)
                    .is_none_or(|e| e.target_version == "matched")
            }) {
                let name = format!("users/{SYSTEM_USER}/definitions/{handle}");
                written.matched(record(&key, *id, &name, print, "matched"));
                import.report.add(
                    Kind::Definition,
                    source,
                    Some(name),
                    Action::Matched,
                    vec!["the registry's _system definition of this name is used".to_owned()],
                );
                continue;
            }
        }
        let service = SourceService {
            endpoint: &row.endpoint,
            model: &row.model,
            dimensions: row.dimensions,
            context_limit: row.context_limit,
            description: &row.description,
            has_context_limit: true,
        };
        let (fields, mut reasons) = match service_of(&standards, &row.api_standard, &service) {
            Ok(mapped) => mapped,
            Err(why) => {
                import.report.skip(Kind::Definition, source, why);
                continue;
            }
        };
        let verdict = judge(ledger.get(&key), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::Definition, source, target, action, vec![why]);
            continue;
        }
        match verdict {
            Verdict::New => {
                let base = text::handle(&row.handle, "d");
                if base != row.handle {
                    reasons.push(format!("handle is not valid here: made {base:?}"));
                }
                wanted.push((owner.id, base));
                new_rows.push((row, key, print, owner.clone(), fields, reasons));
            }
            Verdict::Same { entry, .. } => {
                import.report.add(
                    Kind::Definition,
                    source,
                    Some(entry.target_name.clone()),
                    Action::Unchanged,
                    vec![],
                );
            }
            Verdict::Changed { entry } => {
                let update = ServiceUpdate {
                    id: entry.target_id,
                    service: fields,
                    definition_id: None,
                    key: None,
                    updated: row.updated,
                };
                let revision = import.tx.update_definition(&update).await?;
                written.wrote(
                    &mut import.report,
                    Kind::Definition,
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
        .allocate(import, HandleTable::Definitions, &wanted)
        .await?;
    let inserts: Vec<NewDefinition> = new_rows
        .iter()
        .zip(&given)
        .map(|((row, _, _, owner, fields, _), handle)| NewDefinition {
            owner_id: owner.id,
            handle: handle.clone(),
            service: fields.clone(),
            times: Times {
                created: row.created,
                updated: row.updated,
            },
        })
        .collect();
    let ids = import.tx.insert_definitions(&inserts).await?;
    for (((row, key, print, owner, _, mut reasons), handle), (_, base)) in
        new_rows.into_iter().zip(given).zip(wanted)
    {
        let name = format!("{}/definitions/{handle}", owner.name);
        let id = *ids
            .get(&(owner.id, handle.clone()))
            .ok_or_else(|| anyhow::anyhow!("an imported definition was not written"))?;
        reasons.extend(numbered(
            &base,
            &handle,
            &format!("in {}", last_segment(&owner.name)),
        ));
        let source = row.identity();
        written.wrote(
            &mut import.report,
            Kind::Definition,
            Action::Imported,
            source,
            record(&key, id, &name, print, 1),
            reasons,
        );
    }
    written.flush(import, LedgerKind::Definition).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service<'a>(endpoint: &'a str, model: &'a str, dimensions: i32) -> SourceService<'a> {
        SourceService {
            endpoint,
            model,
            dimensions,
            context_limit: 0,
            description: "",
            has_context_limit: false,
        }
    }

    #[test]
    fn service_fields_are_trimmed_unset_or_refused_without_echoing_the_endpoint() {
        let (fields, reasons) =
            service_fields(&service(" https://example.com/embed\n", "m ", 0), 7).unwrap();
        assert_eq!(fields.endpoint, "https://example.com/embed");
        assert_eq!(fields.model, "m");
        assert_eq!((fields.dimensions, fields.context_limit), (None, None));
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        let refused =
            service_fields(&service("https://me:secret@example.com/", "m", 8), 7).unwrap_err();
        assert!(
            refused.contains("credentials") && !refused.contains("secret"),
            "{refused}"
        );
        assert!(service_fields(&service("https://example.com/", "m", -3), 7).is_err());
        assert!(service_fields(&service("ftp://example.com/", "m", 8), 7).is_err());
    }
}
