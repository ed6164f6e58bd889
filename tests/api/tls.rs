//! TLS on the listener, over real sockets with real certificates made at run time: gRPC,
//! health and reflection over TLS; TLS 1.3 and ALPN h2; a certificate rewritten under a running
//! server is served to new connections while old ones keep working; a bad rewrite keeps the old
//! one; mutual TLS refuses a connection without a client certificate, or with one from another
//! CA, during the handshake; bad files refuse the start with the file and the problem named. A
//! service account bound to a client certificate is accepted only on a connection that presented
//! it, and keys are released over TLS without the plaintext allowance.
//! Also the binary's `healthcheck` command (plaintext, TLS, mutual TLS) and `--version`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use llm_registry::{
    IssuedToken,
    pb::v1::{self as pb, user_service_client::UserServiceClient},
    tls::TlsSettings,
    vault::{KeyRing, MasterKey},
};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        ClientConfig, ProtocolVersion, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    binary::temp_home,
    helpers::{
        acting, authed, create_database, create_service_account_on, create_user_on,
        drop_database_blocking, random_api_key, settings, unique_name,
    },
};

/// A certificate authority made at run time, and certificates it signs.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate (PEM and DER) and its private key (PEM).
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    der: Vec<u8>,
    pub(crate) key_pem: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` named `name`; `expired` puts its validity in 2020.
    pub(crate) fn server(&self, name: &str, expired: bool) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        self.sign(params)
    }

    /// A client certificate (for mutual TLS) named `name`.
    fn client(&self, name: &str) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate with the subject `attributes` (in this order) and URI names.
    fn client_with(&self, attributes: &[(rcgen::DnType, &str)], uris: &[&str]) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for (kind, value) in attributes {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = uris
            .iter()
            .map(|uri| rcgen::SanType::URI((*uri).try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The files a TLS server reads, in a directory of their own.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        Self { dir: temp_home() }
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    fn client_ca(&self) -> PathBuf {
        self.dir.join("clients-ca.pem")
    }
    /// Writes the pair as cert-manager does: the files rewritten in place.
    fn write(&self, issued: &Issued) {
        std::fs::write(self.cert(), &issued.cert_pem).unwrap();
        std::fs::write(self.key(), &issued.key_pem).unwrap();
    }
    fn settings(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert_file: self.cert(),
            key_file: self.key(),
            client_ca_file: mutual.then(|| self.client_ca()),
            reload_interval: Duration::from_millis(100),
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server requiring client certificates from a clients CA: the server's PKI, the clients',
/// the files (kept alive with the server) and the server.
async fn mutual_tls_server() -> (Pki, Pki, Files, TlsServer) {
    let server_pki = Pki::new("llm-registry test server CA");
    let clients_pki = Pki::new("llm-registry test clients CA");
    let files = Files::new();
    files.write(&server_pki.server("server", false));
    std::fs::write(files.client_ca(), &clients_pki.ca_pem).unwrap();
    let server = TlsServer::start(files.settings(true)).await.unwrap();
    (server_pki, clients_pki, files, server)
}

/// An in-process server over TLS on a fresh database.
struct TlsServer {
    addr: SocketAddr,
    admin_token: String,
    database: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TlsServer {
    /// Starts the server; the error is its refusal to start.
    async fn start(tls: TlsSettings) -> anyhow::Result<Self> {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        let admin_token = IssuedToken::generate().reveal().to_owned();
        let ring = KeyRing::new(MasterKey::generate(), vec![]).unwrap();
        let mut settings = settings(&database, &admin_token, &ring);
        settings.tls = Some(tls);
        // TLS is on the listener: ResolveCredential needs no plaintext allowance.
        settings.release.plaintext_allowed = false;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut task = tokio::spawn(llm_registry::server::serve(settings, listener, async {
            let _ = stopped.await;
        }));
        // A refusal ends the task before it listens; give it the time to say so.
        if let Ok(ended) = tokio::time::timeout(Duration::from_millis(300), &mut task).await {
            drop_database_blocking(database);
            return Err(ended
                .unwrap()
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("stopped")));
        }
        Ok(Self {
            addr,
            admin_token,
            database,
            shutdown: Some(shutdown),
            task,
        })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
        drop_database_blocking(std::mem::take(&mut self.database));
    }
}

/// A client that trusts `ca_pem`, offers ALPN h2 and, for mutual TLS, presents `identity`.
fn roots(ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

pub(crate) fn client_config(ca_pem: &str, identity: Option<&Issued>) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(ca_pem));
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

async fn handshake(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel over one TLS connection made with `config`.
async fn channel(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let config = Arc::new(config);
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = Arc::clone(&config);
            async move {
                let stream = handshake(addr, (*config).clone()).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// The server's health status over `channel`; `None` when the call fails.
pub(crate) async fn health(channel: Channel) -> Option<i32> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|answer| answer.into_inner().status)
}

/// Waits until the server answers SERVING over TLS with `config`.
pub(crate) async fn serving(addr: SocketAddr, config: &ClientConfig) -> Channel {
    for _ in 0..200 {
        if let Ok(channel) = channel(addr, config.clone()).await
            && health(channel.clone()).await == Some(1)
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the TLS server at {addr} did not become SERVING");
}

/// The end-entity certificate a new connection is served.
async fn served_certificate(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let stream = handshake(addr, client_config(ca_pem, None)).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served_over_tls_1_3_with_alpn_h2() {
    let pki = Pki::new("llm-registry test server CA");
    let files = Files::new();
    let served = pki.server("first", false);
    files.write(&served);
    let server = TlsServer::start(files.settings(false)).await.unwrap();
    let config = client_config(&pki.ca_pem, None);
    let channel = serving(server.addr, &config).await;

    let stream = handshake(server.addr, config.clone()).await.unwrap();
    let session = stream.get_ref().1;
    assert_eq!(session.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(session.peer_certificates().unwrap()[0].as_ref(), served.der);

    // A call with a token, over TLS.
    let created = UserServiceClient::new(channel.clone())
        .create_user(authed(
            pb::CreateUserRequest {
                user_id: "alice".into(),
                user: Some(pb::User::default()),
            },
            &server.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.user.unwrap().name, "users/alice");

    // Reflection lists our services and health over the same connection.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("reflection did not list services");
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"llmregistry.v1.UserService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // TLS 1.2 is still accepted (the minimum).
    let mut tls12 = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots(&pki.ca_pem))
    .with_no_client_auth();
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    let stream = handshake(server.addr, tls12).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );

    // Plaintext HTTP/2 to the TLS port gets no gRPC answer.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    match plain.connect().await {
        Err(_) => {}
        Ok(channel) => assert!(health(channel).await.is_none()),
    }
}

#[tokio::test]
async fn a_rewritten_certificate_is_served_to_new_connections_and_old_ones_keep_working() {
    let pki = Pki::new("llm-registry test server CA");
    let files = Files::new();
    let first = pki.server("first", false);
    files.write(&first);
    let server = TlsServer::start(files.settings(false)).await.unwrap();
    let config = client_config(&pki.ca_pem, None);
    let old_connection = serving(server.addr, &config).await;
    assert_eq!(
        served_certificate(server.addr, &pki.ca_pem).await,
        first.der
    );

    let second = pki.server("second", false);
    files.write(&second);
    wait_for_certificate(server.addr, &pki.ca_pem, &second.der).await;
    // The connection made before the rotation was not cut.
    assert_eq!(health(old_connection).await, Some(1));

    // A bad rewrite (a key that is not the certificate's, then garbage) keeps the certificate
    // in use; the server keeps serving new connections with it.
    let third = pki.server("third", false);
    std::fs::write(files.cert(), &third.cert_pem).unwrap();
    std::fs::write(files.key(), &first.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_certificate(server.addr, &pki.ca_pem).await,
        second.der
    );
    std::fs::write(files.cert(), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_certificate(server.addr, &pki.ca_pem).await,
        second.der
    );
    assert_eq!(health(serving(server.addr, &config).await).await, Some(1));
    let expired = pki.server("expired", true);
    files.write(&expired);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_certificate(server.addr, &pki.ca_pem).await,
        second.der
    );

    // The rotation completes: the third pair, whole, is picked up.
    files.write(&third);
    wait_for_certificate(server.addr, &pki.ca_pem, &third.der).await;
}

async fn wait_for_certificate(addr: SocketAddr, ca_pem: &str, expected: &[u8]) {
    for _ in 0..100 {
        if served_certificate(addr, ca_pem).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rewritten certificate was not served within 5 s");
}

#[tokio::test]
async fn mutual_tls_refuses_a_connection_without_a_client_certificate_from_the_ca() {
    let server_pki = Pki::new("llm-registry test server CA");
    let clients_pki = Pki::new("llm-registry test clients CA");
    let stranger_pki = Pki::new("someone else's CA");
    let files = Files::new();
    files.write(&server_pki.server("server", false));
    std::fs::write(files.client_ca(), &clients_pki.ca_pem).unwrap();
    let server = TlsServer::start(files.settings(true)).await.unwrap();

    let trusted = clients_pki.client("svc-vectordb");
    let trusted_channel = serving(
        server.addr,
        &client_config(&server_pki.ca_pem, Some(&trusted)),
    )
    .await;
    assert_eq!(health(trusted_channel).await, Some(1));

    for (config, alert) in [
        (
            client_config(&server_pki.ca_pem, None),
            "CertificateRequired",
        ),
        (
            client_config(&server_pki.ca_pem, Some(&stranger_pki.client("intruder"))),
            "UnknownCA",
        ),
    ] {
        // Under TLS 1.3 the client finishes its side first; the server's refusal is the alert
        // the client reads next, and no call gets through.
        let refused = match handshake(server.addr, config.clone()).await {
            Err(error) => error.to_string(),
            Ok(mut stream) => {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                let mut buffer = [0_u8; 64];
                match stream.read(&mut buffer).await {
                    Err(error) => error.to_string(),
                    Ok(read) => format!("read {read} bytes"),
                }
            }
        };
        assert!(refused.contains(alert), "expected {alert}, got: {refused}");
        match channel(server.addr, config).await {
            Err(_) => {}
            Ok(channel) => assert!(health(channel).await.is_none()),
        }
    }
}

#[tokio::test]
async fn bad_files_refuse_the_start_naming_the_file_and_the_problem() {
    let pki = Pki::new("llm-registry test server CA");
    let files = Files::new();
    let good = pki.server("good", false);
    let other = pki.server("other", false);
    let refusal = |tls: TlsSettings| async move {
        match TlsServer::start(tls).await {
            Ok(_) => panic!("the server started"),
            Err(refusal) => format!("{refusal:#}"),
        }
    };
    let path = |p: &Path| p.display().to_string();

    // Missing.
    let message = refusal(files.settings(false)).await;
    assert!(
        message.contains("TLS_CERT_FILE") && message.contains(&path(&files.cert())),
        "{message}"
    );
    assert!(message.contains("no such file"), "{message}");

    // Not PEM.
    std::fs::write(files.cert(), "garbage").unwrap();
    std::fs::write(files.key(), &good.key_pem).unwrap();
    let message = refusal(files.settings(false)).await;
    assert!(
        message.contains(&path(&files.cert())) && message.contains("no PEM certificate"),
        "{message}"
    );

    // A key that is not the certificate's.
    std::fs::write(files.cert(), &good.cert_pem).unwrap();
    std::fs::write(files.key(), &other.key_pem).unwrap();
    let message = refusal(files.settings(false)).await;
    assert!(
        message.contains(&path(&files.key())) && message.contains("does not go with"),
        "{message}"
    );

    // Expired.
    files.write(&pki.server("expired", true));
    let message = refusal(files.settings(false)).await;
    assert!(
        message.contains(&path(&files.cert())) && message.contains("has expired"),
        "{message}"
    );

    // Unreadable key.
    files.write(&good);
    let key = std::fs::read(files.key()).unwrap();
    std::fs::remove_file(files.key()).unwrap();
    std::os::unix::fs::symlink(files.dir.join("nowhere"), files.key()).unwrap();
    let message = refusal(files.settings(false)).await;
    assert!(
        message.contains("TLS_KEY_FILE") && message.contains(&path(&files.key())),
        "{message}"
    );
    std::fs::remove_file(files.key()).unwrap();
    std::fs::write(files.key(), key).unwrap();

    // A client CA file without a certificate in it.
    std::fs::write(files.client_ca(), "").unwrap();
    let message = refusal(files.settings(true)).await;
    assert!(
        message.contains("TLS_CLIENT_CA_FILE") && message.contains(&path(&files.client_ca())),
        "{message}"
    );
    for secret in [&good.key_pem, &other.key_pem] {
        let body: String = secret.lines().nth(1).unwrap().to_owned();
        assert!(
            !message.contains(&body),
            "a private key's text in a refusal"
        );
    }
}

/// Runs `llm-registry healthcheck` with `args`: its exit status and what it printed.
async fn healthcheck(args: &[&str]) -> (bool, String) {
    let home = temp_home();
    let output = crate::binary::bare_command(&home)
        .arg("healthcheck")
        .args(args)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn the_healthcheck_command_exits_zero_only_when_the_server_answers_serving() {
    let pki = Pki::new("llm-registry test server CA");
    let clients_pki = Pki::new("llm-registry test clients CA");
    let files = Files::new();
    files.write(&pki.server("server", false));
    std::fs::write(files.client_ca(), &clients_pki.ca_pem).unwrap();
    let ca_file = files.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let client = clients_pki.client("probe");
    let (client_cert, client_key) = (files.dir.join("probe.crt"), files.dir.join("probe.key"));
    std::fs::write(&client_cert, &client.cert_pem).unwrap();
    std::fs::write(&client_key, &client.key_pem).unwrap();
    let server = TlsServer::start(files.settings(true)).await.unwrap();
    let identity = client_config(&pki.ca_pem, Some(&client));
    serving(server.addr, &identity).await;
    let addr = format!("localhost:{}", server.addr.port());
    let ca = ca_file.to_str().unwrap();
    let (cert, key) = (client_cert.to_str().unwrap(), client_key.to_str().unwrap());

    let (ok, printed) = healthcheck(&[
        "--addr", &addr, "--cacert", ca, "--cert", cert, "--key", key,
    ])
    .await;
    assert!(ok, "{printed}");
    assert!(printed.contains("SERVING"), "{printed}");

    // Without the client certificate the handshake is refused: not healthy.
    let (ok, printed) = healthcheck(&["--addr", &addr, "--cacert", ca]).await;
    assert!(!ok, "{printed}");
    // An unknown service is not SERVING.
    let (ok, printed) = healthcheck(&[
        "--addr",
        &addr,
        "--cacert",
        ca,
        "--cert",
        cert,
        "--key",
        key,
        "--service",
        "nope.Nothing",
    ])
    .await;
    assert!(!ok && printed.contains("NotFound"), "{printed}");
    // Plaintext to a TLS port, and nothing listening: errors that say so.
    let (ok, printed) = healthcheck(&["--addr", &addr, "--timeout-ms", "2000"]).await;
    assert!(!ok, "{printed}");
    drop(server);
    let (ok, printed) = healthcheck(&["--addr", &addr, "--cacert", ca]).await;
    assert!(!ok && printed.contains("cannot connect"), "{printed}");
}

#[tokio::test]
async fn version_names_the_release_and_the_commit() {
    let home = temp_home();
    let output = crate::binary::bare_command(&home)
        .arg("--version")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        printed.contains(env!("CARGO_PKG_VERSION")) && printed.contains("(commit "),
        "{printed}"
    );
}

#[tokio::test]
async fn the_healthcheck_command_speaks_plaintext_without_a_ca() {
    let app = crate::helpers::TestApp::spawn().await;
    let (ok, printed) = healthcheck(&["--addr", &app.addr.to_string()]).await;
    assert!(ok && printed.contains("SERVING"), "{printed}");
}

#[tokio::test]
async fn a_service_account_bound_to_a_client_certificate_is_accepted_only_on_its_connections() {
    use pb::{
        ServiceAccountPermission as Permission, credential_service_client::CredentialServiceClient,
        service_account_service_client::ServiceAccountServiceClient,
    };
    let (server_pki, clients_pki, _files, server) = mutual_tls_server().await;
    let gateway_cert = clients_pki.client("svc-gateway");
    let gateway = serving(
        server.addr,
        &client_config(&server_pki.ca_pem, Some(&gateway_cert)),
    )
    .await;
    let other = serving(
        server.addr,
        &client_config(&server_pki.ca_pem, Some(&clients_pki.client("svc-other"))),
    )
    .await;
    let admin = &server.admin_token;
    let alice = create_user_on(&gateway, admin, "alice").await;
    let key = random_api_key();
    pb::llm_instance_service_client::LlmInstanceServiceClient::new(gateway.clone())
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "open".into(),
                instance: Some(pb::Instance {
                    endpoint: "https://api.openai.com/v1/embeddings".into(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    api_key: key.clone(),
                    allow_credential_release: true,
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    let token = create_service_account_on(
        &gateway,
        admin,
        "gateway",
        &[Permission::ActAsUser, Permission::ReleaseCredentials],
        &[],
    )
    .await;
    // Bound to the gateway's certificate (spacing as a person might write it).
    ServiceAccountServiceClient::new(gateway.clone())
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    name: "serviceAccounts/gateway".into(),
                    client_certificate_subject: " CN=svc-gateway ".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["client_certificate_subject".into()],
                }),
            },
            admin,
        ))
        .await
        .unwrap();
    let resolve = || {
        acting(
            pb::ResolveCredentialRequest {
                name: "users/alice/instances/open".into(),
            },
            &token,
            "alice",
        )
    };
    // On its own connection, over TLS: released, with no plaintext allowance needed.
    let released = CredentialServiceClient::new(gateway.clone())
        .resolve_credential(resolve())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.api_key, key);
    // The same token on a connection with another certificate is as good as unknown.
    let refused = CredentialServiceClient::new(other.clone())
        .resolve_credential(resolve())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = ServiceAccountServiceClient::new(other)
        .get_service_account(authed(
            pb::GetServiceAccountRequest {
                name: "serviceAccounts/gateway".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn certificate_bindings_compare_parsed_subjects_fingerprints_and_san_uris() {
    use pb::{
        ServiceAccountPermission as Permission,
        service_account_service_client::ServiceAccountServiceClient,
    };
    use sha2::Digest as _;
    let (server_pki, clients_pki, _files, server) = mutual_tls_server().await;
    let connect = |issued: &Issued| {
        let config = client_config(&server_pki.ca_pem, Some(issued));
        async move { serving(server.addr, &config).await }
    };
    let spiffe = "spiffe://example.org/ns/llm/sa/gateway";
    let genuine = clients_pki.client_with(
        &[
            (rcgen::DnType::CommonName, "llm-gateway"),
            (rcgen::DnType::OrganizationName, "Platform"),
        ],
        &[spiffe],
    );
    // From the same CA: one CN whose value is the bound subject's text.
    let crafted = clients_pki.client_with(
        &[(rcgen::DnType::CommonName, "llm-gateway,O=Platform")],
        &[],
    );
    let other_mesh_id = clients_pki.client_with(
        &[(rcgen::DnType::CommonName, "svc-other")],
        &["spiffe://example.org/ns/llm/sa/other"],
    );
    let genuine_channel = connect(&genuine).await;
    let crafted_channel = connect(&crafted).await;
    let other_channel = connect(&other_mesh_id).await;
    let admin = &server.admin_token;
    let token = create_service_account_on(
        &genuine_channel,
        admin,
        "gateway",
        &[Permission::ActAsUser, Permission::ReleaseCredentials],
        &[],
    )
    .await;
    let bind = |binding: String| {
        let channel = genuine_channel.clone();
        let admin = admin.clone();
        async move {
            ServiceAccountServiceClient::new(channel)
                .update_service_account(authed(
                    pb::UpdateServiceAccountRequest {
                        service_account: Some(pb::ServiceAccount {
                            name: "serviceAccounts/gateway".into(),
                            client_certificate_subject: binding,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["client_certificate_subject".into()],
                        }),
                    },
                    &admin,
                ))
                .await
                .map(|answer| answer.into_inner().client_certificate_subject)
        }
    };
    let get_self = |channel: &Channel| {
        let channel = channel.clone();
        let token = token.clone();
        async move {
            ServiceAccountServiceClient::new(channel)
                .get_service_account(authed(
                    pb::GetServiceAccountRequest {
                        name: "serviceAccounts/gateway".into(),
                    },
                    &token,
                ))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    };

    // By subject: the crafted single CN is not the two attributes.
    assert_eq!(
        bind("CN=llm-gateway, O=Platform".into()).await.unwrap(),
        "CN=llm-gateway,O=Platform"
    );
    assert_eq!(get_self(&genuine_channel).await, Ok(()));
    assert_eq!(
        get_self(&crafted_channel).await,
        Err(tonic::Code::Unauthenticated)
    );
    // By fingerprint (written with colons, in upper case).
    let fingerprint: Vec<String> = sha2::Sha256::digest(&genuine.der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let stored = bind(format!("sha256:{}", fingerprint.join(":")))
        .await
        .unwrap();
    assert_eq!(
        stored,
        format!("sha256:{}", fingerprint.join("").to_lowercase())
    );
    assert_eq!(get_self(&genuine_channel).await, Ok(()));
    assert_eq!(
        get_self(&crafted_channel).await,
        Err(tonic::Code::Unauthenticated)
    );
    // By SAN URI (a SPIFFE ID).
    bind(format!("uri:{spiffe}")).await.unwrap();
    assert_eq!(get_self(&genuine_channel).await, Ok(()));
    assert_eq!(
        get_self(&other_channel).await,
        Err(tonic::Code::Unauthenticated)
    );
    // A binding that is none of these is refused, naming the field.
    let refused = bind("sha256:1234".into()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("client_certificate_subject"),
        "{refused:?}"
    );
}
