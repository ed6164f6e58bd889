//! The benchmark's fake provider (see bench/run.sh): the tests' OpenAI-format fake
//! (tests/api/fake_provider.rs) as a process of its own, answering at once over HTTPS. Writes its
//! run-time CA to `--ca-out` (for the registry's PROVIDER_CA_FILE and the load generator) and
//! prints `address=…` once it listens.

// Test and benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../tests/api/fake_provider.rs"]
mod fake_provider;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Where to write the PEM of the CA that signed the fake's certificate.
    #[arg(long)]
    ca_out: std::path::PathBuf,
    /// The dimensions of the vectors it returns.
    #[arg(long, default_value_t = 1536)]
    dimensions: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake =
        fake_provider::FakeProvider::start(fake_provider::Flavor::OpenAi, args.dimensions).await;
    fake.stop_recording();
    std::fs::write(&args.ca_out, &fake_provider::TestCa::get().ca_pem)?;
    println!("address={}", fake.addr);
    std::future::pending::<()>().await;
    Ok(())
}
