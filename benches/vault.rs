//! The vault's cost per key: seal and open of a typical 64-byte provider key.

// Test and benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use criterion::{Criterion, criterion_group, criterion_main};
use llm_registry::vault::{ApiKey, KeyRing, MasterKey};

fn seal_and_open(c: &mut Criterion) {
    let ring = KeyRing::new(MasterKey::generate(), vec![]).unwrap_or_else(|e| panic!("{e}"));
    let key = ApiKey::new("sk-".to_owned() + &"x".repeat(61));
    let uid = "2f1c9a4e-8b6d-4f3a-9c2e-7d5b1a0e6f48";
    c.bench_function("vault seal 64-byte key", |b| {
        b.iter(|| ring.seal(&key, uid))
    });
    let sealed = ring.seal(&key, uid);
    c.bench_function("vault open 64-byte key", |b| {
        b.iter(|| ring.open(&sealed, uid))
    });
    c.bench_function("vault seal+open 64-byte key", |b| {
        b.iter(|| ring.open(&ring.seal(&key, uid), uid))
    });
}

criterion_group!(benches, seal_and_open);
criterion_main!(benches);
