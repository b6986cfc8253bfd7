//! The seam between the application shell and the broker core: what `app` needs
//! from a running core (serve a stream, swap authentication, drain, answer a health
//! probe). `Broker` implements it; tests implement it with small fakes so listeners,
//! limits, reload and drain are tested without MQTT. It must never hold policy.

use std::sync::Arc;

use crate::acl::Authorizer;
use crate::auth::Authenticator;
use crate::broker::{Broker, ConnectionInfo, InternalClient, InternalOptions, RevalidateCheck};
pub use crate::component::BoxFuture;
use crate::component::Connector;

use super::stream::ClientStream;

/// What the application needs from a broker core.
pub trait Core: Send + Sync + 'static {
    /// Serve one connection until it ends.
    fn serve(&self, stream: ClientStream, info: ConnectionInfo) -> BoxFuture<()>;
    /// Replace authentication and authorization (reload).
    fn reload_auth(&self, authenticator: Arc<dyn Authenticator>, authorizer: Arc<dyn Authorizer>);
    /// Resolves when every connection and the router are done after shutdown was requested.
    fn drained(&self) -> BoxFuture<()>;
    /// A round trip through the router; `Ok` carries a one-line status.
    fn health(&self) -> BoxFuture<Result<String, String>>;
    /// Re-check every live session against `check` (after a reload) and end those it
    /// rejects with the verdict's v5 reason code. Cores without sessions ignore it.
    fn revalidate(&self, _check: RevalidateCheck) {}
    /// The core's log rate limits, so the listener's lines about a client (a refused
    /// TLS handshake) are limited with the broker's. Cores without limits: `None`.
    fn log_limits(&self) -> Option<Arc<crate::telemetry::limit::LogLimits>> {
        None
    }
    /// The broker's counters for the metrics endpoint. Cores without them: `None`.
    fn stats(&self) -> Option<crate::broker::BrokerStats> {
        None
    }

    /// Publish a listener's counters on `$SYS` (cores without `$SYS` ignore it).
    fn register_listener(&self, _name: Arc<str>, _traffic: Arc<crate::broker::ListenerTraffic>) {}
    /// Attach an in-process client (the gateway's own publishers, e.g. certificate
    /// expiry warnings). Cores without a router refuse.
    fn connect_internal(
        &self,
        _options: InternalOptions,
    ) -> BoxFuture<Result<InternalClient, String>> {
        Box::pin(async { Err("this core has no in-process clients".to_string()) })
    }
    /// Resolves once every message routed before the call is in its clients' queues
    /// (see [`Connector::settled`]). Cores without a router: at once.
    fn settled(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// Components reach the broker through the core's in-process clients.
pub(crate) struct CoreConnector(pub(crate) Arc<dyn Core>);

impl Connector for CoreConnector {
    fn connect_internal(
        &self,
        options: InternalOptions,
    ) -> BoxFuture<Result<InternalClient, String>> {
        self.0.connect_internal(options)
    }

    fn settled(&self) -> BoxFuture<()> {
        self.0.settled()
    }
}

/// tollgate's broker core as the application's `Core`. The health probe is
/// `Broker::ping`, a round trip through the router that creates no session (so it never
/// shows up in `$SYS/broker/clients/connected`).
pub struct BrokerCore {
    broker: Broker,
}

impl BrokerCore {
    /// Wrap a started broker.
    pub fn new(broker: Broker) -> Self {
        BrokerCore { broker }
    }
}

impl Core for BrokerCore {
    fn serve(&self, stream: ClientStream, info: ConnectionInfo) -> BoxFuture<()> {
        Box::pin(self.broker.serve(stream, info))
    }

    fn reload_auth(&self, authenticator: Arc<dyn Authenticator>, authorizer: Arc<dyn Authorizer>) {
        self.broker.reload_auth(authenticator, authorizer);
    }

    fn drained(&self) -> BoxFuture<()> {
        let broker = self.broker.clone();
        Box::pin(async move { broker.drained().await })
    }

    fn revalidate(&self, check: RevalidateCheck) {
        self.broker.revalidate(check);
    }

    fn log_limits(&self) -> Option<Arc<crate::telemetry::limit::LogLimits>> {
        Some(self.broker.log_limits())
    }

    fn stats(&self) -> Option<crate::broker::BrokerStats> {
        Some(self.broker.stats())
    }

    fn register_listener(&self, name: Arc<str>, traffic: Arc<crate::broker::ListenerTraffic>) {
        self.broker.register_listener(name, traffic);
    }

    fn connect_internal(
        &self,
        options: InternalOptions,
    ) -> BoxFuture<Result<InternalClient, String>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            broker
                .connect_internal(options)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn settled(&self) -> BoxFuture<()> {
        let broker = self.broker.clone();
        // The router answers a ping after handing out what it routed before it.
        Box::pin(async move {
            let _ = broker.ping().await;
        })
    }

    fn health(&self) -> BoxFuture<Result<String, String>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            let round_trip = broker.ping().await.map_err(|e| e.to_string())?;
            let stats = broker.stats();
            Ok(format!(
                "{} MQTT clients, {} subscriptions, {} retained messages, router answered in {} µs.",
                stats.clients_connected,
                stats.subscriptions,
                stats.retained_messages,
                round_trip.as_micros()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{BrokerSettings, ListenerContext};

    /// Every open connection holds this future for life (boxed once by the listener's
    /// task): it must fit mimalloc's 1.5 KiB size class. It was 2,912 B (the 3 KiB
    /// class) while the session was stored three times and the stream and connection
    /// facts twice, in nested `async fn` arguments; 1,376 B after.
    #[tokio::test]
    async fn a_served_connection_fits_one_and_a_half_kib() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let core = BrokerCore::new(Broker::start(
            BrokerSettings::default(),
            Arc::new(crate::auth::AnonymousOnly),
            Arc::new(crate::acl::AllowAll),
            shutdown.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_client, (socket, peer)) = (client.expect("connect"), accepted.expect("accept"));
        let info = ConnectionInfo {
            peer,
            listener: Arc::new(ListenerContext::default()),
            certificate_identity: None,
            peer_certificates: None,
            connect_deadline: tokio::time::Instant::now(),
            traffic: Default::default(),
        };
        let served = core.serve(ClientStream::tcp(socket), info);
        let size = std::mem::size_of_val(&*served);
        eprintln!("served connection future {size} B");
        assert!(size <= 1536, "a served connection's future is {size} B");
        shutdown.cancel();
    }
}
