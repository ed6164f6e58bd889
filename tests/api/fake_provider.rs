//! Fake embedding providers: real HTTPS servers (hyper + rustls, HTTP/1.1 and HTTP/2 by ALPN) in
//! the test process, one wire format each, written from the providers' API references:
//!
//! - OpenAI `POST /v1/embeddings`: `{"model","input","encoding_format","dimensions"?}` ->
//!   `{"object":"list","data":[{"object":"embedding","index","embedding"}],"model","usage"}`.
//!   The fake returns `data` in reverse order, so a client that ignores `index` is caught.
//! - Cohere `POST /v2/embed`: `{"model","texts","input_type","embedding_types","output_dimension"?}`
//!   -> `{"id","embeddings":{"float":[...]},"texts","meta":{"billed_units":{"input_tokens"}},
//!   "response_type":"embeddings_by_type"}`.
//! - Gemini `POST /v1beta/models/{model}:batchEmbedContents`: `{"requests":[{"model","content":
//!   {"parts":[{"text"}]},"taskType","outputDimensionality"?}]}` -> `{"embeddings":[{"values"}]}`.
//!
//! Each records every request it receives (method, path, query, headers, JSON body) and can be
//! told to fail the next requests in every way a real provider does. The certificates come from
//! a CA made at run time ([`TestCa`]); the registry trusts it through `PROVIDER_CA_FILE`'s
//! setting.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

/// The wire format a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Cohere,
    Gemini,
}

impl Flavor {
    /// The path a real provider serves, as stored on an instance's endpoint.
    pub fn endpoint_path(self) -> &'static str {
        match self {
            Flavor::OpenAi => "/v1/embeddings",
            Flavor::Cohere => "/v2/embed",
            Flavor::Gemini => "/v1beta/models/gemini-embedding-001:embedContent",
        }
    }

    /// The path batches arrive on.
    pub fn request_path(self) -> &'static str {
        match self {
            Flavor::Gemini => "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            other => other.endpoint_path(),
        }
    }

    pub fn standard(self) -> &'static str {
        match self {
            Flavor::OpenAi => "openai",
            Flavor::Cohere => "cohere",
            Flavor::Gemini => "gemini",
        }
    }
}

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// The documented success reply.
    Answer,
    /// This status with this JSON body (and a `Retry-After` header if given).
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// Waits, then answers.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with a JSON body of about this many bytes.
    Oversized(usize),
    /// The documented reply, with vectors of this many dimensions whatever was asked.
    WrongDimensions(usize),
    /// One vector fewer than inputs.
    MissingVector,
    /// 302 to this location.
    Redirect(String),
    /// 401 whose error message quotes the auth header it received (as some providers do).
    EchoKey,
    /// The documented success reply, naming as its `model` the auth header it received.
    EchoKeyAsModel,
    /// Drops the connection without answering.
    Reset,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    pub version: http::Version,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

struct State {
    /// Off in the benchmark, where millions of requests would fill memory.
    recording: bool,
    recorded: Vec<Recorded>,
    script: VecDeque<Behaviour>,
    /// The native size of the model the fake serves.
    dimensions: usize,
}

/// A running fake provider.
pub struct FakeProvider {
    pub flavor: Flavor,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first value of the vector the fake returns for `text`: lets a test check that every
/// vector came back in the position of its input.
pub fn signature(text: &str) -> f32 {
    let sum: u32 = text.bytes().map(u32::from).sum();
    (sum % 10_000) as f32 + text.len() as f32 / 1000.0
}

fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut values = vec![0.25_f32; dimensions];
    if let Some(first) = values.first_mut() {
        *first = signature(text);
    }
    values
}

impl FakeProvider {
    /// Starts a fake on `127.0.0.1` with a certificate for `localhost` and `127.0.0.1`.
    pub async fn start(flavor: Flavor, dimensions: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            recording: true,
            recorded: Vec::new(),
            script: VecDeque::new(),
            dimensions,
        }));
        let acceptor = TlsAcceptor::from(Arc::new(TestCa::get().server_config()));
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // As real providers' front ends do: small answers are not held back by Nagle.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { handle(flavor, state, request).await }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            flavor,
            addr,
            state,
            task,
        }
    }

    /// The endpoint to store on an instance: `https://localhost:{port}{path}`.
    pub fn endpoint(&self) -> String {
        format!(
            "https://localhost:{}{}",
            self.addr.port(),
            self.flavor.endpoint_path()
        )
    }

    /// The next requests get these behaviours, in order; afterwards the fake answers normally.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state.lock().expect("state").script.extend(behaviours);
    }

    /// Stops keeping requests (the benchmark sends millions).
    pub fn stop_recording(&self) {
        self.state.lock().expect("state").recording = false;
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.lock().expect("state").recorded.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().expect("state").recorded.len()
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    flavor: Flavor,
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Reply, std::io::Error> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (behaviour, native) = {
        let mut state = state.lock().expect("state");
        if state.recording {
            state.recorded.push(Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers.clone(),
                body: json.clone(),
                version: parts.version,
            });
        }
        (
            state.script.pop_front().unwrap_or(Behaviour::Answer),
            state.dimensions,
        )
    };
    let texts = texts_of(flavor, &json);
    let asked = asked_dimensions(flavor, &json).unwrap_or(native);
    let reply = match behaviour {
        Behaviour::Answer => json_reply(200, &success(flavor, &texts, asked)),
        Behaviour::Slow(pause) => {
            tokio::time::sleep(pause).await;
            json_reply(200, &success(flavor, &texts, asked))
        }
        Behaviour::Status {
            status,
            body,
            retry_after,
        } => {
            let mut reply = raw_reply(status, body.into_bytes());
            if let Some(retry_after) = retry_after {
                reply.headers_mut().insert(
                    "retry-after",
                    retry_after.parse().expect("retry-after value"),
                );
            }
            reply
        }
        Behaviour::Malformed => raw_reply(200, b"{\"data\": [ this is not json".to_vec()),
        Behaviour::Oversized(bytes) => {
            let filler = "9".repeat(bytes);
            raw_reply(200, format!("{{\"padding\": \"{filler}\"}}").into_bytes())
        }
        Behaviour::WrongDimensions(dimensions) => {
            json_reply(200, &success(flavor, &texts, dimensions))
        }
        Behaviour::MissingVector => {
            let shorter = &texts[..texts.len().saturating_sub(1)];
            json_reply(200, &success(flavor, shorter, asked))
        }
        Behaviour::Redirect(location) => {
            let mut reply = raw_reply(302, Vec::new());
            reply
                .headers_mut()
                .insert("location", location.parse().expect("location"));
            reply
        }
        Behaviour::EchoKey => {
            let received = received_auth(&parts.headers);
            let message = format!("Incorrect API key provided: {received}. Check your key.");
            json_reply(401, &error_body(flavor, &message))
        }
        Behaviour::EchoKeyAsModel => {
            let mut reply = success(flavor, &texts, asked);
            reply["model"] = json!(received_auth(&parts.headers));
            json_reply(200, &reply)
        }
        Behaviour::Reset => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the fake drops this connection",
            ));
        }
    };
    Ok(reply)
}

/// The key-carrying header the fake received, as it received it.
fn received_auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .or_else(|| headers.get("x-goog-api-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A provider's error body in its own shape.
pub fn error_body(flavor: Flavor, message: &str) -> Value {
    match flavor {
        Flavor::OpenAi => json!({"error": {"message": message, "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}}),
        Flavor::Cohere => json!({"id": "f1c3a6e2", "message": message}),
        Flavor::Gemini => json!({"error": {"code": 400, "message": message,
            "status": "INVALID_ARGUMENT"}}),
    }
}

fn texts_of(flavor: Flavor, body: &Value) -> Vec<String> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    match flavor {
        Flavor::OpenAi => strings(&body["input"]),
        Flavor::Cohere => strings(&body["texts"]),
        Flavor::Gemini => body["requests"]
            .as_array()
            .map(|requests| {
                requests
                    .iter()
                    .filter_map(|r| r["content"]["parts"][0]["text"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn asked_dimensions(flavor: Flavor, body: &Value) -> Option<usize> {
    let field = match flavor {
        Flavor::OpenAi => &body["dimensions"],
        Flavor::Cohere => &body["output_dimension"],
        Flavor::Gemini => &body["requests"][0]["outputDimensionality"],
    };
    field.as_u64().map(|n| n as usize)
}

fn success(flavor: Flavor, texts: &[String], dimensions: usize) -> Value {
    let tokens: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
    match flavor {
        Flavor::OpenAi => {
            // Reverse order on purpose: the client must place vectors by `index`.
            let data: Vec<Value> = texts
                .iter()
                .enumerate()
                .rev()
                .map(|(index, text)| {
                    json!({"object": "embedding", "index": index,
                        "embedding": vector(text, dimensions)})
                })
                .collect();
            json!({"object": "list", "data": data, "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        }
        Flavor::Cohere => {
            let vectors: Vec<Vec<f32>> = texts.iter().map(|t| vector(t, dimensions)).collect();
            json!({"id": "5807ee2e", "embeddings": {"float": vectors}, "texts": texts,
                "meta": {"api_version": {"version": "2"},
                    "billed_units": {"input_tokens": tokens}},
                "response_type": "embeddings_by_type"})
        }
        Flavor::Gemini => {
            let embeddings: Vec<Value> = texts
                .iter()
                .map(|t| json!({"values": vector(t, dimensions)}))
                .collect();
            json!({"embeddings": embeddings})
        }
    }
}

fn json_reply(status: u16, body: &Value) -> Reply {
    raw_reply(status, serde_json::to_vec(body).expect("json"))
}

fn raw_reply(status: u16, body: Vec<u8>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = StatusCode::from_u16(status).expect("status");
    reply
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("type"));
    reply
}

/// A certificate authority made once per test process, and a server certificate it signed for
/// `localhost` and `127.0.0.1`.
pub struct TestCa {
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn get() -> &'static TestCa {
        static CA: OnceLock<TestCa> = OnceLock::new();
        CA.get_or_init(|| {
            let ca_key = rcgen::KeyPair::generate().expect("CA key");
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "llm-registry test CA");
            ca_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let server_key = rcgen::KeyPair::generate().expect("server key");
            let server_params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("server params");
            let server_cert = server_params
                .signed_by(&server_key, &issuer)
                .expect("server certificate");
            TestCa {
                ca_pem: ca_cert.pem(),
                server_chain: vec![server_cert.der().clone()],
                server_key: server_key.serialize_der(),
            }
        })
    }

    fn server_config(&self) -> ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}
