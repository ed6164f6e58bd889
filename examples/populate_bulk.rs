//! Populates a migrated registry database in bulk with SQL `COPY`, for the scale benchmark
//! (bench/scale.sh): users with tokens, instances whose keys are sealed by the vault (the real
//! `KeyRing`, so the service and `rotate-keys` can open them), shares and audit events. A million
//! instances take a minute, not the hours the API would.
//!
//! The layout matches the API benchmark's (examples/loadgen.rs), so the same scenarios run on
//! it: `owner-0` owns instances `i0`..`i999`; the other instances `i{n}` are spread over
//! `owner-1`..; the user `bench` holds a reader share of the first 10,000 instances; the other
//! shares go to other users. Audit events are updates of instances by their owners. The tokens of
//! `bench` and `owner-0` are written to `--tokens-out` as `HANDLE=TOKEN` lines.
//!
//! Triggers are off while loading (`session_replication_role = replica`, as a restore does):
//! nothing is cached yet, and the references are made consistent by construction.

// Benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::{fmt::Write as _, time::Instant};

use clap::Parser;
use llm_registry::{
    IssuedToken,
    vault::{ApiKey, KeyRing, MasterKey},
};
use sqlx::{Connection, PgConnection};

#[derive(Parser)]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The service's primary master key (base64), which seals the keys.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    encryption_key: String,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[arg(long, default_value_t = 1_000_000)]
    instances: usize,
    #[arg(long, default_value_t = 200_000)]
    shares: usize,
    #[arg(long, default_value_t = 1_000_000)]
    audit_events: usize,
    #[arg(long)]
    tokens_out: std::path::PathBuf,
}

/// Rows per COPY chunk sent.
const CHUNK: usize = 20_000;
/// Instances `owner-0` owns (the loadgen's GetInstance targets).
const OWNER0_INSTANCES: usize = 1000;
/// Instances shared with `bench` (deep enough for the loadgen's page 100).
const BENCH_SHARES: usize = 10_000;

/// The owner index of instance `n` (users are `bench` = 0, then `owner-{k}` = k + 1).
fn owner_of(n: usize, owners: usize) -> usize {
    if n < OWNER0_INSTANCES {
        0
    } else {
        1 + (n - OWNER0_INSTANCES) % (owners - 1)
    }
}

async fn copy(
    db: &mut PgConnection,
    statement: &str,
    rows: usize,
    mut row: impl FnMut(usize, &mut String),
) -> anyhow::Result<()> {
    let mut copy = db.copy_in_raw(statement).await?;
    let mut buffer = String::new();
    for n in 0..rows {
        row(n, &mut buffer);
        if (n + 1) % CHUNK == 0 {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    copy.finish().await?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + 3);
    out.push_str("\\\\x");
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.users >= 3, "at least 3 users");
    anyhow::ensure!(
        args.instances >= BENCH_SHARES,
        "at least {BENCH_SHARES} instances"
    );
    let ring = KeyRing::new(MasterKey::from_base64(&args.encryption_key)?, vec![])?;
    let mut db = PgConnection::connect(&args.database_url).await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await?;
    let started = Instant::now();
    let owners = args.users - 1;

    // Users: `bench`, then `owner-0`, `owner-1`, ...; a token each (hashes stored).
    let mut tokens = Vec::new();
    copy(
        &mut db,
        "COPY users (handle, token_hash) FROM STDIN",
        args.users,
        |u, out| {
            let token = IssuedToken::generate();
            let handle = if u == 0 {
                "bench".to_owned()
            } else {
                format!("owner-{}", u - 1)
            };
            let _ = writeln!(out, "{handle}\t{}", hex(&token.hash()));
            if u <= 1 {
                tokens.push(format!(
                    "{}={}",
                    if u == 0 { "BENCH" } else { "OWNER" },
                    token.reveal()
                ));
            }
        },
    )
    .await?;
    std::fs::write(&args.tokens_out, tokens.join("\n") + "\n")?;
    let first_user: i64 = sqlx::query_scalar("SELECT id FROM users WHERE handle = 'bench'")
        .fetch_one(&mut db)
        .await?;
    let standard: i64 = sqlx::query_scalar("SELECT id FROM api_standards WHERE handle = 'openai'")
        .fetch_one(&mut db)
        .await?;
    let user_id = |u: usize| first_user + u as i64;
    println!(
        "users: {} in {:.1} s",
        args.users,
        started.elapsed().as_secs_f64()
    );

    // Instances, each with its key sealed for its own uid.
    copy(
        &mut db,
        "COPY instances (uid, owner_id, handle, endpoint, api_standard_id, model, dimensions, \
         api_key_ciphertext, api_key_key_id) FROM STDIN",
        args.instances,
        |n, out| {
            let uid = uuid::Uuid::new_v4().hyphenated().to_string();
            let sealed = ring.seal(&ApiKey::new(format!("sk-scale-{n:032}")), &uid);
            let _ = writeln!(
                out,
                "{uid}\t{}\ti{n}\thttps://api.openai.com/v1/embeddings\t{standard}\ttext-embedding-3-small\t1536\t{}\t{}",
                user_id(1 + owner_of(n, owners)),
                hex(&sealed.ciphertext),
                sealed.key_id
            );
        },
    )
    .await?;
    let first_instance: i64 =
        sqlx::query_scalar("SELECT min(id) FROM instances WHERE handle = 'i0'")
            .fetch_one(&mut db)
            .await?;
    println!(
        "instances: {} in {:.1} s",
        args.instances,
        started.elapsed().as_secs_f64()
    );

    // Shares: `bench` reads the first 10,000 instances; the rest go to other users (never the
    // owner, never `bench`), one per instance from the top, so no pair repeats.
    copy(
        &mut db,
        "COPY shares (instance_id, grantee_id, role) FROM STDIN",
        args.shares,
        |k, out| {
            let (n, grantee) = if k < BENCH_SHARES {
                (k, 0)
            } else {
                let n = args.instances - 1 - (k - BENCH_SHARES) % args.instances;
                let owner = 1 + owner_of(n, owners);
                // Any user but `bench` (0) and the owner.
                let mut grantee = 1 + (owner + k % 7) % (args.users - 1);
                if grantee == owner {
                    grantee = 1 + grantee % (args.users - 1);
                }
                (n, grantee)
            };
            let _ = writeln!(
                out,
                "{}\t{}\treader",
                first_instance + n as i64,
                user_id(grantee)
            );
        },
    )
    .await?;
    println!(
        "shares: {} in {:.1} s",
        args.shares,
        started.elapsed().as_secs_f64()
    );

    // Audit events: updates of instances by their owners, spread over all instances.
    copy(
        &mut db,
        "COPY audit_events (caller, method, resource, resource_owner, outcome, detail) FROM STDIN",
        args.audit_events,
        |k, out| {
            let n = (k * 7919) % args.instances;
            let owner = owner_of(n, owners);
            let _ = writeln!(
                out,
                "users/owner-{owner}\tLlmInstanceService/UpdateInstance\tusers/owner-{owner}/instances/i{n}\towner-{owner}\tOK\t"
            );
        },
    )
    .await?;
    println!(
        "audit events: {} in {:.1} s",
        args.audit_events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
