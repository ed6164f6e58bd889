//! What every table of rows repeats, written once: fetch with a query already bound, map a
//! database error to the domain's, and turn each row into its domain value. Used for one row
//! (by key, or locked for the rest of a change), the rows of a page after a cursor, and a row a
//! write returns.

use sqlx::{
    Executor, FromRow, Postgres,
    postgres::{PgArguments, PgRow},
    query::QueryAs,
};

use super::errors;
use crate::domain::DomainError;

/// A row of a table that becomes a domain value.
pub trait DomainRow: for<'r> FromRow<'r, PgRow> + Send + Unpin {
    type Domain;

    fn into_domain(self) -> Result<Self::Domain, DomainError>;
}

/// A query of rows of `R`, its parameters bound.
pub type RowQuery<'q, R> = QueryAs<'q, Postgres, R, PgArguments>;

/// The row the query finds, if any.
pub async fn optional<'q, 'e, 'c: 'e, R, E>(
    query: RowQuery<'q, R>,
    executor: E,
) -> Result<Option<R::Domain>, DomainError>
where
    'q: 'e,
    R: DomainRow + 'e,
    E: 'e + Executor<'c, Database = Postgres>,
{
    query
        .fetch_optional(executor)
        .await
        .map_err(errors::db)?
        .map(DomainRow::into_domain)
        .transpose()
}

/// The one row the query must return (a write's `RETURNING`, a row known to exist).
pub async fn one<'q, 'e, 'c: 'e, R, E>(
    query: RowQuery<'q, R>,
    executor: E,
) -> Result<R::Domain, DomainError>
where
    'q: 'e,
    R: DomainRow + 'e,
    E: 'e + Executor<'c, Database = Postgres>,
{
    query
        .fetch_one(executor)
        .await
        .map_err(errors::db)?
        .into_domain()
}

/// Every row the query returns (a page).
pub async fn all<'q, 'e, 'c: 'e, R, E>(
    query: RowQuery<'q, R>,
    executor: E,
) -> Result<Vec<R::Domain>, DomainError>
where
    'q: 'e,
    R: DomainRow + 'e,
    E: 'e + Executor<'c, Database = Postgres>,
{
    query
        .fetch_all(executor)
        .await
        .map_err(errors::db)?
        .into_iter()
        .map(DomainRow::into_domain)
        .collect()
}

/// The row an INSERT returns; a taken key is ALREADY_EXISTS naming `name`
/// ([`errors::on_insert`]).
pub async fn inserted<'q, 'e, 'c: 'e, R, E>(
    query: RowQuery<'q, R>,
    executor: E,
    name: &str,
) -> Result<R::Domain, DomainError>
where
    'q: 'e,
    R: DomainRow + 'e,
    E: 'e + Executor<'c, Database = Postgres>,
{
    query
        .fetch_one(executor)
        .await
        .map_err(|error| errors::on_insert(error, name))?
        .into_domain()
}
