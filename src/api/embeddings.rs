//! `EmbeddingService`: proto <-> domain for using an instance (Embed, TestInstance). The steps
//! are in `instance_use`; this file parses, and once a call is authorized runs the rest
//! ([`Use`]) as part of the caller's call: a caller who hangs up, or whose deadline passes,
//! drops it, and with it the outbound request, the key and every place it held. Every call that
//! reached an instance is audited once (counts, tokens, outcome, latency; never texts, vectors
//! or keys); one dropped before its end is recorded as CANCELLED by [`Unfinished`].

use std::time::Duration;

use chrono::{SubsecRound as _, Utc};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::{
    ApiContext, caller_of, credential_of, deadline,
    instance_use::{self, Limits},
    instances,
};
use crate::{
    domain::{
        DomainError,
        access::InstanceAction,
        audit::{SelfAudited, caller_label, subject_label},
        caller::{Caller, Credential},
        embedding::{
            CallTarget, InputLimits, InputType, InstanceForCall, PROBE_TEXT, check_inputs,
            check_vectors,
        },
        error::both,
        instance::InstanceTest,
        names::InstanceName,
        quota::{Charge, Reservation, estimate_input_tokens},
    },
    pb::v1::{self as pb, embedding_service_server::EmbeddingService},
    rpc::code_name,
    store::{QuotaWindow, UsageEvent},
    trace_context::TraceContext,
};

pub struct EmbeddingApi(pub ApiContext);

const EMBED: &str = "EmbeddingService/Embed";
const TEST: &str = "EmbeddingService/TestInstance";

/// Time kept back from the call's budget (a quarter of it, at most this) for the time the call
/// spent reaching the handler, our own answer and the audit event, so that the provider call
/// ends first and the caller hears why rather than a bare cancellation.
const RESERVE_MAX: Duration = Duration::from_millis(500);

#[tonic::async_trait]
impl EmbeddingService for EmbeddingApi {
    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let arrival = Arrival::of(&request, &self.0)?;
        // Whether the edge checked the token with the read cache fresh for this call: cached
        // answers then serve.
        let checked_fresh = matches!(
            credential_of(&request),
            Ok(Credential::Token(token)) if token.checked_fresh()
        );
        let request = request.into_inner();
        let settings = self.0.providers.settings();
        let limits = InputLimits {
            max_inputs: settings.max_inputs,
            max_input_bytes: settings.max_input_bytes,
        };
        let (target, input_type) = both(
            instance_use::call_target(&arrival.caller, "name", &request.name),
            input_type(request.input_type),
        )?;
        check_inputs(&request.inputs, limits)?;
        let found = instance_use::resolve(
            &self.0,
            &arrival.caller,
            checked_fresh,
            &target,
            InstanceAction::Use,
        )
        .await?;
        let usage = Usage::new(&target, &request.inputs);
        let call = arrival.authorized(&self.0, found, usage);
        call.embed(request.inputs, input_type)
            .await
            .map(Response::new)
    }

    async fn test_instance(
        &self,
        request: Request<pb::TestInstanceRequest>,
    ) -> Result<Response<pb::TestInstanceResponse>, Status> {
        let arrival = Arrival::of(&request, &self.0)?;
        let request = request.into_inner();
        let namespace = arrival.caller.namespace();
        let name = InstanceName::parse_reference("name", &request.name, namespace.as_ref())?;
        let target = CallTarget::Instance(name);
        // Not cached: a test reads the instance as it is now.
        let found = instance_use::resolve(
            &self.0,
            &arrival.caller,
            false,
            &target,
            InstanceAction::Write,
        )
        .await?;
        let usage = Usage::new(&target, &[PROBE_TEXT.to_owned()]);
        let call = arrival.authorized(&self.0, found, usage);
        call.test().await.map(Response::new)
    }
}

/// What is known of a call as it reaches its handler: when it started, when its provider call
/// must end, who calls, and its claim on the audit trail.
struct Arrival {
    started: Instant,
    deadline: Instant,
    caller: Caller,
    self_audited: Option<SelfAudited>,
    /// The call's W3C trace, which its provider calls continue.
    trace: Option<TraceContext>,
}

impl Arrival {
    fn of<T>(request: &Request<T>, context: &ApiContext) -> Result<Self, Status> {
        let started = Instant::now();
        Ok(Self {
            started,
            deadline: call_deadline(request, context.request_timeout, started),
            caller: caller_of(request)?,
            self_audited: request.extensions().get::<SelfAudited>().cloned(),
            trace: request.extensions().get::<TraceContext>().cloned(),
        })
    }

    /// The call once the policy allowed it: from here on it is on the instance's record,
    /// whatever its outcome (the refusal layer leaves it to us), a cancellation included.
    fn authorized(self, context: &ApiContext, found: InstanceForCall, usage: Usage) -> Use {
        if let Some(self_audited) = &self.self_audited {
            self_audited.claim();
        }
        Use {
            context: context.clone(),
            caller: self.caller,
            found,
            usage,
            started: self.started,
            deadline: self.deadline,
            trace: self.trace,
            reservation: None,
        }
    }
}

/// One authorized use of an instance, from the checks before sending to its audit event.
struct Use {
    context: ApiContext,
    caller: Caller,
    found: InstanceForCall,
    usage: Usage,
    started: Instant,
    deadline: Instant,
    trace: Option<TraceContext>,
    /// The call's quota reservation, once taken; settled when the use is recorded.
    reservation: Option<Reservation<QuotaWindow>>,
}

impl Use {
    /// Embeds `inputs`, checks the vectors, records the use; answers once it is recorded.
    async fn embed(
        mut self,
        inputs: Vec<String>,
        input_type: InputType,
    ) -> Result<pb::EmbedResponse, Status> {
        let unfinished = Unfinished::new(&self, EMBED);
        let context = &self.context;
        let instance = &self.found.instance;
        let result = async {
            // An answer too large for PROVIDER_MAX_ANSWER_BYTES is refused before any limit or
            // the key is spent on it.
            context
                .providers
                .answer_room(instance.spec.dimensions, inputs.len())?;
            let call = instance_use::ready(context, &self.found).await?;
            self.reservation = instance_use::reserve(
                context,
                &self.found,
                Limits::BudgetAndShare,
                self.usage.estimated_tokens,
            )
            .await?;
            let sent = instance_use::send(
                context,
                call,
                &inputs,
                input_type,
                self.deadline,
                self.trace.as_ref(),
            )
            .await;
            self.usage.reached = instance_use::reached_provider(&sent);
            let answer = sent?;
            self.usage.retries = answer.retries;
            self.usage.input_tokens = answer.embeddings.input_tokens;
            let dimensions =
                check_vectors(&answer.embeddings, inputs.len(), instance.spec.dimensions)?;
            Ok::<_, DomainError>(pb::EmbedResponse {
                instance: instance.name.to_string(),
                model: answer.model.unwrap_or_else(|| instance.spec.model.clone()),
                dimensions: i32::try_from(dimensions).unwrap_or(i32::MAX),
                embeddings: answer
                    .embeddings
                    .vectors
                    .into_iter()
                    .map(|values| pb::Embedding { values })
                    .collect(),
                input_tokens: answer.embeddings.input_tokens,
            })
        }
        .await;
        self.usage.latency = self.started.elapsed();
        unfinished.finished();
        self.record(EMBED, &result).await?;
        result.map_err(Status::from)
    }

    /// Embeds the probe text and records the outcome on the instance (a refusal before the
    /// call, such as no key or a limit, is an error, not a test result).
    async fn test(mut self) -> Result<pb::TestInstanceResponse, Status> {
        let unfinished = Unfinished::new(&self, TEST);
        let context = &self.context;
        let ready = async {
            let call = instance_use::ready(context, &self.found).await?;
            let reservation = instance_use::reserve(
                context,
                &self.found,
                Limits::BudgetOnly,
                self.usage.estimated_tokens,
            )
            .await?;
            Ok::<_, DomainError>((call, reservation))
        }
        .await;
        let call = match ready {
            Ok((call, reservation)) => {
                self.reservation = reservation;
                call
            }
            Err(refused) => {
                unfinished.finished();
                let refused = Err::<pb::TestInstanceResponse, _>(refused);
                self.usage.latency = self.started.elapsed();
                self.record(TEST, &refused).await?;
                return refused.map_err(Status::from);
            }
        };
        let probe = [PROBE_TEXT.to_owned()];
        let sent = instance_use::send(
            context,
            call,
            &probe,
            InputType::Document,
            self.deadline,
            self.trace.as_ref(),
        )
        .await;
        unfinished.finished();
        self.usage.reached = instance_use::reached_provider(&sent);
        let latency = self.started.elapsed();
        let instance = &self.found.instance;
        let (observed, checked) = match sent {
            Ok(answer) => {
                self.usage.retries = answer.retries;
                self.usage.input_tokens = answer.embeddings.input_tokens;
                let observed = answer.embeddings.vectors.first().map_or(0, Vec::len);
                let checked =
                    check_vectors(&answer.embeddings, 1, instance.spec.dimensions).map(|_| ());
                (observed, checked)
            }
            Err(failed) => (0, Err(failed)),
        };
        let test = InstanceTest {
            // PostgreSQL keeps microseconds: the answer shows what a later read will show.
            time: Utc::now().trunc_subsecs(6),
            code: outcome_of(&checked).to_owned(),
            message: match &checked {
                Ok(()) => format!(
                    "the provider answered with a vector of {observed} dimensions in {} ms",
                    latency.as_millis()
                ),
                Err(error) => error.to_string(),
            },
            observed_dimensions: i32::try_from(observed).unwrap_or(i32::MAX),
            latency,
        };
        self.usage.latency = latency;
        let name = instance.name.to_string();
        let event = self.event(TEST, outcome_of(&checked), &checked);
        context
            .store
            .record_test(instance.sequence, instance.revision, &test, event)
            .await?;
        Ok(pb::TestInstanceResponse {
            instance: name,
            result: Some(instances::test_to_pb(test)),
        })
    }

    /// The use's audit event, with what it adds to the usage ledger and the correction of its
    /// reservation (see `store::quotas`), for a call that ended with `result` (its outcome is
    /// `outcome`).
    fn event<T>(
        &self,
        method: &'static str,
        outcome: &'static str,
        result: &Result<T, DomainError>,
    ) -> UsageEvent {
        let (input_tokens, estimated_tokens) = self.usage.tokens(result.is_ok());
        let charge = if self.usage.reached {
            Charge::Reached {
                input_tokens: input_tokens + estimated_tokens,
            }
        } else {
            Charge::Nothing
        };
        UsageEvent {
            caller: caller_label(&self.caller),
            subject: subject_label(&self.caller),
            method,
            resource: self.found.instance.name.to_string(),
            outcome,
            detail: self.usage.detail(result),
            in_ledger: true,
            input_tokens,
            estimated_tokens,
            settlement: self
                .reservation
                .as_ref()
                .map(|reservation| reservation.settle(charge))
                .unwrap_or_default(),
        }
    }

    /// The use's audit event (see `store::usage_events`); the call fails if it cannot be written.
    async fn record<T>(
        &self,
        method: &'static str,
        result: &Result<T, DomainError>,
    ) -> Result<(), Status> {
        self.context
            .store
            .record_use(self.event(method, outcome_of(result), result))
            .await
            .map_err(Status::from)
    }
}

/// The audit event of a use dropped before it finished (the caller cancelled, or its deadline
/// passed): written from a task of its own when the use is dropped, unless [`Self::finished`]
/// said that the use records its own outcome.
struct Unfinished {
    store: crate::store::Store,
    event: Option<UsageEvent>,
    started: Instant,
    usage_detail: String,
}

impl Unfinished {
    fn new(call: &Use, method: &'static str) -> Self {
        Self {
            store: call.context.store.clone(),
            // The detail is written when the use is dropped (its latency is known then). A
            // cancelled call may have reached the provider, so its reservation (taken later, if
            // at all) stays as it was: it counts.
            event: Some(UsageEvent {
                detail: String::new(),
                ..call.event(
                    method,
                    code_name(Code::Cancelled),
                    &Err::<(), _>(DomainError::Unavailable),
                )
            }),
            started: call.started,
            usage_detail: call.usage.counts(),
        }
    }

    /// The use reached its end and records its own outcome.
    fn finished(mut self) {
        self.event = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.detail = format!(
            "{} latency_ms={} reason=CANCELLED",
            self.usage_detail,
            self.started.elapsed().as_millis()
        );
        let store = self.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.record_use(event).await {
                    tracing::warn!(%error, "a cancelled use could not be audited");
                }
            });
        }
    }
}

fn input_type(number: i32) -> Result<InputType, DomainError> {
    match pb::EmbeddingInputType::try_from(number) {
        Ok(pb::EmbeddingInputType::Unspecified | pb::EmbeddingInputType::Document) => {
            Ok(InputType::Document)
        }
        Ok(pb::EmbeddingInputType::Query) => Ok(InputType::Query),
        Err(_) => Err(DomainError::invalid(
            "input_type",
            format!("{number} is not an EmbeddingInputType"),
        )),
    }
}

/// When the provider call must have ended: the call's budget (the caller's `grpc-timeout`,
/// capped by the server's request timeout) less the reserve for our own answer.
fn call_deadline<T>(request: &Request<T>, server_limit: Duration, started: Instant) -> Instant {
    let budget = deadline::budget(request.metadata(), server_limit);
    let reserve = (budget / 4).min(RESERVE_MAX);
    started + budget.saturating_sub(reserve)
}

/// The gRPC code name of a call's outcome, as the error knows it.
fn outcome_of<T>(result: &Result<T, DomainError>) -> &'static str {
    match result {
        Ok(_) => code_name(Code::Ok),
        Err(error) => error.code().name(),
    }
}

/// What the audit trail and the usage ledger record of one use.
struct Usage {
    project: Option<String>,
    inputs: usize,
    /// What the inputs are estimated to cost, reserved against token limits before the call
    /// and charged where the provider reports no count.
    estimated_tokens: i64,
    /// The input tokens the provider reported.
    input_tokens: Option<i64>,
    /// Whether the call may have reached the provider (then it counts against quotas).
    reached: bool,
    retries: u32,
    latency: Duration,
}

impl Usage {
    fn new(target: &CallTarget, inputs: &[String]) -> Self {
        Self {
            project: target.project().map(ToString::to_string),
            inputs: inputs.len(),
            estimated_tokens: estimate_input_tokens(inputs),
            input_tokens: None,
            reached: false,
            retries: 0,
            latency: Duration::ZERO,
        }
    }

    /// The input tokens charged, as (reported, estimated): the provider's count when it gave
    /// one; otherwise the estimate for a successful call that reached it, nothing for one that
    /// failed (providers do not bill failed calls).
    fn tokens(&self, succeeded: bool) -> (i64, i64) {
        match self.input_tokens {
            Some(reported) => (reported, 0),
            None if succeeded && self.reached => (0, self.estimated_tokens),
            None => (0, 0),
        }
    }

    /// The project and the count of inputs, as `key=value` pairs.
    fn counts(&self) -> String {
        let mut parts = Vec::new();
        if let Some(project) = &self.project {
            parts.push(format!("project={project}"));
        }
        parts.push(format!("inputs={}", self.inputs));
        parts.join(" ")
    }

    /// `key=value` pairs: counts, the error's stable reason; never texts, vectors or keys.
    fn detail<T>(&self, result: &Result<T, DomainError>) -> String {
        let mut parts = vec![self.counts()];
        if let Some(tokens) = self.input_tokens {
            parts.push(format!("input_tokens={tokens}"));
        } else if let (_, estimated @ 1..) = self.tokens(result.is_ok()) {
            parts.push(format!("input_tokens_estimated={estimated}"));
        }
        parts.push(format!("retries={}", self.retries));
        parts.push(format!("latency_ms={}", self.latency.as_millis()));
        if let Err(error) = result {
            parts.push(format!("reason={}", error.reason()));
        }
        parts.join(" ")
    }
}
