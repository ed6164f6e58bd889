//! What every kind's step shares: fingerprints of source rows, the verdict of the ledger on a
//! row seen before, handle allocation with numbered collisions, resolving source identities to
//! the registry objects they became, and audit details.

use std::collections::{HashMap, HashSet};

use sha2::{Digest as _, Sha256};

use super::{
    Import, SOURCE_SYSTEM,
    report::{Action, Kind, Report},
    text,
};
use crate::store::import::{HandleTable, ImportEvent, LedgerEntry, LedgerKind, LedgerRecord};

/// SHA-256 of a source row's non-secret columns. Secrets (keys, key digests) are never part of
/// it: they are compared with the registry's live rows instead.
pub fn fingerprint(columns: &serde_json::Value) -> Vec<u8> {
    Sha256::digest(columns.to_string().as_bytes()).to_vec()
}

/// What the ledger says about a source row.
pub enum Verdict<'e> {
    /// Never imported.
    New,
    /// Imported before and unchanged in the source; `untouched` when the registry's object is
    /// also as the import left it.
    Same {
        entry: &'e LedgerEntry,
        untouched: bool,
    },
    /// Changed in the source; the registry's object is as the import left it: update it.
    Changed { entry: &'e LedgerEntry },
    /// Changed in the source and in the registry: left alone.
    Conflict { entry: &'e LedgerEntry },
    /// Deleted in the registry since: not imported again.
    Gone { entry: &'e LedgerEntry },
}

pub fn judge<'e>(entry: Option<&'e LedgerEntry>, fingerprint: &[u8]) -> Verdict<'e> {
    let Some(entry) = entry else {
        return Verdict::New;
    };
    let Some(current) = entry.current_version.as_deref() else {
        return Verdict::Gone { entry };
    };
    let untouched = current == entry.target_version;
    match (entry.source_fingerprint == fingerprint, untouched) {
        (true, untouched) => Verdict::Same { entry, untouched },
        (false, true) => Verdict::Changed { entry },
        (false, false) => Verdict::Conflict { entry },
    }
}

impl Verdict<'_> {
    /// The report's word and reason for the verdicts that write nothing.
    pub fn idle(&self) -> Option<(Action, Option<String>, String)> {
        match self {
            Self::Conflict { entry } => Some((
                Action::Conflict,
                Some(entry.target_name.clone()),
                "changed in dhamps-vdb and in the registry since the last import: the registry's \
                 version is kept"
                    .to_owned(),
            )),
            Self::Gone { entry } => Some((
                Action::Skipped,
                Some(entry.target_name.clone()),
                "deleted in the registry after an earlier import: not imported again".to_owned(),
            )),
            _ => None,
        }
    }
}

/// Handles given out in this chunk, per table and owner, before they are written.
#[derive(Default)]
pub struct Handles {
    given: HashSet<(HandleTable, i64, String)>,
}

impl Handles {
    /// Free handles for `wanted` (owner, base handle) pairs, in order: each base if free,
    /// otherwise `base-2`, `base-3`, ... Bases are checked in one query; the rare collision
    /// probes one candidate at a time.
    pub async fn allocate(
        &mut self,
        import: &mut Import<'_>,
        table: HandleTable,
        wanted: &[(i64, String)],
    ) -> anyhow::Result<Vec<String>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let taken = import.tx.taken_handles(table, wanted).await?;
        let mut out = Vec::with_capacity(wanted.len());
        for (owner, base) in wanted {
            let mut candidate = base.clone();
            let mut n = 2;
            let mut checked = !taken.contains(&(*owner, base.clone()));
            loop {
                let key = (table, *owner, candidate.clone());
                if checked && !self.given.contains(&key) {
                    self.given.insert(key);
                    break;
                }
                candidate = text::numbered(base, n);
                n += 1;
                checked = import
                    .tx
                    .taken_handles(table, &[(*owner, candidate.clone())])
                    .await?
                    .is_empty();
            }
            out.push(candidate);
        }
        Ok(out)
    }
}

/// What a source identity became: the registry's id and full name.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: i64,
    pub name: String,
}

/// The registry objects that `keys` of `kind` became, for those still there.
pub async fn resolve(
    import: &mut Import<'_>,
    kind: LedgerKind,
    keys: &[String],
) -> anyhow::Result<HashMap<String, Resolved>> {
    Ok(import
        .tx
        .ledger(kind, keys)
        .await?
        .into_values()
        .filter(|entry| entry.current_version.is_some())
        .map(|entry| {
            (
                entry.source_key,
                Resolved {
                    id: entry.target_id,
                    name: entry.target_name,
                },
            )
        })
        .collect())
}

/// Source user handles to registry users: through the ledger, and `_system` to `_system`.
pub async fn resolve_users(
    import: &mut Import<'_>,
    handles: impl Iterator<Item = String>,
) -> anyhow::Result<HashMap<String, Resolved>> {
    let mut keys: Vec<String> = handles.collect();
    keys.sort();
    keys.dedup();
    let mut users = resolve(import, LedgerKind::User, &keys).await?;
    if keys.iter().any(|k| k == crate::domain::names::SYSTEM_USER) {
        let system = import
            .tx
            .user_ids(&[crate::domain::names::SYSTEM_USER.to_owned()])
            .await?;
        if let Some(id) = system.get(crate::domain::names::SYSTEM_USER) {
            users.insert(
                crate::domain::names::SYSTEM_USER.to_owned(),
                Resolved {
                    id: *id,
                    name: format!("users/{}", crate::domain::names::SYSTEM_USER),
                },
            );
        }
    }
    Ok(users)
}

/// The handle at the end of a full name (`users/alice/instances/x` -> `x`).
pub fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The ledger row of a source row that became registry object `target_id` (`target_name`),
/// whose version the import left at `version` (a revision, or `matched`).
pub fn record(
    source_key: &str,
    target_id: i64,
    target_name: &str,
    fingerprint: Vec<u8>,
    version: impl ToString,
) -> LedgerRecord {
    LedgerRecord {
        source_key: source_key.to_owned(),
        target_id,
        target_user_id: None,
        target_name: target_name.to_owned(),
        fingerprint,
        target_version: version.to_string(),
    }
}

/// What a chunk wrote: gathered so that its ledger rows and audit events each go in with one
/// statement ([`Written::flush`]).
#[derive(Default)]
pub struct Written {
    events: Vec<ImportEvent>,
    records: Vec<LedgerRecord>,
}

impl Written {
    /// An object the import created or updated: its audit event, its ledger row, its report line.
    pub fn wrote(
        &mut self,
        report: &mut Report,
        kind: Kind,
        action: Action,
        source: String,
        record: LedgerRecord,
        reasons: Vec<String>,
    ) {
        self.events.push(ImportEvent {
            resource: record.target_name.clone(),
            detail: audit_detail(action, &source, &reasons),
        });
        report.add(
            kind,
            source,
            Some(record.target_name.clone()),
            action,
            reasons,
        );
        self.records.push(record);
    }

    /// A registry object used as it is (a seeded standard, a `_system` definition): a ledger row
    /// only, so that later kinds find it.
    pub fn matched(&mut self, record: LedgerRecord) {
        self.records.push(record);
    }

    /// Writes the chunk's ledger rows of `kind` and its audit events.
    pub async fn flush(self, import: &mut Import<'_>, kind: LedgerKind) -> anyhow::Result<()> {
        import.tx.record(kind, &self.records).await?;
        import.tx.audit(&self.events).await
    }
}

/// The report's reason when `base` was taken `where` (`here`, `in alice`) and `given` was made.
pub fn numbered(base: &str, given: &str, place: &str) -> Option<String> {
    (base != given).then(|| format!("handle {base:?} is taken {place}: made {given:?}"))
}

/// The audit detail of an imported or updated object.
fn audit_detail(action: Action, source: &str, reasons: &[String]) -> String {
    let verb = match action {
        Action::Updated => "updated from",
        _ => "imported from",
    };
    if reasons.is_empty() {
        format!("{verb} {SOURCE_SYSTEM} {source}")
    } else {
        format!("{verb} {SOURCE_SYSTEM} {source}; {}", reasons.join("; "))
    }
}
