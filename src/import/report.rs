//! What an import did: counts per kind, what the registry has no place for (dropped, counted),
//! and one item for every object not taken over as it was, with what was done and why. Printed
//! as text and written as JSON. Holds no key, no key fragment and no user key digest: items
//! name objects by their source identity and say what happened in words.

use std::collections::BTreeMap;

use serde::Serialize;

/// The kinds of objects, in the order the import takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    User,
    ApiStandard,
    Definition,
    Instance,
    Share,
    Project,
}

/// What became of one source object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Created here.
    Imported,
    /// Found already in the registry (a seeded standard or `_system` definition) and used.
    Matched,
    /// Imported before; changed in the source since, so the registry's object was updated.
    Updated,
    /// Imported before and unchanged.
    Unchanged,
    /// Not taken over (nothing written for it).
    Skipped,
    /// Changed in the source and in the registry since the last import: left as the registry has it.
    Conflict,
}

/// Counts of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub imported: u64,
    pub matched: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub conflicts: u64,
    /// Imported or updated, but not exactly as the source had it (see the items).
    pub changed_on_the_way_in: u64,
}

/// One object not taken over as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub kind: Kind,
    /// Its identity in dhamps-vdb, e.g. `users/Alice Smith` or `instances/42`.
    pub source: String,
    /// What it became here, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub action: Action,
    /// Why, and what was changed on the way in.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// dhamps-vdb's schema version (3 or 4).
    pub schema_version: i32,
    pub dry_run: bool,
    pub counts: BTreeMap<Kind, Counts>,
    /// What the registry has no place for, by what it is: counts only.
    pub dropped: BTreeMap<&'static str, u64>,
    pub items: Vec<Item>,
}

impl Report {
    /// Counts one object; an item is kept when it was not taken over exactly as it was.
    pub fn add(
        &mut self,
        kind: Kind,
        source: String,
        target: Option<String>,
        action: Action,
        reasons: Vec<String>,
    ) {
        let counts = self.counts.entry(kind).or_default();
        match action {
            Action::Imported => counts.imported += 1,
            Action::Matched => counts.matched += 1,
            Action::Updated => counts.updated += 1,
            Action::Unchanged => counts.unchanged += 1,
            Action::Skipped => counts.skipped += 1,
            Action::Conflict => counts.conflicts += 1,
        }
        let written = matches!(action, Action::Imported | Action::Updated);
        if written && !reasons.is_empty() {
            counts.changed_on_the_way_in += 1;
        }
        let noteworthy = !reasons.is_empty()
            || !matches!(
                action,
                Action::Imported | Action::Updated | Action::Unchanged
            );
        if noteworthy {
            self.items.push(Item {
                kind,
                source,
                target,
                action,
                reasons,
            });
        }
    }

    /// Counts an object not taken over, and says why.
    pub fn skip(&mut self, kind: Kind, source: String, why: String) {
        self.add(kind, source, None, Action::Skipped, vec![why]);
    }

    /// Counts something the registry has no place for.
    pub fn drop_count(&mut self, what: &'static str, n: u64) {
        if n > 0 {
            *self.dropped.entry(what).or_default() += n;
        }
    }

    pub fn to_json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The report for a terminal. Source identities come from another system's data, so
    /// control characters in them are escaped rather than printed.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "dhamps-vdb import{} (source schema version {})",
            if self.dry_run {
                ", dry run: nothing was written"
            } else {
                ""
            },
            self.schema_version
        );
        let _ = writeln!(
            out,
            "{:<14}{:>9}{:>9}{:>9}{:>10}{:>9}{:>10}{:>9}",
            "kind",
            "imported",
            "matched",
            "updated",
            "unchanged",
            "skipped",
            "conflicts",
            "changed"
        );
        for (kind, c) in &self.counts {
            let _ = writeln!(
                out,
                "{:<14}{:>9}{:>9}{:>9}{:>10}{:>9}{:>10}{:>9}",
                kind_name(*kind),
                c.imported,
                c.matched,
                c.updated,
                c.unchanged,
                c.skipped,
                c.conflicts,
                c.changed_on_the_way_in
            );
        }
        if !self.dropped.is_empty() {
            let _ = writeln!(out, "dropped (no place for them here):");
            for (what, n) in &self.dropped {
                let _ = writeln!(out, "  {what}: {n}");
            }
        }
        for item in &self.items {
            let _ = writeln!(
                out,
                "{} {} {}{}: {}",
                action_name(item.action),
                kind_name(item.kind),
                printable(&item.source),
                item.target
                    .as_deref()
                    .map(|t| format!(" -> {t}"))
                    .unwrap_or_default(),
                printable(&item.reasons.join("; "))
            );
        }
        out
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so that another system's data
/// cannot move the cursor or recolour the terminal; everything else as it is.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::User => "user",
        Kind::ApiStandard => "api_standard",
        Kind::Definition => "definition",
        Kind::Instance => "instance",
        Kind::Share => "share",
        Kind::Project => "project",
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Imported => "imported",
        Action::Matched => "matched",
        Action::Updated => "updated",
        Action::Unchanged => "unchanged",
        Action::Skipped => "skipped",
        Action::Conflict => "conflict",
    }
}
