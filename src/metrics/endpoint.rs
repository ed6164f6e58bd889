//! The metrics listener (`METRICS_ADDR`): `GET /metrics` answers the process's metrics in the
//! OpenMetrics text format Prometheus scrapes; anything else is 404. Plain HTTP/1.1 on its own
//! port, never the gRPC one; it carries no secret (see [`super`] on labels), but bind it where
//! only the scraper reaches it. Gauges that mirror a live value (the pool's size, the cache's
//! entries) are sampled at scrape time by the [`Sampler`]s the server hands over.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::metrics;

/// Sets gauges from a live value just before a scrape.
pub type Sampler = Box<dyn Fn() + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves scrapes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, samplers: Vec<Sampler>) {
    let samplers = Arc::new(samplers);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let samplers = Arc::clone(&samplers);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let samplers = Arc::clone(&samplers);
                async move { Ok::<_, Infallible>(answer(&request, &samplers)) }
            });
            // A scraper that never finishes its request headers is dropped (the timeout needs
            // hyper's timer).
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics: connection ended with an error");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, samplers: &[Sampler]) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            for sample in samplers {
                sample();
            }
            reply(StatusCode::OK, OPENMETRICS, metrics().encode())
        }
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
        ),
    }
}
