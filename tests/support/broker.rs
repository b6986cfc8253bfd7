//! The broker started in-process on 127.0.0.1:0 behind a plain TCP accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use tollgate::acl::{AllowAll, Authorizer};
use tollgate::auth::{AnonymousOnly, Authenticator};
use tollgate::broker::{Broker, BrokerSettings, ConnectionInfo, ListenerContext};

use super::wait::WAIT;

/// A running broker for one test.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Broker,
    pub shutdown: CancellationToken,
    /// The accept loop; resolves to the panics of connection tasks once the broker
    /// stops (connection tasks live in a `JoinSet`, so a panic in one is reported
    /// instead of vanishing with a detached task).
    accept: JoinHandle<Vec<String>>,
}

impl TestBroker {
    /// Cancel and wait until every connection task and the router are done.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.broker.drained())
            .await
            .expect("broker drains within the limit");
    }

    /// [`TestBroker::stop`], then wait for the accept loop; returns the panics of
    /// connection tasks (and any connection task still running `WAIT` after shutdown).
    pub async fn stop_and_collect_panics(self) -> Vec<String> {
        let accept = self.accept;
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.broker.drained())
            .await
            .expect("broker drains within the limit");
        match accept.await {
            Ok(panics) => panics,
            Err(e) => vec![format!("accept loop: {}", panic_text(e))],
        }
    }
}

/// The panic message of a task, or what else ended it.
pub fn panic_text(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into()),
        Err(e) => e.to_string(),
    }
}

/// Settings that make tests fast: short `$SYS` interval off, defaults otherwise.
pub fn test_settings() -> BrokerSettings {
    BrokerSettings {
        sys_interval: Duration::ZERO,
        ..BrokerSettings::default()
    }
}

pub async fn start_broker() -> TestBroker {
    start_broker_with(test_settings()).await
}

pub async fn start_broker_with(settings: BrokerSettings) -> TestBroker {
    start_broker_full(settings, Arc::new(AnonymousOnly), Arc::new(AllowAll)).await
}

/// The listener every test broker accepts on (anonymous and passwords allowed).
pub fn test_listener() -> ListenerContext {
    ListenerContext {
        name: Arc::from("test"),
        allow_anonymous: true,
        password_auth: true,
        ..Default::default()
    }
}

pub async fn start_broker_full(
    settings: BrokerSettings,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
) -> TestBroker {
    start_broker_on(settings, authenticator, authorizer, test_listener()).await
}

pub async fn start_broker_on(
    settings: BrokerSettings,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    context: ListenerContext,
) -> TestBroker {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let connect_timeout = settings.connect_timeout;
    let broker = Broker::start(settings, authenticator, authorizer, shutdown.clone());
    let context = Arc::new(context);
    let accept_broker = broker.clone();
    let stop = shutdown.clone();
    let accept = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        let mut panics = Vec::new();
        let mut record = |done: Result<(), JoinError>| {
            if let Err(e) = done {
                if e.is_panic() {
                    panics.push(panic_text(e));
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => record(done),
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let info = ConnectionInfo {
                        peer,
                        listener: context.clone(),
                        certificate_identity: None,
                        peer_certificates: None,
                        connect_deadline: tokio::time::Instant::now() + connect_timeout,
                    traffic: Default::default(),
                    };
                    let b = accept_broker.clone();
                    connections.spawn(async move { b.serve(stream, info).await });
                }
            }
        }
        // Shutdown ends every connection; a task still running after WAIT is a hang.
        while let Ok(Some(done)) = tokio::time::timeout(WAIT, connections.join_next()).await {
            record(done);
        }
        if !connections.is_empty() {
            panics.push(format!(
                "{} connection tasks still running after shutdown",
                connections.len()
            ));
        }
        panics
    });
    TestBroker {
        addr,
        broker,
        shutdown,
        accept,
    }
}
