//! PostgreSQL access: every query and transaction of the service. Database errors are turned
//! into domain errors here (by SQLSTATE), so nothing above this layer sees sqlx.
//!
//! Every write goes through [`change::Change`] (lock, policy, etag, write, audit, commit), except
//! instance creates, which are group-committed ([`group_commit`], [`instances::create_batches`]),
//! and instance updates, which are optimistic (`instances/write.rs`) and group-committed too
//! (`instances/update_batches.rs`). Lists page with the typed cursors of
//! [`cursor`].

mod api_standards;
mod audit;
mod change;
mod cursor;
mod data_keys;
pub mod database;
mod definitions;
mod dependents;
mod errors;
mod group_commit;
pub mod import;
mod instances;
mod keys;
mod projects;
mod quota_leases;
mod quota_settlements;
mod quotas;
mod rate_windows;
mod read_cache;
pub mod retention;
mod rows;
mod scope_probe;
mod service_accounts;
mod shares;
mod usage;
mod usage_events;
mod users;

pub use audit::{AuditFilter, Visibility};
pub use instances::NewInstance;
pub use quotas::Window as QuotaWindow;
pub use usage_events::UsageEvent;

use std::sync::Arc;

use sqlx::PgPool;

use crate::domain::DomainError;
use group_commit::GroupCommit;
use instances::{create_batches::CreateBatch, update_batches::UpdateBatch};
use read_cache::{Fresh, ReadCache};
use scope_probe::ScopeProbe;
use usage_events::UsageEvents;

/// Connections for usage events and quota reservations: each is one short statement.
const USAGE_CONNECTIONS: u32 = 8;

/// The service's handle on the database; cheap to clone (the pool and the cache are shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    cache: Arc<ReadCache>,
    scope_probe: Arc<ScopeProbe>,
    /// Concurrent instance creates, written together.
    create_batches: Arc<GroupCommit<CreateBatch>>,
    /// Concurrent instance updates, written together.
    update_batches: Arc<GroupCommit<UpdateBatch>>,
    /// Usage events (Embed, TestInstance), group-committed on their own connections.
    usage: Arc<UsageEvents>,
    /// Quota reservations, group-committed on the usage connections.
    reservations: Arc<GroupCommit<quotas::ReserveBatch>>,
    /// Quota settlements, written after the calls by a task of their own.
    settlements: Arc<quota_settlements::QuotaSettlements>,
    /// The version of an instance each caller last wrote, where its next update starts.
    update_hints: Arc<instances::UpdateHints>,
}

impl Store {
    /// A store on `pool` whose read cache holds at most `cache_capacity` answers (0: no cache).
    pub fn new(pool: PgPool, cache_capacity: usize) -> Self {
        let cache = Arc::new(ReadCache::new(cache_capacity));
        let scope_probe = ScopeProbe::new((*pool.connect_options()).clone(), cache.clone());
        let usage_options = (*pool.connect_options())
            .clone()
            .options([("synchronous_commit", "off")]);
        let usage_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(USAGE_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .test_before_acquire(false)
            .connect_lazy_with(usage_options);
        Self {
            reservations: quotas::reservations(usage_pool.clone()),
            settlements: quota_settlements::QuotaSettlements::new(usage_pool.clone()),
            usage: UsageEvents::new(usage_pool),
            create_batches: GroupCommit::new(pool.clone()),
            update_batches: GroupCommit::new(pool.clone()),
            pool,
            cache,
            scope_probe,
            update_hints: Arc::default(),
        }
    }

    /// Proof that the scopes changed before the caller began have been applied to the cache
    /// (see [`read_cache`]); `None` when the cache is off or the database did not answer, in
    /// which case the caller reads the database.
    async fn fresh(&self) -> Option<Fresh> {
        if !self.cache.enabled() {
            return None;
        }
        self.scope_probe.fresh().await
    }

    /// Closes the pool and the read cache's own connection (on shutdown).
    pub async fn close(&self) {
        self.scope_probe.close();
        self.usage.close().await;
        self.pool.close().await;
    }

    /// Whether the database answers; drives the health status.
    /// Sets the gauges that mirror the pool and the read cache (called at each scrape).
    pub fn sample_metrics(&self) {
        let metrics = crate::metrics::metrics();
        metrics.db_pool_connections.set(i64::from(self.pool.size()));
        metrics
            .db_pool_idle
            .set(i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX));
        metrics
            .db_pool_max
            .set(i64::from(self.pool.options().get_max_connections()));
        metrics
            .cache_entries
            .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
    }

    pub async fn ping(&self) -> Result<(), DomainError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(errors::db)?;
        Ok(())
    }

    /// The id of a user row, or NOT_FOUND naming `users/{handle}`.
    async fn user_id<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        handle: &str,
    ) -> Result<i64, DomainError> {
        sqlx::query_scalar("SELECT id FROM users WHERE handle = $1")
            .bind(handle)
            .fetch_optional(executor)
            .await
            .map_err(errors::db)?
            .ok_or_else(|| DomainError::NotFound(format!("users/{handle}")))
    }

    /// The id of an API standard referenced by a request field, or INVALID_ARGUMENT on that field.
    async fn api_standard_id<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        field: &str,
        handle: &str,
    ) -> Result<i64, DomainError> {
        sqlx::query_scalar("SELECT id FROM api_standards WHERE handle = $1")
            .bind(handle)
            .fetch_optional(executor)
            .await
            .map_err(errors::db)?
            .ok_or_else(|| {
                DomainError::invalid(field, format!("unknown API standard apiStandards/{handle}"))
            })
    }
}
