//! Fixed one-minute windows counted in PostgreSQL, shared by every replica: the per-instance
//! provider call rate (`provider_rate_windows`) and the per-service-account credential release
//! rate (`credential_release_windows`). One row per key, moved forward in place, so a table never
//! holds more rows than there are keys.

use std::time::Duration;

use sqlx::{PgPool, Row};

/// A table of windows and the column that keys it (both fixed here, never from a request).
pub(super) enum Windows {
    ProviderCalls,
    CredentialReleases,
}

impl Windows {
    /// The statement that counts one more use in the current minute, answering the count and
    /// the seconds left in the window.
    fn statement(&self) -> &'static str {
        macro_rules! take {
            ($table:literal, $key:literal) => {
                concat!(
                    "INSERT INTO ", $table, " AS w (", $key, ", window_start, used) \
                     VALUES ($1, date_trunc('minute', now()), 1) \
                     ON CONFLICT (", $key, ") DO UPDATE SET \
                       used = CASE WHEN w.window_start = EXCLUDED.window_start THEN w.used + 1 ELSE 1 END, \
                       window_start = EXCLUDED.window_start \
                     RETURNING used, \
                       EXTRACT(EPOCH FROM (window_start + interval '1 minute' - clock_timestamp()))::float8 \
                       AS seconds_left"
                )
            };
        }
        match self {
            Windows::ProviderCalls => take!("provider_rate_windows", "instance_id"),
            Windows::CredentialReleases => {
                take!("credential_release_windows", "service_account_id")
            }
        }
    }
}

/// Counts one use by `key` in the current calendar minute; answers how long until the window
/// ends when the use is over `limit` (at most `limit` uses start in any minute).
pub(super) async fn take_slot(
    pool: &PgPool,
    windows: Windows,
    key: i64,
    limit: u32,
) -> Result<Option<Duration>, sqlx::Error> {
    let row = sqlx::query(windows.statement())
        .bind(key)
        .fetch_one(pool)
        .await?;
    let used: i32 = row.try_get("used")?;
    let seconds_left: f64 = row.try_get("seconds_left")?;
    if u32::try_from(used).unwrap_or(u32::MAX) <= limit {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(
        seconds_left.clamp(0.001, 60.0),
    )))
}
