//! Prometheus metrics: one process-wide set ([`metrics`]), recorded where things happen (the
//! edge, the read cache, group commit, the vault, provider calls) and served as Prometheus text
//! by [`endpoint`] on a listener of its own (`METRICS_ADDR`), never on the gRPC port.
//!
//! Like `tracing`, this is a leaf that any layer may use: it knows nothing of the rest of the
//! crate. Every label value comes from a closed set (method names from the contract, gRPC codes,
//! reasons, wire protocols, key ids of the configured ring): never a user handle, an instance
//! name or a token, so the number of series stays bounded whatever the traffic.

pub mod endpoint;

use parking_lot::RwLock;
use std::{collections::HashSet, sync::OnceLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Latency buckets, in seconds: fine under a millisecond (cached reads take ~0.2 ms) and up to
/// the multi-second provider calls and the 30 s request timeout.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0,
];
/// Group-commit batch sizes (rows per commit).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method` of a method the server serves, else `other` (see
    /// [`method_label`]).
    pub method: &'static str,
    /// The gRPC code, as in the spec (`OK`, `NOT_FOUND`, ...).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

/// `path` as a label that lives for the whole process, without an allocation per call: each
/// distinct path is kept once. Callers pass only paths from a closed set (the contract's
/// methods and the public services'), so what is kept is bounded.
pub fn method_label(path: &str) -> &'static str {
    static LABELS: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let labels = LABELS.get_or_init(Default::default);
    if let Some(label) = labels.read().get(path) {
        return label;
    }
    let mut labels = labels.write();
    if let Some(label) = labels.get(path) {
        return label;
    }
    let label: &'static str = Box::leak(path.to_owned().into_boxed_str());
    labels.insert(label);
    label
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyIdLabel {
    /// A master key's public id (a hash prefix, also logged at start), never key material.
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyRoleLabels {
    pub key_id: String,
    /// `primary` (seals new keys) or `previous` (only opens).
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitCallLabels {
    /// `datakey`, `decrypt`, `rewrap`, `lookup-self`, `renew-self`.
    pub operation: &'static str,
    /// `ok` or why not (`unreachable`, `permission_denied`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The wire protocol (`openai`, `cohere`, `gemini`): API standards are rows an
    /// administrator may add, protocols a closed enum.
    pub protocol: &'static str,
    /// `ok` or the failure reason (`rate_limited`, `unavailable`, `timeout`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: Histograms<MethodLabel>,
    pub admission_running: Gauge,
    pub admission_queued: Gauge,
    pub admission_shed: Family<ReasonLabel, Counter>,
    pub circuit_open: Gauge,
    pub database_up: Gauge,
    pub db_pool_connections: Gauge,
    pub db_pool_idle: Gauge,
    pub db_pool_max: Gauge,
    pub db_pool_acquire: Histogram,
    pub cache_hits: Family<KindLabel, Counter>,
    pub cache_misses: Family<KindLabel, Counter>,
    pub cache_invalidations: Counter,
    pub cache_entries: Gauge,
    pub group_commit_batches: Family<KindLabel, Counter>,
    pub group_commit_batch_size: Histograms<KindLabel>,
    pub quota_refusals: Family<ScopeLabel, Counter>,
    pub retention_pruned_rows: Family<TableLabel, Counter>,
    pub retention_batches: Family<TableLabel, Counter>,
    pub vault_seals: Family<KeyIdLabel, Counter>,
    pub vault_opens: Family<KeyIdLabel, Counter>,
    pub vault_failures: Family<OperationLabel, Counter>,
    pub vault_keys: Family<KeyRoleLabels, Gauge>,
    pub data_keys: Family<StateLabel, Gauge>,
    pub transit_calls: Family<TransitCallLabels, Counter>,
    pub transit_token_renewal_failing: Gauge,
    pub provider_requests: Family<ProviderLabels, Counter>,
    pub provider_duration: Histograms<ProtocolLabel>,
    pub provider_retries: Family<ProtocolLabel, Counter>,
    pub provider_calls_in_flight: Gauge,
    pub provider_reply_bytes: Gauge,
}

/// The process's metrics (made at first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("llmr");
        let metrics = Self {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            admission_running: Gauge::default(),
            admission_queued: Gauge::default(),
            admission_shed: Family::default(),
            circuit_open: Gauge::default(),
            database_up: Gauge::default(),
            db_pool_connections: Gauge::default(),
            db_pool_idle: Gauge::default(),
            db_pool_max: Gauge::default(),
            db_pool_acquire: latency_histogram(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_invalidations: Counter::default(),
            cache_entries: Gauge::default(),
            group_commit_batches: Family::default(),
            group_commit_batch_size: Family::new_with_constructor(batch_histogram),
            quota_refusals: Family::default(),
            retention_pruned_rows: Family::default(),
            retention_batches: Family::default(),
            vault_seals: Family::default(),
            vault_opens: Family::default(),
            vault_failures: Family::default(),
            vault_keys: Family::default(),
            data_keys: Family::default(),
            transit_calls: Family::default(),
            transit_token_renewal_failing: Gauge::default(),
            provider_requests: Family::default(),
            provider_duration: Family::new_with_constructor(latency_histogram),
            provider_retries: Family::default(),
            provider_calls_in_flight: Gauge::default(),
            provider_reply_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rpc_requests",
            "RPCs finished, by method and gRPC code",
            metrics.rpc_requests.clone(),
        );
        r.register(
            "rpc_duration_seconds",
            "RPC latency, from the edge to the status",
            metrics.rpc_duration.clone(),
        );
        r.register(
            "provider_calls_in_flight",
            "Provider calls (Embed, TestInstance) holding a place in the provider call pool",
            metrics.provider_calls_in_flight.clone(),
        );
        r.register(
            "provider_reply_bytes",
            "Bytes of provider replies held in memory, against PROVIDER_REPLY_BUDGET_BYTES",
            metrics.provider_reply_bytes.clone(),
        );
        r.register(
            "admission_running",
            "Calls running (holding an admission slot)",
            metrics.admission_running.clone(),
        );
        r.register(
            "admission_queued",
            "Calls waiting for an admission slot",
            metrics.admission_queued.clone(),
        );
        r.register(
            "admission_shed",
            "Calls refused by admission, by reason (queue_full, fair_share, circuit_open)",
            metrics.admission_shed.clone(),
        );
        r.register(
            "circuit_breaker_open",
            "1 while the database is down and calls fail at once with UNAVAILABLE",
            metrics.circuit_open.clone(),
        );
        r.register(
            "database_up",
            "1 while the database answers the health watcher's probes",
            metrics.database_up.clone(),
        );
        r.register(
            "db_pool_connections",
            "Open connections of the serving pool",
            metrics.db_pool_connections.clone(),
        );
        r.register(
            "db_pool_idle_connections",
            "Idle connections of the serving pool",
            metrics.db_pool_idle.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "Size limit of the serving pool (DB_MAX_CONNECTIONS)",
            metrics.db_pool_max.clone(),
        );
        r.register(
            "db_pool_acquire_seconds",
            "Time to get a connection from the pool (its count is the number of acquisitions; \
             above the first buckets, a wait)",
            metrics.db_pool_acquire.clone(),
        );
        r.register(
            "read_cache_hits",
            "Answers served from the read cache, by kind",
            metrics.cache_hits.clone(),
        );
        r.register(
            "read_cache_misses",
            "Reads the read cache could not answer, by kind",
            metrics.cache_misses.clone(),
        );
        r.register(
            "read_cache_invalidations",
            "Cached answers found stale (a scope they depend on changed), and resets of the whole cache",
            metrics.cache_invalidations.clone(),
        );
        r.register(
            "read_cache_entries",
            "Answers held by the read cache",
            metrics.cache_entries.clone(),
        );
        r.register(
            "group_commit_batches",
            "Group commits, by kind (create_instance, usage_event)",
            metrics.group_commit_batches.clone(),
        );
        r.register(
            "group_commit_batch_size",
            "Rows per group commit, by kind",
            metrics.group_commit_batch_size.clone(),
        );
        r.register(
            "quota_refusals",
            "Calls refused QUOTA_EXCEEDED, by the scope of the limit (share, instance)",
            metrics.quota_refusals.clone(),
        );
        r.register(
            "retention_pruned_rows",
            "Rows deleted for being older than their retention, by table",
            metrics.retention_pruned_rows.clone(),
        );
        r.register(
            "retention_batches",
            "Deleting batches run by the retention sweep, by table",
            metrics.retention_batches.clone(),
        );
        r.register(
            "vault_seals",
            "API keys sealed, by master key id",
            metrics.vault_seals.clone(),
        );
        r.register(
            "vault_opens",
            "API keys opened, by the master key id they were sealed under",
            metrics.vault_opens.clone(),
        );
        r.register(
            "vault_failures",
            "Vault operations that failed, by operation",
            metrics.vault_failures.clone(),
        );
        r.register(
            "vault_keys",
            "Master keys of the ring, by id and role (1 each)",
            metrics.vault_keys.clone(),
        );
        r.register(
            "data_keys",
            "Data keys wrapped by transit (KEY_SOURCE=vault-transit), by state, as last read",
            metrics.data_keys.clone(),
        );
        r.register(
            "transit_calls",
            "Calls to the transit server, by operation and outcome",
            metrics.transit_calls.clone(),
        );
        r.register(
            "transit_token_renewal_failing",
            "1 while the transit token's last renewal failed (serving on the data keys in hand)",
            metrics.transit_token_renewal_failing.clone(),
        );
        r.register(
            "provider_requests",
            "Provider calls (one per Embed or TestInstance batch), by protocol and outcome",
            metrics.provider_requests.clone(),
        );
        r.register(
            "provider_duration_seconds",
            "Provider call latency, retries included, by protocol",
            metrics.provider_duration.clone(),
        );
        r.register(
            "provider_retries",
            "Provider request attempts beyond the first, by protocol",
            metrics.provider_retries.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Counts one group commit of `kind` carrying `rows` rows.
pub fn record_group_commit(kind: &'static str, rows: usize) {
    let metrics = metrics();
    let label = KindLabel { kind };
    metrics.group_commit_batches.get_or_create(&label).inc();
    metrics
        .group_commit_batch_size
        .get_or_create(&label)
        .observe(rows as f64);
}

/// Counts one call refused by a quota of `scope`.
pub fn record_quota_refusal(scope: &'static str) {
    metrics()
        .quota_refusals
        .get_or_create(&ScopeLabel { scope })
        .inc();
}

/// Counts one call to the transit server.
pub fn record_transit_call(operation: &'static str, outcome: &'static str) {
    metrics()
        .transit_calls
        .get_or_create(&TransitCallLabels { operation, outcome })
        .inc();
}

/// Counts one retention batch of `table` that deleted `rows`.
pub fn record_pruned(table: &'static str, rows: u64) {
    let metrics = metrics();
    let label = TableLabel { table };
    metrics.retention_batches.get_or_create(&label).inc();
    metrics
        .retention_pruned_rows
        .get_or_create(&label)
        .inc_by(rows);
}

/// Holds one unit of a gauge for as long as it lives (a running call, a queued call), so that a
/// cancelled call gives it back too.
pub struct GaugeHeld(&'static Gauge);

impl GaugeHeld {
    pub fn hold(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}
