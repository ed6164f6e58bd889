//! API standards. `openai`, `cohere` and `gemini` are the registry's seeded standards (with their
//! embedding protocols). Others: `auth_bearer` puts the key in its `key_field` header (default
//! `Authorization`) with scheme `Bearer`; `custom_header` in its `key_field` header, bare. A
//! key sent in the body (`body_form`) or the URL (`query_param`) cannot be expressed here: the
//! standard, and everything using it, is skipped and reported.

use serde_json::json;

use super::{
    Import,
    ledger::{Handles, Verdict, Written, fingerprint, judge, numbered, record},
    report::{Action, Kind},
    source::SourceStandard,
    text,
};
use crate::{
    domain::{api_standard::ApiStandardFields, embedding::EmbeddingProtocol},
    store::import::{HandleTable, LedgerKind, NewStandard, Times},
};

/// The standards the registry seeds, which dhamps-vdb's of the same handle become.
const SEEDED: &[&str] = &["openai", "cohere", "gemini"];

/// Where the key goes, or why it cannot go anywhere here.
fn auth(row: &SourceStandard) -> Result<(String, String), String> {
    let field = row.key_field.trim();
    let (header, scheme) = match row.key_method.as_str() {
        "auth_bearer" if field.is_empty() => ("Authorization", "Bearer"),
        "auth_bearer" => (field, "Bearer"),
        "custom_header" if !field.is_empty() => (field, ""),
        "custom_header" => {
            return Err("custom_header without a key_field names no header".to_owned());
        }
        "body_form" | "query_param" => {
            return Err(format!(
                "key method {} (the key in the request {}) cannot be expressed here; everything \
                 using this standard is skipped",
                row.key_method,
                if row.key_method == "body_form" {
                    "body"
                } else {
                    "URL"
                }
            ));
        }
        other => return Err(format!("unknown key method {other:?}")),
    };
    let fields = ApiStandardFields {
        description: String::new(),
        auth_header: header.to_owned(),
        auth_scheme: scheme.to_owned(),
        protocol: EmbeddingProtocol::Unspecified,
    };
    ApiStandardFields::parse("api_standard", fields)
        .map(|f| (f.auth_header, f.auth_scheme))
        .map_err(|e| format!("its key header cannot be used here: {e}"))
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceStandard>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows.iter().map(|r| r.handle.clone()).collect();
    let ledger = import.tx.ledger(LedgerKind::ApiStandard, &keys).await?;
    let seeded = import
        .tx
        .standard_ids(&SEEDED.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .await?;
    let mut written = Written::default();
    let mut new_rows = Vec::new();
    let mut wanted = Vec::new();
    for row in &rows {
        let source = row.identity();
        let print = fingerprint(&json!([
            row.handle,
            row.description,
            row.key_method,
            row.key_field,
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        if let Some(id) = SEEDED
            .contains(&row.handle.as_str())
            .then(|| seeded.get(&row.handle))
            .flatten()
        {
            let name = format!("apiStandards/{}", row.handle);
            written.matched(record(&row.handle, *id, &name, print, "matched"));
            import.report.add(
                Kind::ApiStandard,
                source,
                Some(name),
                Action::Matched,
                vec!["the registry's seeded standard of this name is used".to_owned()],
            );
            continue;
        }
        let (header, scheme) = match auth(row) {
            Ok(auth) => auth,
            Err(why) => {
                import.report.skip(Kind::ApiStandard, source, why);
                continue;
            }
        };
        let (description, mut reasons) = text::description(&row.description);
        let standard = NewStandard {
            handle: String::new(),
            description,
            auth_header: header,
            auth_scheme: scheme,
            times: Times {
                created: row.created,
                updated: row.updated,
            },
        };
        let verdict = judge(ledger.get(&row.handle), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::ApiStandard, source, target, action, vec![why]);
            continue;
        }
        match verdict {
            Verdict::New => {
                reasons.push(
                    "no embedding protocol is known for it: Embed cannot use it until an \
                     administrator sets one"
                        .to_owned(),
                );
                let base = text::handle(&row.handle, "s");
                if base != row.handle {
                    reasons.push(format!("handle is not valid here: made {base:?}"));
                }
                wanted.push((0, base));
                new_rows.push((row, print, standard, reasons));
            }
            Verdict::Same { entry, .. } => {
                let action = if entry.target_version == "matched" {
                    Action::Matched
                } else {
                    Action::Unchanged
                };
                import.report.add(
                    Kind::ApiStandard,
                    source,
                    Some(entry.target_name.clone()),
                    action,
                    vec![],
                );
            }
            Verdict::Changed { entry } => {
                let revision = import
                    .tx
                    .update_standard(entry.target_id, &standard)
                    .await?;
                written.wrote(
                    &mut import.report,
                    Kind::ApiStandard,
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
    let given = Handles::default()
        .allocate(import, HandleTable::ApiStandards, &wanted)
        .await?;
    let inserts: Vec<NewStandard> = new_rows
        .iter()
        .zip(&given)
        .map(|((_, _, standard, _), handle)| NewStandard {
            handle: handle.clone(),
            ..standard.clone()
        })
        .collect();
    let ids = import.tx.insert_standards(&inserts).await?;
    for (((row, print, _, mut reasons), handle), (_, base)) in
        new_rows.into_iter().zip(given).zip(wanted)
    {
        let name = format!("apiStandards/{handle}");
        let id = *ids
            .get(&handle)
            .ok_or_else(|| anyhow::anyhow!("an imported API standard was not written"))?;
        reasons.extend(numbered(&base, &handle, "here"));
        let source = row.identity();
        written.wrote(
            &mut import.report,
            Kind::ApiStandard,
            Action::Imported,
            source,
            record(&row.handle, id, &name, print, 1),
            reasons,
        );
    }
    written.flush(import, LedgerKind::ApiStandard).await
}
