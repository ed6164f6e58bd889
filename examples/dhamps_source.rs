//! Builds a dhamps-vdb database (schema 4, from tests/fixtures/dhamps_vdb_v4.sql) of any size for
//! the import benchmark (bench/import_dhamps.sh): `--instances` instances with provider keys
//! sealed as dhamps-vdb seals them, one user per ten instances, a share for every other instance
//! and a project for every other instance, bound to an instance its owner owns. One handle in a
//! hundred has a space and capitals, so that part of the import normalizes.

// Benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Instant;

use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, aead::Aead as _};
use clap::Parser;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::{Connection as _, PgConnection};

#[derive(Parser)]
struct Args {
    /// The (empty, existing) database to fill.
    #[arg(long)]
    database_url: String,
    /// dhamps-vdb's ENCRYPTION_KEY, under which the provider keys are sealed.
    #[arg(long, env = "DHAMPS_ENCRYPTION_KEY", hide_env_values = true)]
    encryption_key: String,
    #[arg(long, default_value_t = 100_000)]
    instances: usize,
}

/// Rows per INSERT.
const CHUNK: usize = 10_000;

fn user_handle(n: usize) -> String {
    if n % 100 == 7 {
        format!("User {n}")
    } else {
        format!("user{n}")
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let mut db = PgConnection::connect(&args.database_url).await.unwrap();
    sqlx::raw_sql(include_str!("../tests/fixtures/dhamps_vdb_v4.sql"))
        .execute(&mut db)
        .await
        .unwrap();
    let users = args.instances.div_ceil(10);
    for start in (0..users).step_by(CHUNK) {
        let handles: Vec<String> = (start..(start + CHUNK).min(users))
            .map(user_handle)
            .collect();
        let digests: Vec<String> = handles
            .iter()
            .map(|h| {
                Sha256::digest(format!("key of {h}").as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        sqlx::query(
            "INSERT INTO users SELECT h, h, h || '@example.org', d, now(), now() \
             FROM unnest($1::text[], $2::text[]) AS x(h, d)",
        )
        .bind(&handles)
        .bind(&digests)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let cipher = Aes256Gcm::new(
        Sha256::digest(args.encryption_key.as_bytes())
            .as_slice()
            .into(),
    );
    for start in (0..args.instances).step_by(CHUNK) {
        let range = start..(start + CHUNK).min(args.instances);
        let owners: Vec<String> = range.clone().map(|n| user_handle(n / 10)).collect();
        let handles: Vec<String> = range
            .clone()
            .map(|n| {
                if n % 100 == 3 {
                    format!("Emb {n}")
                } else {
                    format!("emb{n}")
                }
            })
            .collect();
        let sealed: Vec<Vec<u8>> = range
            .clone()
            .map(|n| {
                let mut nonce = [0u8; 12];
                rand::rng().fill_bytes(&mut nonce);
                let mut out = nonce.to_vec();
                let key = format!("sk-bench-{n:08}-{:016x}", rand::rng().next_u64());
                out.extend(
                    cipher
                        .encrypt(Nonce::from_slice(&nonce), key.as_bytes())
                        .unwrap(),
                );
                out
            })
            .collect();
        sqlx::query(
            "INSERT INTO instances (instance_handle, owner, endpoint, description, api_standard, \
                 model, dimensions, created_at, updated_at, context_limit, definition_id, \
                 api_key_encrypted) \
             SELECT h, o, 'https://api.openai.com/v1/embeddings', 'bench', 'openai', \
                 'text-embedding-3-small', 1536, now(), now(), 8191, 2, k \
             FROM unnest($1::text[], $2::text[], $3::bytea[]) AS x(h, o, k)",
        )
        .bind(&handles)
        .bind(&owners)
        .bind(&sealed)
        .execute(&mut db)
        .await
        .unwrap();
    }
    // Every other instance (ids are 1-based, in insertion order) shared with the next user.
    let shared: Vec<usize> = (0..args.instances).filter(|n| n % 2 == 1).collect();
    for chunk in shared.chunks(CHUNK) {
        let grantees: Vec<String> = chunk
            .iter()
            .map(|n| user_handle((n / 10 + 1) % users))
            .collect();
        let ids: Vec<i32> = chunk
            .iter()
            .map(|n| i32::try_from(n + 1).unwrap())
            .collect();
        let roles: Vec<&str> = chunk
            .iter()
            .map(|n| if n % 4 == 1 { "editor" } else { "reader" })
            .collect();
        sqlx::query(
            "INSERT INTO instances_shared_with SELECT u, i, r, now(), now() \
             FROM unnest($1::text[], $2::integer[], $3::text[]) AS x(u, i, r)",
        )
        .bind(&grantees)
        .bind(&ids)
        .bind(&roles)
        .execute(&mut db)
        .await
        .unwrap();
    }
    // And a project for each of the others, bound to it.
    sqlx::query(
        "INSERT INTO projects (project_handle, owner, description, created_at, updated_at, instance_id) \
         SELECT 'p' || instance_id, owner, 'bench project', now(), now(), instance_id \
         FROM instances WHERE instance_id % 2 = 1",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
    println!(
        "dhamps-vdb source: {} instances, {users} users, built in {:.1}s",
        args.instances,
        started.elapsed().as_secs_f64()
    );
}
