//! Outbound calls to providers: the one place a vaulted key leaves the service, and only toward
//! the endpoint stored with it. [`Providers::embed`] takes a [`Destination`] read from the
//! instance's own row (never from a request or a definition), splits the inputs into the
//! provider's batch size, sends the batches concurrently (at most `batches_in_flight` at a
//! time) through one shared HTTP client, and reassembles the vectors in input order.
//!
//! Safety rails, each in its own file: the egress guard ([`egress`]: https only, no internal
//! addresses, checked on the resolved address), retries and status mapping (`exchange`: no
//! redirects, bounded retries inside the deadline, bounded replies), the process-wide budget of
//! reply bytes ([`budget`]), scrubbing of provider text ([`scrub`]), the per-instance
//! concurrency limit ([`gate`]), and one adapter per wire format (`wire`, which parses a reply
//! only as far as the call's answer may go).

pub mod budget;
pub mod egress;
mod exchange;
pub mod gate;
mod outcome;
pub mod scrub;
mod wire;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;
use url::Url;
use zeroize::Zeroizing;

use self::{
    budget::ReplyBudget,
    egress::{EgressPolicy, EgressRefusal, GuardedResolver},
    exchange::{Exchange, RetryPolicy},
    outcome::{protocol_label, record_call},
    wire::CallShape,
};
use crate::{
    domain::{
        DomainError,
        embedding::{EmbeddingProtocol, Embeddings, InputType},
        error::{PreconditionReason, ProviderFailure},
    },
    trace_context::TraceContext,
    vault::ApiKey,
};

/// Everything the operator sets about provider calls (made by `config::provider_settings`;
/// the defaults are the command line's).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub egress: EgressPolicy,
    /// PEM certificates trusted besides the public roots (a private provider's CA).
    pub extra_ca_pem: Option<Vec<u8>>,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub max_reply_bytes: usize,
    /// Reply bytes all calls of the process may hold at once.
    pub reply_budget_bytes: usize,
    /// Largest Embed answer, in bytes of vectors.
    pub max_answer_bytes: usize,
    /// Provider calls running at once (the provider call pool, see `grpc::admission`).
    pub max_concurrent_calls: usize,
    /// Provider calls one caller identity may have running at once.
    pub calls_per_caller: usize,
    /// Batches of one call in flight at once.
    pub batches_in_flight: usize,
    pub concurrency_per_instance: usize,
    /// Calls per instance per minute, counted across replicas; `None` is no limit.
    pub requests_per_minute: Option<u32>,
    pub max_inputs: usize,
    pub max_input_bytes: usize,
}

/// Where and how to call, as stored on the instance and its API standard.
#[derive(Debug, Clone)]
pub struct Destination {
    pub endpoint: String,
    pub protocol: EmbeddingProtocol,
    pub auth_header: String,
    pub auth_scheme: String,
    pub model: String,
    /// Asked of the provider only when the instance wants fewer dimensions than its definition
    /// (the model's own size); a standalone instance's size is only checked.
    pub reduced_dimensions: Option<i32>,
    /// The instance's dimensions: no reply vector may be longer.
    pub dimensions: Option<i32>,
}

/// What the provider answered, before the vectors are checked against the instance.
#[derive(Debug)]
pub struct ProviderAnswer {
    pub embeddings: Embeddings,
    /// The model the provider says it used, scrubbed and shortened; `None` if it did not say.
    pub model: Option<String>,
    pub retries: u32,
}

/// The shared outbound client and its policy.
#[derive(Debug, Clone)]
pub struct Providers {
    client: reqwest::Client,
    settings: Arc<ProviderSettings>,
    pub gate: Arc<gate::InstanceGate>,
    budget: Arc<ReplyBudget>,
}

impl Providers {
    pub fn new(settings: ProviderSettings) -> anyhow::Result<Self> {
        let policy = Arc::new(settings.egress.clone());
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // A redirect would carry the key to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY in the environment must not silently reroute keys.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("llm-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.extra_ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                anyhow::anyhow!("PROVIDER_CA_FILE holds no usable certificate: {e}")
            })?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "PROVIDER_CA_FILE holds no certificate"
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let gate = gate::InstanceGate::new(settings.concurrency_per_instance);
        Ok(Self {
            client: builder.build()?,
            budget: Arc::new(ReplyBudget::new(settings.reply_budget_bytes)),
            settings: Arc::new(settings),
            gate,
        })
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// Embeds `inputs` at `destination` with `key`, answering before `deadline`. The key is
    /// used only to build the auth header (zeroized when the call ends) and to scrub provider
    /// text. Counted in the metrics by protocol and outcome.
    pub async fn embed(
        &self,
        destination: &Destination,
        key: &ApiKey,
        inputs: &[String],
        input_type: InputType,
        deadline: Instant,
        trace: Option<&TraceContext>,
    ) -> Result<ProviderAnswer, DomainError> {
        let started = std::time::Instant::now();
        let answer = async {
            if destination.protocol == EmbeddingProtocol::Unspecified {
                return Err(DomainError::FailedPrecondition {
                    reason: PreconditionReason::NoEmbeddingProtocol,
                    message: "the instance's API standard names no embedding protocol; an \
                              administrator must set its `protocol`"
                        .to_owned(),
                });
            }
            let endpoint = Url::parse(&destination.endpoint)
                .map_err(|_| DomainError::Internal("a stored endpoint is not a URL".to_owned()))?;
            self.settings
                .egress
                .check_endpoint(&endpoint)
                .map_err(refused)?;
            let url = wire::batch_url(destination.protocol, &endpoint).map_err(|unusable| {
                DomainError::Provider {
                    failure: ProviderFailure::NotFound,
                    message: unusable.0,
                    retry_after: None,
                }
            })?;
            let max_dimensions = self.answer_room(destination.dimensions, inputs.len())?;
            let (auth_header, auth_value) = auth_header(destination, key)?;
            let shape = CallShape {
                model: &destination.model,
                input_type,
                reduced_dimensions: destination.reduced_dimensions,
            };
            let policy = RetryPolicy {
                max_attempts: self.settings.max_attempts.max(1),
                backoff_base: self.settings.backoff_base,
                attempt_timeout: self.settings.attempt_timeout,
                max_reply_bytes: self.settings.max_reply_bytes,
            };
            let call = BatchCall {
                client: &self.client,
                protocol_label: protocol_label(destination.protocol),
                trace_headers: &trace_headers(trace),
                protocol: destination.protocol,
                shape: &shape,
                url: &url,
                auth_header: &auth_header,
                auth_value: &auth_value,
                key: key.expose(),
                deadline,
                policy,
                budget: &self.budget,
                max_dimensions,
                floats_left: AtomicUsize::new(self.settings.max_answer_bytes / 4),
                max_answer_bytes: self.settings.max_answer_bytes,
            };
            // Futures named up front (not made in a closure), so that the whole call stays `Send`.
            let sends: Vec<_> = inputs
                .chunks(wire::batch_limit(destination.protocol).max(1))
                .map(|texts| call.send(texts))
                .collect();
            // `buffered` keeps the batches' order while up to `batches_in_flight` run at once.
            let all = stream::iter(sends)
                .buffered(self.settings.batches_in_flight.max(1))
                .collect::<Vec<_>>();
            let results = tokio::time::timeout_at(deadline, all)
                .await
                .map_err(|_| exchange::deadline_exceeded())?;
            let mut answer = ProviderAnswer {
                embeddings: Embeddings::default(),
                model: None,
                retries: 0,
            };
            for result in results {
                let (reply, retries) = result?;
                answer.embeddings.vectors.extend(reply.vectors);
                if let Some(tokens) = reply.input_tokens {
                    *answer.embeddings.input_tokens.get_or_insert(0) += tokens;
                }
                if answer.model.is_none() {
                    answer.model = reply.model.map(|model| {
                        // Usually the instance's own model name, which needs no scrubbing; any other
                        // text from the provider is scrubbed like its error messages.
                        if model == destination.model {
                            model
                        } else {
                            scrub::shorten(&scrub::redact(&model, key.expose()), 200)
                        }
                    });
                }
                answer.retries += retries;
            }
            Ok(answer)
        }
        .await;
        record_call(destination.protocol, &answer, started);
        answer
    }
}

impl Providers {
    /// The longest vector a reply may hold, after checking that `inputs` vectors of an
    /// instance of `dimensions` fit `PROVIDER_MAX_ANSWER_BYTES` (INVALID_ARGUMENT on `inputs`
    /// if not; an instance without dimensions is held to the answer size while its reply is
    /// read). Handlers ask before anything is spent on the call; `embed` asks again.
    pub fn answer_room(
        &self,
        dimensions: Option<i32>,
        inputs: usize,
    ) -> Result<usize, DomainError> {
        let max_floats = self.settings.max_answer_bytes / 4;
        let Some(dimensions) = dimensions
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| *d > 0)
        else {
            return Ok(MAX_DIMENSIONS_UNSET.min(max_floats.max(1)));
        };
        if inputs.saturating_mul(dimensions) > max_floats {
            return Err(DomainError::invalid(
                "inputs",
                format!(
                    "{inputs} inputs of {dimensions} dimensions would answer more than {} bytes \
                     of vectors (PROVIDER_MAX_ANSWER_BYTES); send at most {} inputs per call",
                    self.settings.max_answer_bytes,
                    (max_floats / dimensions).max(1)
                ),
            ));
        }
        Ok(dimensions)
    }
}

/// The longest vector read for an instance that declares no dimensions: the most an instance
/// may declare.
const MAX_DIMENSIONS_UNSET: usize = crate::domain::validate::MAX_DIMENSIONS as usize;

/// What every batch of one call shares.
struct BatchCall<'a> {
    client: &'a reqwest::Client,
    protocol_label: &'static str,
    /// `traceparent` (and `tracestate`) of the call, the same on every batch and attempt.
    trace_headers: &'a http::HeaderMap,
    protocol: EmbeddingProtocol,
    shape: &'a CallShape<'a>,
    url: &'a Url,
    auth_header: &'a HeaderName,
    auth_value: &'a HeaderValue,
    key: &'a str,
    deadline: Instant,
    policy: RetryPolicy,
    budget: &'a ReplyBudget,
    max_dimensions: usize,
    /// The numbers the call's answer may still hold, shared by its batches.
    floats_left: AtomicUsize,
    max_answer_bytes: usize,
}

impl BatchCall<'_> {
    /// Sends one batch and reads its reply: one vector per text, in order.
    async fn send(&self, texts: &[String]) -> Result<(wire::BatchReply, u32), DomainError> {
        let body = wire::body(self.protocol, self.shape, texts).map_err(|e| {
            DomainError::Internal(format!("a provider request did not encode: {e}"))
        })?;
        let answer = Exchange {
            client: self.client,
            protocol_label: self.protocol_label,
            trace_headers: self.trace_headers,
            url: self.url,
            auth_header: self.auth_header,
            auth_value: self.auth_value,
            body: Bytes::from(body),
            key: self.key,
            deadline: self.deadline,
            policy: self.policy,
            budget: self.budget,
        }
        .run()
        .await?;
        let bad_reply = |message| DomainError::Provider {
            failure: ProviderFailure::BadReply,
            message,
            retry_after: None,
        };
        let limits = wire::ReplyLimits {
            max_vectors: texts.len(),
            max_dimensions: self.max_dimensions,
            max_floats: self.floats_left.load(Ordering::SeqCst),
        };
        let (reply, floats) =
            wire::reply(self.protocol, &answer.body, limits).map_err(bad_reply)?;
        // The body and its room in the budget go now; the vectors are bounded by the answer.
        drop(answer.body);
        drop(answer.room);
        // Batches read in parallel each saw what was left when they began: the sum is checked.
        self.floats_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(floats)
            })
            .map_err(|_| {
                bad_reply(format!(
                    "the provider's replies hold more numbers than the largest answer allows \
                     ({} bytes, PROVIDER_MAX_ANSWER_BYTES)",
                    self.max_answer_bytes
                ))
            })?;
        if reply.vectors.len() != texts.len() {
            return Err(DomainError::DimensionsMismatch(format!(
                "the provider returned {} vectors for a batch of {} inputs",
                reply.vectors.len(),
                texts.len()
            )));
        }
        Ok((reply, answer.retries))
    }
}

/// The standard's auth header carrying the key (`Authorization: Bearer …`, or the bare key in
/// `x-goog-api-key`), marked sensitive.
fn auth_header(
    destination: &Destination,
    key: &ApiKey,
) -> Result<(HeaderName, HeaderValue), DomainError> {
    let name = HeaderName::from_bytes(destination.auth_header.as_bytes()).map_err(|_| {
        DomainError::Internal("a stored auth header is not a header name".to_owned())
    })?;
    let text = Zeroizing::new(if destination.auth_scheme.is_empty() {
        key.expose().to_owned()
    } else {
        format!("{} {}", destination.auth_scheme, key.expose())
    });
    let mut value = HeaderValue::from_str(&text).map_err(|_| DomainError::FailedPrecondition {
        reason: PreconditionReason::NoApiKey,
        message: "the stored API key has characters an HTTP header cannot carry; replace it"
            .to_owned(),
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The W3C headers of an outgoing call made for `trace`: a child `traceparent` (our span as the
/// parent) and the caller's `tracestate`. Nothing else of the caller's request is ever forwarded.
fn trace_headers(trace: Option<&TraceContext>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let Some(trace) = trace else {
        return headers;
    };
    if let Ok(value) = HeaderValue::from_str(&trace.child_traceparent()) {
        headers.insert("traceparent", value);
    }
    if let Some(state) = trace.tracestate.as_deref()
        && let Ok(value) = HeaderValue::from_str(state)
    {
        headers.insert("tracestate", value);
    }
    headers
}

fn refused(refusal: EgressRefusal) -> DomainError {
    DomainError::Provider {
        failure: match refusal {
            EgressRefusal::Insecure(_) => ProviderFailure::InsecureEndpoint,
            _ => ProviderFailure::EgressRefused,
        },
        message: refusal.to_string(),
        retry_after: None,
    }
}
