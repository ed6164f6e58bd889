//! The floor under Embed's throughput (see bench/run.sh): a gRPC server on the registry's own
//! stack (tonic in, one shared reqwest client with rustls and HTTP/2 out, serde_json to read the
//! reply, prost to answer) that forwards each Embed to the fake provider and answers its
//! vectors, and does nothing else: no token, no database, no policy, no vault, no limits, no
//! audit, no checks. No Embed of the registry can be cheaper than this proxy; the benchmark
//! reports its rate beside Embed's and the direct rate, to show how much of the gap to the
//! direct rate is the extra hop itself on shared cores and how much is the registry's own work.
//!
//! Usage: `embed_floor --provider-url https://localhost:PORT/v1/embeddings --provider-ca CA.pem
//! --provider-key KEY`; prints `address=…` once it listens.

// Benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use clap::Parser;
use llm_registry::pb::v1::{
    self as pb,
    embedding_service_server::{EmbeddingService, EmbeddingServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    provider_url: String,
    /// The PEM of the CA that signed the fake provider's certificate.
    #[arg(long)]
    provider_ca: std::path::PathBuf,
    #[arg(long)]
    provider_key: String,
}

struct Floor {
    client: reqwest::Client,
    url: String,
    authorization: String,
}

#[derive(serde::Deserialize)]
struct Reply {
    data: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    embedding: Vec<f32>,
}

#[tonic::async_trait]
impl EmbeddingService for Floor {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let request = request.into_inner();
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "text-embedding-3-small",
            "input": request.inputs,
            "encoding_format": "float",
        }))
        .map_err(|e| Status::internal(e.to_string()))?;
        let reply = self
            .client
            .post(&self.url)
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let reply: Reply =
            serde_json::from_slice(&reply).map_err(|e| Status::internal(e.to_string()))?;
        let embeddings: Vec<pb::Embedding> = reply
            .data
            .into_iter()
            .map(|item| pb::Embedding {
                values: item.embedding,
            })
            .collect();
        Ok(Response::new(pb::EmbedResponse {
            instance: request.name,
            model: "text-embedding-3-small".into(),
            dimensions: embeddings.first().map_or(0, |e| e.values.len() as i32),
            embeddings,
            input_tokens: None,
        }))
    }

    async fn test_instance(
        &self,
        _: Request<pb::TestInstanceRequest>,
    ) -> Result<Response<pb::TestInstanceResponse>, Status> {
        Err(Status::unimplemented("the floor server only embeds"))
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = std::fs::read(&args.provider_ca)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true);
    for certificate in reqwest::Certificate::from_pem_bundle(&ca)? {
        builder = builder.add_root_certificate(certificate);
    }
    let floor = Floor {
        client: builder.build()?,
        url: args.provider_url,
        authorization: format!("Bearer {}", args.provider_key),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("address={}", listener.local_addr()?);
    // TCP_NODELAY as the registry sets it; without it every answer waits ~40 ms for a delayed
    // ACK at low concurrency.
    tonic::transport::Server::builder()
        .add_service(EmbeddingServiceServer::new(floor))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
