//! Start-up and serving: database (created in development mode), migrations, the layers of the
//! edge (trace -> authentication -> body gate -> admission -> refusal audit -> `_system` guard, see
//! [`crate::grpc`]), the services ([`crate::services`], health and reflection among them), plaintext or TLS on the listener
//! ([`crate::tls`]), and a graceful shutdown that turns health NOT_SERVING before draining calls.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceBuilder;

use crate::{
    api::{ApiContext, CredentialRelease},
    config::{Mode, ServeSettings},
    domain::audit::Audit,
    grpc::{
        admission::{Admission, FairShares, ProviderCallLimits},
        authenticate::Authenticator,
        body::BodyGate,
        layer::MiddlewareLayer,
        methods::MethodTable,
        refusal_audit::{RefusalAudit, RefusalRecorder},
        system_guard::SystemGuard,
        trace::RpcTrace,
    },
    keys::{KeySource, Keys, RewrapReport, RotationReport},
    metrics, pb,
    providers::Providers,
    services::{self, MessageLimits},
    store::{Store, database},
    tls::{ServerTls, incoming},
    vault::KeyRing,
};

/// Connects (creating the database in development mode) and applies migrations. The store's read
/// cache holds at most `read_cache_entries` answers (0 for commands that serve no calls).
pub(crate) async fn prepare_database(
    mode: Mode,
    database_url: &str,
    max_connections: u32,
    read_cache_entries: usize,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<Store> {
    if mode == Mode::Development
        && database::create_database_if_missing(database_url)
            .await
            .with_context(|| {
                let server = database::server_address(database_url);
                format!(
                    "development mode could not reach PostgreSQL at {server} to create its \
                     database; start PostgreSQL there, or set DATABASE_URL to one that runs"
                )
            })?
    {
        tracing::info!("created the development database");
    }
    // Migrations run on a connection of their own, without the statement timeout of serving.
    let migrations = database::connect(database_url, 1, None)
        .await
        .context("connecting to PostgreSQL")?;
    database::migrate(&migrations)
        .await
        .context("applying migrations")?;
    migrations.close().await;
    let pool = database::connect(database_url, max_connections, statement_timeout)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(Store::new(pool, read_cache_entries))
}

/// The `migrate` command: connects (creating the development database) and applies migrations.
pub async fn migrate(mode: Mode, database_url: &str) -> anyhow::Result<()> {
    prepare_database(mode, database_url, 1, 0, None).await?;
    Ok(())
}

/// The `rotate-keys` command: re-encrypts every stored key under the primary key (under
/// `vault-transit`, a new data key made primary first), in batches of `batch_size`, while the
/// service may keep running.
pub async fn rotate_keys(
    mode: Mode,
    database_url: &str,
    source: &KeySource,
    batch_size: u32,
) -> anyhow::Result<RotationReport> {
    let store = prepare_database(mode, database_url, 2, 0, None).await?;
    let audit = Audit::operator("rotate-keys");
    let keys = Keys::load(source, &store, &audit).await?;
    let report = keys.rotate(&store, &audit, batch_size).await;
    store.close().await;
    report
}

/// The `rewrap-data-keys` command: every data key wrapped again under the newest version of the
/// transit key.
pub async fn rewrap_data_keys(
    mode: Mode,
    database_url: &str,
    source: &KeySource,
) -> anyhow::Result<RewrapReport> {
    let store = prepare_database(mode, database_url, 2, 0, None).await?;
    let report =
        crate::keys::rewrap_data_keys(source, &store, &Audit::operator("rewrap-data-keys")).await;
    store.close().await;
    report
}

/// The `import-dhamps-vdb` command: the registry's database prepared as for `serve` (migrations
/// applied), then the whole import in one transaction.
pub async fn import_dhamps_vdb(
    mode: Mode,
    database_url: &str,
    source: &KeySource,
    options: &crate::import::ImportOptions,
) -> anyhow::Result<crate::import::Report> {
    let store = prepare_database(mode, database_url, 2, 0, None).await?;
    let keys = Keys::load(source, &store, &Audit::operator("import-dhamps-vdb")).await?;
    let report = crate::import::run(&store, &keys.ring(), options).await;
    store.close().await;
    report
}

/// Serves on `listener` until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    settings: ServeSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Bad TLS files stop the start before anything else is done.
    let tls = settings.tls.as_ref().map(ServerTls::load).transpose()?;
    let store = prepare_database(
        settings.mode,
        &settings.database_url,
        settings.db_max_connections,
        settings.read_cache_entries,
        Some(settings.db_statement_timeout),
    )
    .await?;
    let keys = Arc::new(Keys::load(&settings.keys, &store, &Audit::operator("serve")).await?);
    let ring = keys.ring();
    let context = ApiContext {
        store: store.clone(),
        keys: Arc::clone(&keys),
        providers: Providers::new(settings.providers.clone())?,
        request_timeout: settings.request_timeout,
        release: CredentialRelease {
            per_minute: settings.release.per_minute,
            transport_allowed: settings.tls.is_some() || settings.release.plaintext_allowed,
        },
    };
    let max_message = settings.max_message_bytes;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let served = services::all(
        &context,
        MessageLimits {
            max_message_bytes: max_message,
            max_embed_answer_bytes: settings.providers.max_answer_bytes,
        },
        health_service,
    )?;
    let health_names: Arc<[&'static str]> = served.names.clone().into();
    services::set_health(&health_reporter, &health_names, ServingStatus::Serving).await;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let database_up = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn(watch_database(
        store.clone(),
        health_reporter.clone(),
        health_names.clone(),
        database_up.clone(),
        settings.health_check_interval,
        stopping_rx,
    ));

    let key_upkeep = crate::keys::spawn_upkeep(&keys, settings.data_key_refresh);
    let retention = tokio::spawn(crate::retention::sweep_forever(
        store.clone(),
        settings.retention,
        stopping_tx.subscribe(),
    ));

    let methods = Arc::new(MethodTable::from_descriptor_set(pb::FILE_DESCRIPTOR_SET)?);
    let refusals = RefusalRecorder::new(
        store.clone(),
        settings.edge.refusals_per_window,
        settings.edge.refusal_window,
    );
    let edge = &settings.edge;
    // The order of the edge (see `grpc`): nothing is held for a caller before it is known, and
    // no admission slot before its request body has arrived.
    let layers = ServiceBuilder::new()
        .layer(MiddlewareLayer::new(RpcTrace::new(methods.clone())))
        .layer(MiddlewareLayer::new(Authenticator::new(
            methods.clone(),
            store.clone(),
            &settings.admin_token,
            refusals.clone(),
            settings.dev_secrets_file.as_deref(),
        )))
        .layer(MiddlewareLayer::new(BodyGate::new(
            methods.clone(),
            refusals.clone(),
            max_message,
            edge.request_body_timeout,
        )))
        .layer(MiddlewareLayer::new(Admission::new(
            methods.clone(),
            settings.max_concurrent_requests,
            settings.max_queued_requests,
            FairShares {
                per_connection_percent: edge.max_share_per_connection_percent,
                per_caller_percent: edge.max_share_per_caller_percent,
            },
            ProviderCallLimits {
                max_concurrent: settings.providers.max_concurrent_calls,
                per_caller: settings.providers.calls_per_caller,
            },
            database_up.clone(),
        )))
        .layer(MiddlewareLayer::new(RefusalAudit::new(
            methods.clone(),
            refusals,
        )))
        .layer(MiddlewareLayer::new(SystemGuard::new(methods, max_message)))
        .into_inner();

    let metrics_endpoint = match settings.metrics_addr {
        Some(addr) => Some(start_metrics(addr, &store, &ring, &database_up).await?),
        None => None,
    };

    let address = listener.local_addr()?;
    announce(&settings, &ring, address, tls.as_ref());

    let mut drain_started = stopping_tx.subscribe();
    let reporter = health_reporter.clone();
    let names = health_names.clone();
    let on_shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        let _ = stopping_tx.send(true);
        services::set_health(&reporter, &names, ServingStatus::NotServing).await;
    };

    let router = tonic::transport::Server::builder()
        .timeout(settings.request_timeout)
        // HTTP/2 limits, set deliberately (docs/operations.md, "Limits").
        .max_concurrent_streams(edge.http2_max_concurrent_streams)
        .http2_max_header_list_size(edge.http2_max_header_list_bytes)
        .http2_keepalive_interval(Some(edge.http2_keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(layers)
        .add_routes(served.routes.routes());
    // One accept loop for plaintext and TLS: connection caps, opening deadline, idle timeout.
    incoming::raise_descriptor_limit(&edge.connections);
    let (accepting, connections) = incoming::accept(
        listener,
        tls.as_ref().map(|tls| tls.acceptor.clone()),
        edge.connections,
    );
    let server = router.serve_with_incoming_shutdown(connections, on_shutdown);
    // Draining waits for in-flight calls, but a long-lived stream (a health Watch) would hold
    // it open forever: after the grace period the remaining calls are cut.
    let grace = settings.shutdown_grace;
    let drain_deadline = async move {
        let _ = drain_started.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "drain deadline passed; closing the remaining calls");
            Ok(())
        }
    };
    watcher.abort();
    retention.abort();
    if let Some(upkeep) = key_upkeep {
        upkeep.abort();
    }
    if let Some(endpoint) = metrics_endpoint {
        endpoint.abort();
    }
    accepting.abort();
    drop(tls);
    store.close().await;
    result.context("serving gRPC")?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the metrics listener (a bind failure refuses the start) and serves scrapes from a
/// task of its own; the gauges that mirror live values are sampled at each scrape.
async fn start_metrics(
    addr: SocketAddr,
    store: &Store,
    key_ring: &KeyRing,
    database_up: &Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("METRICS_ADDR {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    key_ring.publish_metrics();
    let store = store.clone();
    let database_up = Arc::clone(database_up);
    let samplers: Vec<metrics::endpoint::Sampler> = vec![
        Box::new(move || store.sample_metrics()),
        Box::new(move || {
            let up = database_up.load(Ordering::SeqCst);
            metrics::metrics().database_up.set(i64::from(up));
            metrics::metrics().circuit_open.set(i64::from(!up));
        }),
    ];
    tracing::info!(metrics_listener = %bound, "serving Prometheus metrics at /metrics");
    Ok(tokio::spawn(metrics::endpoint::serve(listener, samplers)))
}

fn announce(
    settings: &ServeSettings,
    ring: &KeyRing,
    address: SocketAddr,
    tls: Option<&ServerTls>,
) {
    let transport = match tls {
        Some(tls) if tls.mutual => "TLS, client certificates required (mutual TLS)",
        Some(_) => "TLS",
        None => "plaintext",
    };
    tracing::info!(
        %address,
        transport,
        certificate = tls.map(|tls| tls.summary.to_string()),
        key_source = if matches!(settings.keys, KeySource::Ring(_)) { "ring" } else { "vault-transit" },
        primary_key_id = %ring.primary_id(),
        key_ids = ?ring.key_ids(),
        "serving gRPC (health and reflection need no token)"
    );
    if settings.mode == Mode::Development {
        // The same hint over TLS: the client needs the CA (and, with mutual TLS, a certificate).
        let (flags, scheme) = if tls.is_some() {
            ("--cacert <the CA that signed the certificate>", "https")
        } else {
            ("--http2-prior-knowledge", "http")
        };
        tracing::warn!(
            "try: buf curl --protocol grpc {flags} -H \"authorization: Bearer $ADMIN_TOKEN\" \
             -d '{{\"parent\":\"users/_system\"}}' {scheme}://{address}/llmregistry.v1.LlmDefinitionService/ListDefinitions \
             (ADMIN_TOKEN is in the development secrets file named above)"
        );
    }
}

/// Keeps health in step with the database: NOT_SERVING (and the admission circuit open) once
/// it fails two probes in a row, SERVING again at its first good answer; stops when shutdown
/// begins, so health stays NOT_SERVING from then on. Two failures, and a probe timeout of at least
/// two seconds, keep one slow answer on a busy machine from failing every call.
async fn watch_database(
    store: Store,
    reporter: HealthReporter,
    names: Arc<[&'static str]>,
    database_up: Arc<AtomicBool>,
    interval: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    const FAILURES_TO_TRIP: u32 = 2;
    let probe_timeout = interval.max(Duration::from_secs(2));
    let mut serving = true;
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.changed() => return,
        }
        let healthy = matches!(
            tokio::time::timeout(probe_timeout, store.ping()).await,
            Ok(Ok(()))
        );
        if *stopping.borrow() {
            return;
        }
        failures = if healthy { 0 } else { failures + 1 };
        let now_serving = healthy || (serving && failures < FAILURES_TO_TRIP);
        if now_serving != serving {
            serving = now_serving;
            database_up.store(serving, Ordering::SeqCst);
            if serving {
                tracing::info!("database answers again: SERVING");
                services::set_health(&reporter, &names, ServingStatus::Serving).await;
            } else {
                tracing::error!("database does not answer: NOT_SERVING");
                services::set_health(&reporter, &names, ServingStatus::NotServing).await;
            }
        }
    }
}
