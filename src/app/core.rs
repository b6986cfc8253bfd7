//! The seam between the application shell and the broker core: what `app` needs
//! from a running core (serve a stream, swap authentication, drain, answer a health
//! probe). `Broker` implements it; tests implement it with small fakes so listeners,
//! limits, reload and drain are tested without MQTT. It must never hold policy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::acl::Authorizer;
use crate::auth::Authenticator;
use crate::broker::{Broker, ConnectionInfo};

use super::listener::ClientStream;

/// A boxed, sendable future (the core is used as a trait object).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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
}

impl Core for Broker {
    fn serve(&self, stream: ClientStream, info: ConnectionInfo) -> BoxFuture<()> {
        let broker = self.clone();
        Box::pin(async move { broker.serve(stream, info).await })
    }

    fn reload_auth(&self, authenticator: Arc<dyn Authenticator>, authorizer: Arc<dyn Authorizer>) {
        Broker::reload_auth(self, authenticator, authorizer);
    }

    fn drained(&self) -> BoxFuture<()> {
        // Until the broker core exposes `drained()`, the app's own task tracker (which
        // owns every connection task) is what shutdown waits for.
        Box::pin(async {})
    }

    fn health(&self) -> BoxFuture<Result<String, String>> {
        // Until the broker core exposes `stats()`, a live process is all we can report.
        Box::pin(async { Ok(String::new()) })
    }
}
