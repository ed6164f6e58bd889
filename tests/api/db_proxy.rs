//! A TCP proxy in front of PostgreSQL, for tests of a database outage.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use llm_registry::config::ServeSettings;
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

use crate::helpers::{TestApp, server_url};

/// A TCP proxy in front of PostgreSQL that the test can cut (close every connection and refuse
/// new ones) and restore: an outage as the service sees it, without stopping the shared server.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (flag, tasks) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().await.push(task);
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().await.drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// A server whose database connections all pass through a new proxy, with settings
    /// `configure` adjusts.
    pub async fn spawn_behind(configure: impl FnOnce(&mut ServeSettings)) -> (TestApp, Self) {
        let options: sqlx::postgres::PgConnectOptions = server_url().parse().unwrap();
        let proxy = Self::start(format!("{}:{}", options.get_host(), options.get_port())).await;
        let port = proxy.port;
        let app = TestApp::spawn_with(|s| {
            let direct = s.database_url.clone();
            s.database_url = direct.replacen(
                &format!(":{}/", options.get_port()),
                &format!(":{port}/"),
                1,
            );
            configure(s);
        })
        .await;
        (app, proxy)
    }
}
