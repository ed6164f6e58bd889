//! Connecting, creating the database (development mode) and applying migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Migrations compiled into the binary; sqlx serializes concurrent runs with an advisory lock,
/// so several replicas starting at once apply each migration exactly once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Acquiring a connection waits at most `acquire_timeout`, so an outage turns into
/// UNAVAILABLE answers rather than requests that hang; with a `statement_timeout`, PostgreSQL
/// cancels (and rolls back) any statement that runs longer, so a stuck statement (a lock held
/// elsewhere) cannot hold a connection or a create batch's slot forever.
pub async fn connect(
    url: &str,
    max_connections: u32,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<PgPool> {
    // Notices (`relation "_sqlx_migrations" already exists, skipping` on every start) say
    // nothing to an operator; warnings and errors still come through.
    let mut options = PgConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Debug)
        .options([("client_min_messages", "warning")]);
    if let Some(timeout) = statement_timeout {
        options = options.options([("statement_timeout", format!("{}", timeout.as_millis()))]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        // One trace event per acquisition with its wait: the pool-wait metric
        // (telemetry::pool_waits) is made from them; the log never shows them.
        .acquire_time_level(tracing::log::LevelFilter::Trace)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// The host and port `url` names (never its user or password), for messages.
pub fn server_address(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => format!("{}:{}", options.get_host(), options.get_port()),
        Err(_) => "the address in DATABASE_URL".to_owned(),
    }
}

/// Creates the database named in `url` if it does not exist (development mode). Connects to the
/// server's `postgres` database to do so; a concurrent creator winning the race is fine.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<bool> {
    let target = PgConnectOptions::from_str(url)?;
    let Some(name) = target.get_database().map(str::to_owned) else {
        return Ok(false);
    };
    let mut admin = PgConnection::connect_with(&target.clone().database("postgres")).await?;
    // Concurrent CREATE DATABASE calls can fail on each other (the template is busy), so
    // creators take turns under an advisory lock; the winner creates, the others find it.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(CREATE_DATABASE_LOCK)
        .execute(&mut admin)
        .await?;
    let created = create_locked(&mut admin, &name).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(CREATE_DATABASE_LOCK)
        .execute(&mut admin)
        .await;
    created
}

/// An arbitrary, fixed advisory lock key for database creation.
const CREATE_DATABASE_LOCK: i64 = 0x6c6c_6d72_6462;

async fn create_locked(admin: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(false);
    }
    // The one statement whose text is built at run time, and why: CREATE DATABASE takes its name
    // as an identifier, never as a parameter. The name comes from the operator's DATABASE_URL
    // and is quoted as an identifier (doubled quotes), so it cannot end the statement.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut *admin)
        .await?;
    Ok(true)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let applied_before = applied_migrations(pool).await;
    MIGRATOR.run(pool).await?;
    let applied_now = applied_migrations(pool).await;
    let ran = applied_now.saturating_sub(applied_before);
    tracing::info!(
        applied = ran,
        total = applied_now,
        "{}",
        if ran == 0 {
            "migrations: the schema is current"
        } else {
            "migrations applied"
        }
    );
    Ok(())
}

/// How many migrations the database records as applied (0 before the first).
async fn applied_migrations(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}
