//! `import-dhamps-vdb`: brings a dhamps-vdb deployment over (users with their existing API keys
//! as bearer tokens, API standards, definitions, instances with their provider keys re-sealed,
//! shares and projects), in one transaction, repeatably. docs/migrating-from-dhamps-vdb.md is
//! the operator's guide and holds the mapping table.
//!
//! - [`source`] reads dhamps-vdb (schema 3 or 4) in one read-only snapshot, streaming rows;
//! - [`dhamps_keys`] opens the keys dhamps-vdb sealed; [`text`] turns its names and texts into
//!   what the registry accepts;
//! - one module per kind ([`users`], [`standards`], [`definitions`], [`instances`], [`shares`],
//!   [`projects`]) decides, chunk by chunk, what each row becomes; `crate::store::import` writes
//!   it, with the ledger that makes a second run import nothing twice;
//! - [`report`] says what was done, and why where an object was not taken over as it was.
//!
//! Memory stays flat whatever the size of the source: rows come in chunks of [`CHUNK`], and
//! every cross-reference (a share's instance, a project's owner) is looked up in the ledger,
//! inside the import's transaction, rather than kept in maps.

mod definitions;
mod dhamps_keys;
mod instances;
mod ledger;
mod projects;
mod report;
mod shares;
mod source;
mod standards;
mod text;
mod users;

pub use report::Report;

use std::pin::pin;

use futures_util::StreamExt as _;
use zeroize::Zeroizing;

use crate::{
    store::{Store, import::ImportTx},
    vault::KeyRing,
};
use dhamps_keys::DhampsKeys;
use report::Kind;
use source::{SchemaVersion, Source};

/// The ledger's name for the source system, and the audit trail's caller and method.
pub const SOURCE_SYSTEM: &str = "dhamps-vdb";
pub const COMMAND: &str = "import-dhamps-vdb";

/// Source rows handled per round trip to the registry.
const CHUNK: usize = 1000;

/// What the operator asked for.
pub struct ImportOptions {
    /// The dhamps-vdb database (may hold a password: never printed).
    pub source_url: Zeroizing<String>,
    /// dhamps-vdb's `ENCRYPTION_KEY` strings, the current one first.
    pub source_keys: Vec<Zeroizing<String>>,
    /// The zone of dhamps-vdb's timestamps, which have none.
    pub source_timezone: String,
    /// Everything but the commit.
    pub dry_run: bool,
}

/// Never shows the source URL (it may hold a password) or the keys.
impl std::fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("source_url", &"<redacted>")
            .field(
                "source_keys",
                &format_args!("{} key(s), redacted", self.source_keys.len()),
            )
            .field("source_timezone", &self.source_timezone)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// What every kind's step works with: the registry's transaction, the vault, the source's keys
/// and the report being written.
struct Import<'a> {
    tx: ImportTx,
    ring: &'a KeyRing,
    source_keys: DhampsKeys,
    version: SchemaVersion,
    report: Report,
}

/// Feeds the rows of a source stream to a kind's step, [`CHUNK`] at a time.
macro_rules! in_chunks {
    ($rows:expr, $step:path, $import:expr) => {{
        let mut chunks = pin!($rows.chunks(CHUNK));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
            $step($import, chunk).await?;
        }
    }};
}

/// Runs the import: reads the whole source, writes the registry in one transaction (committed
/// unless `dry_run`), and returns the report. Any error leaves the registry as it was.
pub async fn run(store: &Store, ring: &KeyRing, options: &ImportOptions) -> anyhow::Result<Report> {
    let mut source = Source::open(&options.source_url, &options.source_timezone).await?;
    let source_keys = DhampsKeys::new(&options.source_keys);
    if source.version == SchemaVersion::V4 && source_keys.is_empty() {
        anyhow::bail!(
            "the dhamps-vdb database (schema version 4) keeps provider keys encrypted: give its \
             ENCRYPTION_KEY in DHAMPS_ENCRYPTION_KEY or --source-encryption-key-file"
        );
    }
    let tx = store.begin_import(SOURCE_SYSTEM, COMMAND).await?;
    let mut import = Import {
        tx,
        ring,
        source_keys,
        version: source.version,
        report: Report {
            schema_version: source.version.number(),
            dry_run: options.dry_run,
            ..Report::default()
        },
    };
    for kind in [
        Kind::User,
        Kind::ApiStandard,
        Kind::Definition,
        Kind::Instance,
        Kind::Share,
        Kind::Project,
    ] {
        import.report.counts.entry(kind).or_default();
    }
    // In dependency order: each kind finds what it refers to already written.
    in_chunks!(source.users(), users::import, &mut import);
    in_chunks!(source.standards(), standards::import, &mut import);
    in_chunks!(source.definitions(), definitions::import, &mut import);
    in_chunks!(source.instances(), instances::import, &mut import);
    in_chunks!(source.shares(), shares::import, &mut import);
    in_chunks!(source.projects(), projects::import, &mut import);
    source.close().await?;
    let Import { tx, report, .. } = import;
    if options.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}
