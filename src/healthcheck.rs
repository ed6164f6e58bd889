//! `llm-registry healthcheck`: asks a running server's gRPC health service whether it is
//! SERVING, over plaintext or TLS (with a client certificate for mutual TLS), for container
//! images that have no grpc_health_probe. Exit status 0 means SERVING; anything else (not
//! serving, unknown service, no answer in time, a refused handshake) is an error that says why.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::config::HealthcheckArgs;

/// Ok when the server answers SERVING for `args.service`.
pub async fn check(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let asked = async {
        let channel = connect(args).await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "health check failed: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?;
        Ok::<_, anyhow::Error>(answer.into_inner().status)
    };
    let status = tokio::time::timeout(timeout, asked)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {timeout:?}", args.addr))??;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => anyhow::bail!("{} answers {}", args.addr, other.as_str_name()),
        Err(_) => anyhow::bail!("{} answers an unknown status {status}", args.addr),
    }
}

async fn connect(args: &HealthcheckArgs) -> anyhow::Result<Channel> {
    let Some(cacert) = &args.cacert else {
        return Endpoint::from_shared(format!("http://{}", args.addr))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr));
    };
    let host = args
        .server_name
        .clone()
        .unwrap_or_else(|| host_of(&args.addr).to_owned());
    let server_name = ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a valid server name"))?;
    let config = Arc::new(client_config(
        cacert,
        args.cert.as_deref(),
        args.key.as_deref(),
    )?);
    let addr = args.addr.clone();
    let channel = Endpoint::from_shared(format!("http://{host}"))?
        .connect_with_connector(tower::service_fn(move |_| {
            let (config, addr, server_name) =
                (Arc::clone(&config), addr.clone(), server_name.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                let stream = TlsConnector::from(config).connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to {} over TLS", args.addr))?;
    Ok(channel)
}

/// `host` of `host:port` (or of `[v6]:port`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn client_config(
    cacert: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(cacert)
        .with_context(|| format!("--cacert {}", cacert.display()))?
    {
        roots.add(ca.with_context(|| format!("--cacert {}", cacert.display()))?)?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("--cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
