//! PostgreSQL access: every query and transaction of the service. Database errors are turned
//! into domain errors here (by SQLSTATE), so nothing above this layer sees sqlx.

mod api_standards;
mod audit;
mod blockers;
pub mod database;
mod definitions;
mod errors;
mod instances;
mod keys;
mod projects;
mod shares;
mod users;

pub use audit::AuditFilter;
pub use instances::NewInstance;
pub use keys::RotationReport;

use sqlx::PgPool;

use crate::domain::DomainError;

/// The service's handle on the database; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers; drives the health status.
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
