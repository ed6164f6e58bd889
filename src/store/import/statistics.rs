//! Planner statistics for the tables an import fills. An import writes a hundred thousand rows in
//! one transaction and looks rows up in the same tables between writes; with the statistics of
//! the empty tables it started on, PostgreSQL plans those lookups as scans (measured: a ledger
//! lookup of 1,000 keys took 1.1 s at 100,000 instances, the import 234 s). `ANALYZE` inside the
//! transaction counts the transaction's own rows, so each table is analyzed whenever it has
//! doubled since it last was: a handful of times per table, a few milliseconds each.

use anyhow::Context as _;

use super::ImportTx;

/// The tables an import writes and reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Ledger,
    Users,
    ApiStandards,
    Definitions,
    Instances,
    Shares,
    Projects,
}

impl Table {
    const ALL: usize = 7;

    fn index(self) -> usize {
        self as usize
    }

    fn analyze_sql(self) -> &'static str {
        match self {
            Self::Ledger => "ANALYZE import_ledger",
            Self::Users => "ANALYZE users",
            Self::ApiStandards => "ANALYZE api_standards",
            Self::Definitions => "ANALYZE definitions",
            Self::Instances => "ANALYZE instances",
            Self::Shares => "ANALYZE shares",
            Self::Projects => "ANALYZE projects",
        }
    }
}

/// Rows written per table since its last `ANALYZE`, and how many it had then (at least 1,000).
#[derive(Debug, Clone)]
pub struct Growth {
    written: [u64; Table::ALL],
    analyzed_at: [u64; Table::ALL],
}

impl Default for Growth {
    fn default() -> Self {
        Self {
            written: [0; Table::ALL],
            analyzed_at: [1000; Table::ALL],
        }
    }
}

impl ImportTx {
    /// Counts `rows` written to `table`; analyzes it once it has doubled.
    pub(super) async fn wrote(&mut self, table: Table, rows: usize) -> anyhow::Result<()> {
        let i = table.index();
        self.growth.written[i] += rows as u64;
        if self.growth.written[i] < self.growth.analyzed_at[i] {
            return Ok(());
        }
        sqlx::query(table.analyze_sql())
            .execute(&mut *self.tx)
            .await
            .context("refreshing planner statistics")?;
        self.growth.analyzed_at[i] += self.growth.written[i];
        self.growth.written[i] = 0;
        Ok(())
    }
}
