//! Connections as a hostile peer uses them (issue 25): a thousand idle sockets from one
//! address, under a descriptor limit of 1,024, must not stop another peer's call, on the
//! plaintext and the TLS listener; the real binary runs under `prlimit --nofile`.

use std::{net::SocketAddr, time::Duration};

use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    binary::{production_with_fakes_under, start_server, temp_home, terminate},
    helpers::{create_database, drop_database_blocking, unique_name, wait_until_serving},
    tls::{Pki, client_config, health, serving},
};

/// Opens `count` sockets from 127.0.0.2 to `addr` that never send a byte; answers those the
/// server did not close at once.
async fn idle_sockets(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            open.push(stream);
        }
    }
    open
}

/// The test process holds the idle sockets itself: its own soft limit goes up to the hard one.
fn room_for_sockets() {
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
}

async fn plaintext_health_within_a_second(addr: SocketAddr) {
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
    })
    .await;
    assert_eq!(
        answer.ok(),
        Some(1),
        "a call from 127.0.0.1 answers SERVING within 1 s ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_thousand_idle_sockets_from_one_peer_do_not_stop_another_peer() {
    room_for_sockets();
    for tls in [false, true] {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        let admin = llm_registry::IssuedToken::generate().reveal().to_owned();
        let master = llm_registry::vault::MasterKey::generate();
        let home = temp_home();
        let pki = Pki::new("llm-registry connections test CA");
        let mut command = production_with_fakes_under(
            &["prlimit", "--nofile=1024:1024", "--"],
            &home,
            &database,
            &admin,
            &master,
        );
        command.env("CONNECTION_OPENING_TIMEOUT_MS", "1500");
        if tls {
            let issued = pki.server("server", false);
            std::fs::write(home.join("server.crt"), &issued.cert_pem).unwrap();
            std::fs::write(home.join("server.key"), &issued.key_pem).unwrap();
            command
                .env("TLS_CERT_FILE", home.join("server.crt"))
                .env("TLS_KEY_FILE", home.join("server.key"));
        }
        let (child, addr, _log) = start_server(command).await;
        let config = client_config(&pki.ca_pem, None);
        if tls {
            serving(addr, &config).await;
        } else {
            wait_until_serving(addr).await;
        }
        let idle = idle_sockets(addr, 1100).await;
        assert!(idle.len() > 64, "the sockets were opened ({})", idle.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tls {
            let started = std::time::Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(1), async {
                health(serving(addr, &config).await).await
            })
            .await;
            assert_eq!(
                answer.ok().flatten(),
                Some(1),
                "over TLS, a call from 127.0.0.1 answers within 1 s ({:?})",
                started.elapsed()
            );
        } else {
            plaintext_health_within_a_second(addr).await;
        }
        // The sockets kept open never sent a preface (nor a TLS hello): closed at the deadline.
        let mut first = idle.into_iter().next().unwrap();
        let mut sent = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read_to_end(&mut first, &mut sent),
        )
        .await;
        assert!(
            closed.is_ok(),
            "an idle socket is closed after the opening deadline: {closed:?}"
        );
        terminate(child).await;
        drop_database_blocking(database);
    }
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_after_the_idle_timeout_and_one_in_use_is_not() {
    let app = crate::helpers::TestApp::spawn_with(|settings| {
        settings.edge.connections.idle_timeout = Duration::from_secs(1);
    })
    .await;
    // A bare HTTP/2 connection that opens properly, then sends nothing: the server ends it.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (_client, idle) = h2::client::handshake(tcp).await.unwrap();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), idle).await;
    assert!(ended.is_ok(), "the idle connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the idle timeout ({:?})",
        started.elapsed()
    );
    // A connection whose stream lasts longer than the idle timeout is not cut: a health Watch
    // open for 2.5 s keeps answering on it. (A fresh connection: the app's own one may have
    // idled past the timeout while the first part ran, and a call racing that close fails.)
    let fresh = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(fresh)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Had the connection been closed, the stream would end (or fail) at once.
    let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(next.is_err(), "the watched stream is still open: {next:?}");
}
