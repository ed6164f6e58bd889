//! Whether refusals of `x-llmr-act-as` tell which users exist by their timing (issue 25, point
//! 9): a service account restricted to one user names, in turn, users that exist and users that
//! do not (19 of each, every name as often as every other), none of which it may act for; the
//! refusal of each is timed. Prints the median and
//! 90th percentile of both kinds and how often a blind guess (by the midpoint of the medians)
//! tells them apart. Run by bench/act_as_timing.sh against a running server.

// Benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use clap::Parser;
use llm_registry::pb::v1::{
    self as pb, ServiceAccountPermission, llm_instance_service_client::LlmInstanceServiceClient,
    service_account_service_client::ServiceAccountServiceClient,
    user_service_client::UserServiceClient,
};
use tonic::{Request, transport::Channel};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    admin_token: String,
    /// Refusals timed of each kind.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(format!("http://{}", args.addr))?
        .connect()
        .await?;
    let users = UserServiceClient::new(channel.clone());
    for index in 0..20 {
        users
            .clone()
            .create_user(authed(
                pb::CreateUserRequest {
                    user_id: format!("timing-{index}"),
                    user: Some(pb::User {
                        display_name: "timing".into(),
                        ..Default::default()
                    }),
                },
                &args.admin_token,
            ))
            .await?;
    }
    let token = ServiceAccountServiceClient::new(channel.clone())
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                service_account_id: "timing".into(),
                service_account: Some(pb::ServiceAccount {
                    display_name: "timing".into(),
                    permissions: vec![ServiceAccountPermission::ActAsUser as i32],
                    act_for_users: vec!["users/timing-0".into()],
                    ..Default::default()
                }),
            },
            &args.admin_token,
        ))
        .await?
        .into_inner()
        .token;
    let mut instances = LlmInstanceServiceClient::new(channel);
    let mut refuse = async |user: String| {
        let mut request = authed(
            pb::ListInstancesRequest {
                parent: "users/timing-0".into(),
                ..Default::default()
            },
            &token,
        );
        request
            .metadata_mut()
            .insert("x-llmr-act-as", format!("users/{user}").parse().unwrap());
        let started = Instant::now();
        let answer = instances.list_instances(request).await;
        let took = started.elapsed();
        let status = answer.expect_err("every name here is refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        took
    };
    // Warm up both paths, then alternate, so that drift affects both kinds alike.
    for index in 0..200 {
        refuse(format!("timing-{}", 1 + index % 19)).await;
        refuse(format!("missing-{}", 1 + index % 19)).await;
    }
    let mut existing = Vec::with_capacity(args.samples);
    let mut missing = Vec::with_capacity(args.samples);
    for index in 0..args.samples {
        existing.push(refuse(format!("timing-{}", 1 + index % 19)).await);
        missing.push(refuse(format!("missing-{}", 1 + index % 19)).await);
    }
    let guess_threshold = {
        let mut e = existing.clone();
        let mut m = missing.clone();
        e.sort();
        m.sort();
        (quantile(&e, 0.5) + quantile(&m, 0.5)) / 2.0
    };
    let slower_is_missing = {
        let mut e = existing.clone();
        let mut m = missing.clone();
        e.sort();
        m.sort();
        quantile(&m, 0.5) >= quantile(&e, 0.5)
    };
    let right = existing
        .iter()
        .map(|d| (d.as_secs_f64() * 1000.0 < guess_threshold) == slower_is_missing)
        .chain(
            missing
                .iter()
                .map(|d| (d.as_secs_f64() * 1000.0 >= guess_threshold) == slower_is_missing),
        )
        .filter(|right| *right)
        .count();
    existing.sort();
    missing.sort();
    println!(
        "act-as refusals, {} of each: existing users p50 {:.3} ms p90 {:.3} ms; missing users p50 {:.3} ms p90 {:.3} ms; a guess by the midpoint is right {:.1}% of the time (50% is chance)",
        args.samples,
        quantile(&existing, 0.5),
        quantile(&existing, 0.9),
        quantile(&missing, 0.5),
        quantile(&missing, 0.9),
        right as f64 * 100.0 / (2 * args.samples) as f64
    );
    Ok(())
}
