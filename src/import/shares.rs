//! Shares. Roles: reader -> reader, editor (schema 4) and writer (schema 3) -> writer, owner ->
//! owner. A share to `_system`, to the instance's own owner, or of an instance that was not
//! imported is skipped and reported. (Before dhamps-vdb's refactor the owner's own row was how
//! ownership was kept; the source query leaves those out.)

use std::collections::HashSet;

use serde_json::json;

use super::{
    Import,
    ledger::{Verdict, Written, fingerprint, judge, record, resolve, resolve_users},
    report::{Action, Kind},
    source::SourceShare,
};
use crate::{
    domain::names::SYSTEM_USER,
    store::import::{LedgerKind, LedgerRecord, NewShare, Times},
};

fn role(source: &str) -> Option<&'static str> {
    match source {
        "reader" => Some("reader"),
        "editor" | "writer" => Some("writer"),
        "owner" => Some("owner"),
        _ => None,
    }
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceShare>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.instance_id, r.grantee))
        .collect();
    let ledger = import.tx.ledger(LedgerKind::Share, &keys).await?;
    let instance_keys: Vec<String> = rows.iter().map(|r| r.instance_id.to_string()).collect();
    let instances = resolve(import, LedgerKind::Instance, &instance_keys).await?;
    let grantees = resolve_users(import, rows.iter().map(|r| r.grantee.clone())).await?;

    let mut written = Written::default();
    let mut new_rows = Vec::new();
    for (row, key) in rows.iter().zip(keys) {
        let source = row.identity();
        let Some(instance) = instances.get(&row.instance_id.to_string()) else {
            import.report.skip(
                Kind::Share,
                source,
                format!("its instance {} was not imported", row.instance_id),
            );
            continue;
        };
        if row.grantee == SYSTEM_USER {
            import.report.skip(
                Kind::Share,
                source,
                "a share to _system has no meaning here".to_owned(),
            );
            continue;
        }
        let Some(grantee) = grantees.get(&row.grantee) else {
            import.report.skip(
                Kind::Share,
                source,
                format!("its user {:?} was not imported", row.grantee),
            );
            continue;
        };
        let grantee_handle = grantee.name.trim_start_matches("users/");
        if instance.name.starts_with(&format!("{}/", grantee.name)) {
            import.report.skip(
                Kind::Share,
                source,
                format!("{} owns the instance here", grantee.name),
            );
            continue;
        }
        let Some(mapped) = role(&row.role) else {
            import.report.skip(
                Kind::Share,
                source,
                format!("role {:?} is unknown", row.role),
            );
            continue;
        };
        let name = format!("{}/shares/{grantee_handle}", instance.name);
        let print = fingerprint(&json!([
            row.instance_id,
            row.grantee,
            row.role,
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        let verdict = judge(ledger.get(&key), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::Share, source, target, action, vec![why]);
            continue;
        }
        // A share's ledger row also names its grantee; its version is its role.
        let record = |print: Vec<u8>| LedgerRecord {
            target_user_id: Some(grantee.id),
            ..record(&key, instance.id, &name, print, mapped)
        };
        match verdict {
            Verdict::New => {
                let share = NewShare {
                    instance_id: instance.id,
                    grantee_id: grantee.id,
                    role: mapped,
                    times: Times {
                        created: row.created,
                        updated: row.updated,
                    },
                };
                new_rows.push((share, record(print), source));
            }
            Verdict::Same { .. } => {
                import
                    .report
                    .add(Kind::Share, source, Some(name), Action::Unchanged, vec![]);
            }
            Verdict::Changed { .. } => {
                import
                    .tx
                    .update_share(instance.id, grantee.id, mapped, row.updated)
                    .await?;
                let reasons = vec![format!("role now {mapped}")];
                written.wrote(
                    &mut import.report,
                    Kind::Share,
                    Action::Updated,
                    source,
                    record(print),
                    reasons,
                );
            }
            Verdict::Conflict { .. } | Verdict::Gone { .. } => {}
        }
    }
    let shares: Vec<NewShare> = new_rows.iter().map(|(share, ..)| share.clone()).collect();
    let created: HashSet<(i64, i64)> = import.tx.insert_shares(&shares).await?;
    for (share, record, source) in new_rows {
        if created.contains(&(share.instance_id, share.grantee_id)) {
            written.wrote(
                &mut import.report,
                Kind::Share,
                Action::Imported,
                source,
                record,
                Vec::new(),
            );
        } else {
            import.report.add(
                Kind::Share,
                source,
                Some(record.target_name),
                Action::Skipped,
                vec![
                    "the registry already has a share of this instance for this user: left as \
                     it is"
                        .to_owned(),
                ],
            );
        }
    }
    written.flush(import, LedgerKind::Share).await
}
