//! Projects. A project is bound to its instance when its owner may use that instance here (owns
//! it or has a share of any role); otherwise it is imported detached, its detach reason saying
//! why, and its owner binds it again with UpdateProject. `metadata_scheme`, `public_read` and
//! project members (`users_projects`) have no place here: dropped and counted. Before
//! dhamps-vdb's refactor a project could link several LLM services: the first by link time is
//! kept (as dhamps-vdb's own upgrade does) and the others counted.

use serde_json::json;

use super::{
    Import,
    ledger::{
        Handles, Verdict, Written, fingerprint, judge, last_segment, numbered, record, resolve,
        resolve_users,
    },
    report::{Action, Kind},
    source::SourceProject,
    text,
};
use crate::store::import::{HandleTable, LedgerKind, NewProject, ProjectUpdate, Times};

/// Where a project's binding stands: an instance, or detached with a reason.
struct Binding {
    instance_id: Option<i64>,
    detach_reason: String,
}

pub async fn import(import: &mut Import<'_>, rows: Vec<SourceProject>) -> anyhow::Result<()> {
    let keys: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let ledger = import.tx.ledger(LedgerKind::Project, &keys).await?;
    let owners = resolve_users(import, rows.iter().map(|r| r.owner.clone())).await?;
    let instance_keys: Vec<String> = rows
        .iter()
        .filter_map(|r| r.instance_id)
        .map(|id| id.to_string())
        .collect();
    let instances = resolve(import, LedgerKind::Instance, &instance_keys).await?;
    let pairs: Vec<(i64, i64)> = rows
        .iter()
        .filter_map(|r| {
            let instance = instances.get(&r.instance_id?.to_string())?;
            Some((instance.id, owners.get(&r.owner)?.id))
        })
        .collect();
    let usable = import.tx.may_use(&pairs).await?;

    let mut written = Written::default();
    let mut new_rows = Vec::new();
    let mut wanted = Vec::new();
    for row in &rows {
        let source = row.identity();
        let key = row.id.to_string();
        import.report.drop_count(
            "project metadata schemes",
            u64::from(row.has_metadata_scheme),
        );
        import
            .report
            .drop_count("project public_read flags", u64::from(row.public_read));
        import.report.drop_count(
            "project members (users_projects)",
            row.members.max(0) as u64,
        );
        import.report.drop_count(
            "further LLM services of a project (schema 3)",
            row.other_instances.max(0) as u64,
        );
        let Some(owner) = owners.get(&row.owner).filter(|o| o.name != "users/_system") else {
            import.report.skip(
                Kind::Project,
                source,
                format!(
                    "its owner {:?} has no user here that may own projects",
                    row.owner
                ),
            );
            continue;
        };
        let (description, mut reasons) = text::description(&row.description);
        if row.other_instances > 0 {
            reasons.push(format!(
                "it was linked to {} more LLM service(s): only the first is kept",
                row.other_instances
            ));
        }
        let binding = match row.instance_id {
            None => Binding {
                instance_id: None,
                detach_reason: "imported from dhamps-vdb without an instance".to_owned(),
            },
            Some(id) => match instances.get(&id.to_string()) {
                Some(instance) if usable.contains(&(instance.id, owner.id)) => Binding {
                    instance_id: Some(instance.id),
                    detach_reason: String::new(),
                },
                Some(instance) => Binding {
                    instance_id: None,
                    detach_reason: format!(
                        "imported from dhamps-vdb: {} may not use {} here (no share)",
                        owner.name, instance.name
                    ),
                },
                None => Binding {
                    instance_id: None,
                    detach_reason: format!(
                        "imported from dhamps-vdb: its instance (dhamps-vdb id {id}) was not \
                         imported"
                    ),
                },
            },
        };
        if binding.instance_id.is_none() {
            reasons.push(format!("detached: {}", binding.detach_reason));
        }
        let print = fingerprint(&json!([
            row.id,
            row.handle,
            row.owner,
            row.description,
            row.instance_id,
            row.other_instances,
            row.created.timestamp_micros(),
            row.updated.timestamp_micros()
        ]));
        let verdict = judge(ledger.get(&key), &print);
        if let Some((action, target, why)) = verdict.idle() {
            import
                .report
                .add(Kind::Project, source, target, action, vec![why]);
            continue;
        }
        match verdict {
            Verdict::New => {
                let base = text::handle(&row.handle, "p");
                if base != row.handle {
                    reasons.push(format!("handle is not valid here: made {base:?}"));
                }
                wanted.push((owner.id, base));
                new_rows.push((
                    row,
                    key,
                    print,
                    owner.clone(),
                    description,
                    binding,
                    reasons,
                ));
            }
            Verdict::Same { entry, .. } => {
                import.report.add(
                    Kind::Project,
                    source,
                    Some(entry.target_name.clone()),
                    Action::Unchanged,
                    vec![],
                );
            }
            Verdict::Changed { entry } => {
                let update = ProjectUpdate {
                    id: entry.target_id,
                    description,
                    instance_id: binding.instance_id,
                    detach_reason: binding.detach_reason,
                    updated: row.updated,
                };
                let revision = import.tx.update_project(&update).await?;
                written.wrote(
                    &mut import.report,
                    Kind::Project,
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
        .allocate(import, HandleTable::Projects, &wanted)
        .await?;
    let inserts: Vec<NewProject> = new_rows
        .iter()
        .zip(&given)
        .map(
            |((row, _, _, owner, description, binding, _), handle)| NewProject {
                owner_id: owner.id,
                handle: handle.clone(),
                description: description.clone(),
                instance_id: binding.instance_id,
                detach_reason: binding.detach_reason.clone(),
                times: Times {
                    created: row.created,
                    updated: row.updated,
                },
            },
        )
        .collect();
    let ids = import.tx.insert_projects(&inserts).await?;
    for (((row, key, print, owner, _, _, mut reasons), handle), (_, base)) in
        new_rows.into_iter().zip(given).zip(wanted)
    {
        let name = format!("{}/projects/{handle}", owner.name);
        let id = *ids
            .get(&(owner.id, handle.clone()))
            .ok_or_else(|| anyhow::anyhow!("an imported project was not written"))?;
        reasons.extend(numbered(
            &base,
            &handle,
            &format!("in {}", last_segment(&owner.name)),
        ));
        let source = row.identity();
        written.wrote(
            &mut import.report,
            Kind::Project,
            Action::Imported,
            source,
            record(&key, id, &name, print, 1),
            reasons,
        );
    }
    written.flush(import, LedgerKind::Project).await
}
