//! The benchmark's load generator (see bench/run.sh): populates a registry through its API and
//! measures requests per second and latency percentiles of one scenario at one concurrency.
//! Measurements go over bare HTTP/2 (the `h2` crate, as h2load would send them), so that the
//! client costs little next to the server; populating uses the generated tonic clients.

// Test and benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::future::join_all;
use llm_registry::pb::v1::{
    self as pb, llm_instance_service_client::LlmInstanceServiceClient,
    project_service_client::ProjectServiceClient, sharing_service_client::SharingServiceClient,
    user_service_client::UserServiceClient,
};
use prost::Message;
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
struct Args {
    /// The server, e.g. 127.0.0.1:50051.
    #[arg(long)]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates users, instances with keys, shares and projects; prints the bench user's token.
    Populate {
        #[arg(long)]
        admin_token: String,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        owners: usize,
        #[arg(long, default_value_t = 1000)]
        instances_per_owner: usize,
        #[arg(long, default_value_t = 100)]
        projects: usize,
    },
    /// Creates `users` users (`m0`, `m1`, ...) with `instances_per_user` instances each (with
    /// keys), for the mixed scenarios; writes the users' tokens, one per line, to `tokens_out`.
    PopulateMixed {
        #[arg(long)]
        admin_token: String,
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        instances_per_user: usize,
        #[arg(long)]
        tokens_out: std::path::PathBuf,
    },
    /// Waits (up to 10 s) until health says SERVING; fails otherwise.
    Wait,
    /// Runs one scenario and prints `scenario concurrency rps p50_ms p99_ms errors`.
    Measure {
        #[arg(long)]
        token: String,
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// For `provider-direct`: the PEM of the CA that signed the fake provider's certificate.
        #[arg(long)]
        provider_ca: Option<std::path::PathBuf>,
        /// For `provider-direct`: the API key sent to the fake provider.
        #[arg(long, default_value = "")]
        provider_key: String,
        /// For `mixed` and `mixed-reads`: the tokens written by `populate-mixed`.
        #[arg(long)]
        tokens_file: Option<std::path::PathBuf>,
        /// For `mixed` and `mixed-reads`: instances per user, as populated.
        #[arg(long, default_value_t = 10)]
        instances_per_user: usize,
        /// With this token, one more stream (on a connection of its own) updates
        /// `users/owner-1/instances/i1000` without pause while the scenario runs: a writer to
        /// another tenant's instance, whose rate is printed on standard error.
        #[arg(long)]
        writer_token: Option<String>,
    },
    /// Creates `users/bench/instances/embed`, holding `key`, at `endpoint` (the fake provider),
    /// and the project `users/bench/projects/embed` bound to it.
    CreateEmbedInstance {
        #[arg(long)]
        token: String,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        key: String,
    },
    /// With owner-1's `token`: creates `users/owner-1/instances/embed-shared` and
    /// `.../embed-quota` at `endpoint` holding `key`, both shared with `bench` as a reader; the
    /// second with a budget and a quota on bench's share (limits never reached), so that the
    /// two measure what quotas cost a grantee's Embed.
    CreateSharedEmbedInstances {
        #[arg(long)]
        token: String,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        key: String,
    },
}

/// The text every Embed of the benchmark sends (also sent directly to the fake provider).
const BENCH_TEXT: &str = "the quick brown fox jumps over the lazy dog";

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn channels(addr: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut all = Vec::new();
    for _ in 0..count.max(1) {
        all.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(all)
}

/// Runs `jobs` with at most `concurrency` at a time.
async fn bounded<F, Fut>(count: usize, concurrency: usize, job: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let indices: Vec<usize> = (0..count).collect();
    for chunk in indices.chunks(concurrency) {
        for result in join_all(chunk.iter().map(|&i| job(i))).await {
            result?;
        }
    }
    Ok(())
}

async fn populate(
    addr: &str,
    admin: &str,
    users: usize,
    owners: usize,
    per_owner: usize,
    projects: usize,
) -> anyhow::Result<()> {
    let pool = channels(addr, 8).await?;
    let channel = |i: usize| pool[i % pool.len()].clone();
    // Users: owners first, then the bench user, then the rest.
    let mut tokens = vec![String::new(); users.max(owners + 1)];
    let created = Arc::new(tokio::sync::Mutex::new(vec![String::new(); tokens.len()]));
    bounded(tokens.len(), 32, |i| {
        let (channel, created) = (channel(i), created.clone());
        async move {
            let handle = if i < owners {
                format!("owner-{i}")
            } else if i == owners {
                "bench".to_owned()
            } else {
                format!("user-{i}")
            };
            let response = UserServiceClient::new(channel)
                .create_user(authed(
                    pb::CreateUserRequest {
                        user_id: handle,
                        user: Some(pb::User::default()),
                    },
                    admin,
                ))
                .await?;
            created.lock().await[i] = response.into_inner().token;
            Ok(())
        }
    })
    .await?;
    tokens.clone_from(&*created.lock().await);
    let bench_token = tokens[owners].clone();
    // Instances with keys, each shared with the bench user.
    bounded(owners * per_owner, 32, |n| {
        let (channel, owner, token) = (channel(n), n / per_owner, tokens[n / per_owner].clone());
        async move {
            let name = format!("users/owner-{owner}/instances/i{n}");
            LlmInstanceServiceClient::new(channel.clone())
                .create_instance_from_definition(authed(
                    pb::CreateInstanceFromDefinitionRequest {
                        parent: format!("users/owner-{owner}"),
                        instance_id: format!("i{n}"),
                        source_definition: "_system/openai-small".into(),
                        instance: Some(pb::Instance {
                            api_key: format!("sk-bench-{n:032}"),
                            ..Default::default()
                        }),
                    },
                    &token,
                ))
                .await?;
            SharingServiceClient::new(channel)
                .share_instance(authed(
                    pb::ShareInstanceRequest {
                        name,
                        grantee: "users/bench".into(),
                        role: pb::Role::Reader as i32,
                        quota: None,
                    },
                    &token,
                ))
                .await?;
            Ok(())
        }
    })
    .await?;
    bounded(projects, 32, |p| {
        let (channel, token) = (channel(p), bench_token.clone());
        async move {
            let owner = p % owners;
            ProjectServiceClient::new(channel)
                .create_project(authed(
                    pb::CreateProjectRequest {
                        parent: "users/bench".into(),
                        project_id: format!("p{p}"),
                        project: Some(pb::Project {
                            instance: format!(
                                "users/owner-{owner}/instances/i{}",
                                owner * per_owner + p
                            ),
                            ..Default::default()
                        }),
                    },
                    &token,
                ))
                .await?;
            Ok(())
        }
    })
    .await?;
    println!("BENCH_TOKEN={bench_token}");
    println!("OWNER_TOKEN={}", tokens[0]);
    // owner-1: the writer of the reads-with-a-writer scenario, to an instance the reads never name.
    println!("WRITER_TOKEN={}", tokens[1]);
    Ok(())
}

async fn populate_mixed(
    addr: &str,
    admin: &str,
    users: usize,
    per_user: usize,
    tokens_out: &std::path::Path,
) -> anyhow::Result<()> {
    let pool = channels(addr, 8).await?;
    let channel = |i: usize| pool[i % pool.len()].clone();
    let created = Arc::new(tokio::sync::Mutex::new(vec![String::new(); users]));
    bounded(users, 64, |u| {
        let (channel, created) = (channel(u), created.clone());
        async move {
            let response = UserServiceClient::new(channel)
                .create_user(authed(
                    pb::CreateUserRequest {
                        user_id: format!("m{u}"),
                        user: Some(pb::User::default()),
                    },
                    admin,
                ))
                .await?;
            created.lock().await[u] = response.into_inner().token;
            Ok(())
        }
    })
    .await?;
    let tokens = created.lock().await.clone();
    bounded(users * per_user, 64, |n| {
        let (channel, user, token) = (channel(n), n / per_user, tokens[n / per_user].clone());
        async move {
            LlmInstanceServiceClient::new(channel)
                .create_instance(authed(
                    pb::CreateInstanceRequest {
                        parent: format!("users/m{user}"),
                        instance_id: format!("i{}", n % per_user),
                        instance: Some(pb::Instance {
                            endpoint: "https://api.openai.com/v1/embeddings".into(),
                            api_standard: "openai".into(),
                            model: "text-embedding-3-small".into(),
                            dimensions: Some(1536),
                            api_key: format!("sk-mixed-{n:032}"),
                            ..Default::default()
                        }),
                    },
                    &token,
                ))
                .await?;
            Ok(())
        }
    })
    .await?;
    std::fs::write(tokens_out, tokens.join("\n"))?;
    Ok(())
}

/// The mixed scenarios' choice of instance: a Zipf distribution (exponent 1) over the ranks of
/// `count` instances, the ranks spread over users by a fixed permutation (so that the hot
/// instances are not all one user's).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(count: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=count)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.iter().map(|c| c / total).collect();
        Self { cumulative }
    }

    /// The instance number (0-based) of a uniform draw `u` in [0, 1).
    fn instance(&self, u: f64) -> usize {
        let rank = self.cumulative.partition_point(|&c| c < u);
        let count = self.cumulative.len();
        // 7919 is prime and does not divide the counts used (powers of ten): a bijection.
        (rank.min(count - 1) * 7919) % count
    }
}

/// A small, fast generator for the mixed scenarios' draws (xorshift64*).
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One request of a mixed scenario: 90% GetInstance, 5% ListInstances, 5% UpdateInstance
/// (`mixed`), or the same reads alone in the same proportion (`mixed-reads`); each by the
/// owner of the instance drawn. Answers the index of the caller's token too.
fn mixed_request(
    scenario: &str,
    zipf: &Zipf,
    draws: &mut Draws,
    per_user: usize,
    i: usize,
) -> (usize, &'static str, Vec<u8>) {
    let n = zipf.instance(draws.next());
    let (user, handle) = (n / per_user, n % per_user);
    let name = format!("users/m{user}/instances/i{handle}");
    let kind = draws.next();
    let (get, list) = if scenario == "mixed" {
        (0.90, 0.95)
    } else {
        (0.90 / 0.95, 1.0)
    };
    if kind < get {
        let request = pb::GetInstanceRequest { name };
        (
            user,
            "/llmregistry.v1.LlmInstanceService/GetInstance",
            request.encode_to_vec(),
        )
    } else if kind < list {
        let request = pb::ListInstancesRequest {
            parent: format!("users/m{user}"),
            page_size: 50,
            ..Default::default()
        };
        (
            user,
            "/llmregistry.v1.LlmInstanceService/ListInstances",
            request.encode_to_vec(),
        )
    } else {
        (
            user,
            UPDATE_INSTANCE,
            description_update(name, format!("mixed {i}")),
        )
    }
}

const UPDATE_INSTANCE: &str = "/llmregistry.v1.LlmInstanceService/UpdateInstance";

/// An UpdateInstance of `name`'s description (the write every scenario makes), encoded.
fn description_update(name: String, description: String) -> Vec<u8> {
    pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name,
            description,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["description".into()],
        }),
    }
    .encode_to_vec()
}

/// One request of a scenario, as the gRPC method's path and the encoded request message;
/// `i` varies the target.
fn scenario_request(
    scenario: &str,
    i: usize,
    deep_token: &str,
) -> anyhow::Result<(&'static str, Vec<u8>)> {
    let request = match scenario {
        "health" => (
            "/grpc.health.v1.Health/Check",
            HealthCheckRequest::default().encode_to_vec(),
        ),
        "get-instance" => (
            "/llmregistry.v1.LlmInstanceService/GetInstance",
            pb::GetInstanceRequest {
                name: format!("users/owner-0/instances/i{}", i % 1000),
            }
            .encode_to_vec(),
        ),
        "list-first" => (
            "/llmregistry.v1.LlmInstanceService/ListInstances",
            bench_page(String::new()).encode_to_vec(),
        ),
        "list-deep" => (
            "/llmregistry.v1.LlmInstanceService/ListInstances",
            bench_page(deep_token.to_owned()).encode_to_vec(),
        ),
        "create-instance" => (
            "/llmregistry.v1.LlmInstanceService/CreateInstance",
            pb::CreateInstanceRequest {
                parent: "users/owner-0".into(),
                instance_id: format!("c{}-{i}", std::process::id()),
                instance: Some(pb::Instance {
                    endpoint: "https://api.openai.com/v1/embeddings".into(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(1536),
                    api_key: format!("sk-bench-{i:032}"),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        ),
        // The audit trail, as the admin reads it: one instance's events, and one caller's.
        "audit-resource" => (
            "/llmregistry.v1.AuditService/ListAuditEvents",
            pb::ListAuditEventsRequest {
                resource: format!("users/owner-0/instances/i{}", i % 1000),
                page_size: 50,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        "audit-caller" => (
            "/llmregistry.v1.AuditService/ListAuditEvents",
            pb::ListAuditEventsRequest {
                caller: format!("users/owner-{}", 1 + i % 50),
                page_size: 50,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        // Each stream updates an instance of its own (streams are `i / 1_000_000`): writes to
        // distinct rows, as the write goal measures them.
        "update-instance" => (
            UPDATE_INSTANCE,
            description_update(
                format!("users/owner-0/instances/i{}", (i / 1_000_000) % 1000),
                format!("updated {i}"),
            ),
        ),
        "project-instance" => (
            "/llmregistry.v1.ProjectService/GetProjectInstance",
            pb::GetProjectInstanceRequest {
                name: format!("users/bench/projects/p{}", i % 100),
            }
            .encode_to_vec(),
        ),
        "embed" | "embed-project" | "embed-shared" | "embed-quota" => (
            "/llmregistry.v1.EmbeddingService/Embed",
            pb::EmbedRequest {
                name: match scenario {
                    "embed" => "users/bench/instances/embed".into(),
                    "embed-project" => "users/bench/projects/embed".into(),
                    // A grantee's Embed, without and with a budget and a share quota.
                    "embed-shared" => "users/owner-1/instances/embed-shared".into(),
                    _ => "users/owner-1/instances/embed-quota".into(),
                },
                inputs: vec![BENCH_TEXT.into()],
                input_type: 0,
            }
            .encode_to_vec(),
        ),
        other => anyhow::bail!("unknown scenario {other}"),
    };
    Ok(request)
}

/// The same embedding request, sent straight to the fake provider over HTTPS and HTTP/2: the
/// rate and latency the registry's Embed is compared with.
struct DirectCaller {
    sender: h2::client::SendRequest<Bytes>,
    authority: String,
    authorization: http::HeaderValue,
    body: Bytes,
}

impl DirectCaller {
    async fn connect(addr: &str, ca: &std::path::Path, key: &str) -> anyhow::Result<Self> {
        use tokio_rustls::rustls::{
            ClientConfig, RootCertStore,
            pki_types::{CertificateDer, ServerName, pem::PemObject},
        };
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(ca)? {
            roots.add(certificate?)?;
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let sender = h2_client(tls).await?;
        let port = addr.rsplit(':').next().unwrap_or_default();
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "text-embedding-3-small",
            "input": [BENCH_TEXT],
            "encoding_format": "float",
        }))?;
        Ok(Self {
            sender,
            authority: format!("localhost:{port}"),
            authorization: format!("Bearer {key}").parse()?,
            body: Bytes::from(body),
        })
    }

    async fn call(&self) -> anyhow::Result<()> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{}/v1/embeddings", self.authority))
            .header("content-type", "application/json")
            .header("authorization", self.authorization.clone())
            .body(())?;
        let (head, _) = exchange(&self.sender, request, self.body.clone()).await?;
        anyhow::ensure!(head.status == http::StatusCode::OK, "HTTP {}", head.status);
        Ok(())
    }
}

/// An HTTP/2 client on `io` with large windows (the client must not be what limits a run); its
/// connection is driven by a task of its own.
async fn h2_client<T>(io: T) -> anyhow::Result<h2::client::SendRequest<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Whom a measurement calls: the registry over gRPC, or the fake provider directly.
enum Caller {
    Registry(RawCaller),
    Provider(DirectCaller),
}

async fn create_embed_instance(
    addr: &str,
    token: &str,
    endpoint: &str,
    key: &str,
) -> anyhow::Result<()> {
    let channel = channels(addr, 1).await?.remove(0);
    LlmInstanceServiceClient::new(channel.clone())
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/bench".into(),
                instance_id: "embed".into(),
                instance: Some(pb::Instance {
                    endpoint: endpoint.to_owned(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(1536),
                    api_key: key.to_owned(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await?;
    ProjectServiceClient::new(channel)
        .create_project(authed(
            pb::CreateProjectRequest {
                parent: "users/bench".into(),
                project_id: "embed".into(),
                project: Some(pb::Project {
                    instance: "embed".into(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await?;
    Ok(())
}

/// Limits of requests per minute and input tokens per day that the benchmark never reaches.
fn unreachable_quota() -> pb::Quota {
    pb::Quota {
        limits: vec![
            pb::QuotaLimit {
                metric: pb::QuotaMetric::Requests as i32,
                period: pb::QuotaPeriod::Minute as i32,
                limit: 1_000_000_000_000,
            },
            pb::QuotaLimit {
                metric: pb::QuotaMetric::InputTokens as i32,
                period: pb::QuotaPeriod::Day as i32,
                limit: 1_000_000_000_000_000,
            },
        ],
    }
}

async fn create_shared_embed_instances(
    addr: &str,
    token: &str,
    endpoint: &str,
    key: &str,
) -> anyhow::Result<()> {
    let channel = channels(addr, 1).await?.remove(0);
    for (handle, quota) in [
        ("embed-shared", None),
        ("embed-quota", Some(unreachable_quota())),
    ] {
        LlmInstanceServiceClient::new(channel.clone())
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/owner-1".into(),
                    instance_id: handle.into(),
                    instance: Some(pb::Instance {
                        endpoint: endpoint.to_owned(),
                        api_standard: "openai".into(),
                        model: "text-embedding-3-small".into(),
                        dimensions: Some(1536),
                        api_key: key.to_owned(),
                        quota: quota.clone(),
                        ..Default::default()
                    }),
                },
                token,
            ))
            .await?;
        SharingServiceClient::new(channel.clone())
            .share_instance(authed(
                pb::ShareInstanceRequest {
                    name: format!("users/owner-1/instances/{handle}"),
                    grantee: "users/bench".into(),
                    role: pb::Role::Reader as i32,
                    quota,
                },
                token,
            ))
            .await?;
    }
    Ok(())
}

/// A gRPC unary call as a bare HTTP/2 POST (as h2load sends them): the length-prefixed message
/// out, the response body drained, and success only with `grpc-status: 0`. No tonic channel,
/// buffer task or response decoding in the way, so the client costs little next to the server.
struct RawCaller {
    sender: h2::client::SendRequest<Bytes>,
    authority: String,
    authorization: http::HeaderValue,
}

impl RawCaller {
    async fn connect(addr: &str, token: &str) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let sender = h2_client(tcp).await?;
        Ok(Self {
            sender,
            authority: addr.to_owned(),
            authorization: format!("Bearer {token}").parse()?,
        })
    }

    async fn call(&self, path: &str, message: &[u8]) -> anyhow::Result<()> {
        self.call_as(path, message, &self.authorization).await
    }

    /// [`RawCaller::call`] with another caller's `authorization` value.
    async fn call_as(
        &self,
        path: &str,
        message: &[u8],
        authorization: &http::HeaderValue,
    ) -> anyhow::Result<()> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", authorization.clone())
            .body(())?;
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        frame.extend_from_slice(message);
        let (head, trailers) = exchange(&self.sender, request, Bytes::from(frame)).await?;
        let trailer_status = trailers.as_ref().and_then(grpc_status);
        match trailer_status.or(grpc_status(&head.headers)) {
            Some(0) => Ok(()),
            status => anyhow::bail!("grpc-status {status:?}"),
        }
    }
}

/// Sends one request with `body` on a stream of its own and reads the whole answer (the body is
/// drained, not kept): its head and its trailers, if any.
async fn exchange(
    sender: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> anyhow::Result<(http::response::Parts, Option<http::HeaderMap>)> {
    let (response, mut body_out) = sender.clone().ready().await?.send_request(request, false)?;
    body_out.send_data(body, true)?;
    let (head, mut body) = response.await?.into_parts();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    Ok((head, trailers))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A page of 50 of the bench user's instances (owned and shared), after `page_token`.
fn bench_page(page_token: String) -> pb::ListInstancesRequest {
    pb::ListInstancesRequest {
        parent: "users/bench".into(),
        page_size: 50,
        page_token,
        scope: 0,
    }
}

async fn deep_page_token(channel: Channel, token: &str, depth: usize) -> anyhow::Result<String> {
    let mut client = LlmInstanceServiceClient::new(channel);
    let mut page_token = String::new();
    for _ in 0..depth {
        page_token = client
            .list_instances(authed(bench_page(page_token), token))
            .await?
            .into_inner()
            .next_page_token;
    }
    Ok(page_token)
}

/// The tokens of a `mixed` scenario, as `authorization` values.
struct MixedCallers {
    authorizations: Vec<http::HeaderValue>,
    zipf: Zipf,
    per_user: usize,
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    addr: &str,
    token: &str,
    scenario: &str,
    concurrency: usize,
    seconds: u64,
    provider: Option<(&std::path::Path, &str)>,
    tokens_file: Option<&std::path::Path>,
    per_user: usize,
    writer_token: Option<&str>,
) -> anyhow::Result<()> {
    let mixed = match (scenario, tokens_file) {
        ("mixed" | "mixed-reads", Some(file)) => {
            let authorizations = std::fs::read_to_string(file)?
                .lines()
                .map(|token| format!("Bearer {token}").parse())
                .collect::<Result<Vec<http::HeaderValue>, _>>()?;
            let zipf = Zipf::new(authorizations.len() * per_user);
            Some(Arc::new(MixedCallers {
                authorizations,
                zipf,
                per_user,
            }))
        }
        ("mixed" | "mixed-reads", None) => anyhow::bail!("{scenario} needs --tokens-file"),
        _ => None,
    };
    // One HTTP/2 connection carries all the streams, as one gRPC channel does (and as h2load
    // does with `-c 1 -m N`); the concurrency is the number of streams in flight on it.
    let deep = if scenario == "list-deep" {
        deep_page_token(channels(addr, 1).await?.remove(0), token, 100).await?
    } else {
        String::new()
    };
    let caller = Arc::new(match (scenario, provider) {
        ("provider-direct", Some((ca, key))) => {
            Caller::Provider(DirectCaller::connect(addr, ca, key).await?)
        }
        ("provider-direct", None) => anyhow::bail!("provider-direct needs --provider-ca"),
        _ => Caller::Registry(RawCaller::connect(addr, token).await?),
    });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let writer = match writer_token {
        None => None,
        Some(token) => {
            let writer = RawCaller::connect(addr, token).await?;
            Some(tokio::spawn(async move {
                let (mut updates, mut errors) = (0usize, 0usize);
                while Instant::now() < deadline {
                    let message = description_update(
                        "users/owner-1/instances/i1000".into(),
                        format!("written {updates}"),
                    );
                    match writer.call(UPDATE_INSTANCE, &message).await {
                        Ok(()) => updates += 1,
                        Err(_) => errors += 1,
                    }
                }
                (updates, errors)
            }))
        }
    };
    let streams = (0..concurrency).map(|s| {
        let (caller, deep, mixed) = (Arc::clone(&caller), deep.clone(), mixed.clone());
        let scenario = scenario.to_owned();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            // The method of each call of a mixed scenario, beside its latency.
            let mut methods = Vec::new();
            let mut errors = 0usize;
            let mut i = s * 1_000_000;
            let mut draws = Draws(0x9E37_79B9_7F4A_7C15 ^ (s as u64 + 1));
            while Instant::now() < deadline {
                let started;
                let mut method = "";
                let result = match (&*caller, &mixed) {
                    (Caller::Provider(direct), _) => {
                        started = Instant::now();
                        direct.call().await
                    }
                    (Caller::Registry(registry), Some(mixed)) => {
                        let (user, path, message) =
                            mixed_request(&scenario, &mixed.zipf, &mut draws, mixed.per_user, i);
                        method = path.rsplit('/').next().unwrap_or(path);
                        started = Instant::now();
                        registry
                            .call_as(path, &message, &mixed.authorizations[user])
                            .await
                    }
                    (Caller::Registry(registry), None) => {
                        let (path, message) = scenario_request(&scenario, i, &deep)?;
                        started = Instant::now();
                        registry.call(path, &message).await
                    }
                };
                match result {
                    Ok(()) => {
                        latencies.push(started.elapsed());
                        methods.push((method, started.elapsed()));
                    }
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            anyhow::Ok((latencies, methods, errors))
        })
    });
    let mut latencies = Vec::new();
    let mut by_method: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    let mut errors = 0;
    for result in join_all(streams).await {
        let (mut l, m, e) = result??;
        latencies.append(&mut l);
        for (method, latency) in m.into_iter().filter(|(method, _)| !method.is_empty()) {
            by_method.entry(method).or_default().push(latency);
        }
        errors += e;
    }
    // For the mixed scenarios, each method's share of the calls and its own latencies, on
    // standard error (standard output keeps its one line): where the mix's tail comes from.
    for (method, mut of_method) in by_method {
        of_method.sort();
        eprintln!(
            "  {method}: {} calls, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            of_method.len(),
            quantile_ms(&of_method, 0.5),
            quantile_ms(&of_method, 0.9),
            quantile_ms(&of_method, 0.99)
        );
    }
    if let Some(writer) = writer {
        let (updates, errors) = writer.await?;
        eprintln!(
            "  writer: {:.0} UpdateInstance/s of another tenant's instance, {errors} errors",
            updates as f64 / seconds as f64
        );
    }
    latencies.sort();
    println!(
        "{scenario} {concurrency} {:.0} {:.3} {:.3} {errors}",
        latencies.len() as f64 / seconds as f64,
        quantile_ms(&latencies, 0.5),
        quantile_ms(&latencies, 0.99)
    );
    Ok(())
}

/// The `q` quantile of `sorted` latencies, in milliseconds (0 when there are none).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn wait_serving(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            && let Ok(answer) = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            && answer.into_inner().status == 1
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{addr} did not become SERVING")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Populate {
            admin_token,
            users,
            owners,
            instances_per_owner,
            projects,
        } => {
            populate(
                &args.addr,
                &admin_token,
                users,
                owners,
                instances_per_owner,
                projects,
            )
            .await
        }
        Command::Wait => wait_serving(&args.addr).await,
        Command::Measure {
            token,
            scenario,
            concurrency,
            seconds,
            provider_ca,
            provider_key,
            tokens_file,
            instances_per_user,
            writer_token,
        } => {
            let provider = provider_ca.as_deref().map(|ca| (ca, provider_key.as_str()));
            measure(
                &args.addr,
                &token,
                &scenario,
                concurrency,
                seconds,
                provider,
                tokens_file.as_deref(),
                instances_per_user,
                writer_token.as_deref(),
            )
            .await
        }
        Command::PopulateMixed {
            admin_token,
            users,
            instances_per_user,
            tokens_out,
        } => {
            populate_mixed(
                &args.addr,
                &admin_token,
                users,
                instances_per_user,
                &tokens_out,
            )
            .await
        }
        Command::CreateEmbedInstance {
            token,
            endpoint,
            key,
        } => create_embed_instance(&args.addr, &token, &endpoint, &key).await,
        Command::CreateSharedEmbedInstances {
            token,
            endpoint,
            key,
        } => create_shared_embed_instances(&args.addr, &token, &endpoint, &key).await,
    }
}
