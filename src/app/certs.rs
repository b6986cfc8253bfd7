//! The certificate expiry watch as a component (the first on the seam of
//! `crate::component`): it follows every TLS listener's server certificate and client
//! CA (and the development CA), logs warnings as expiry approaches and publishes them,
//! retained, on `$SYS/tollgate/certs/<label>/expiry` through an in-process client named
//! `tollgate:certs`, whose one built-in grant is writing there. A reload that changes
//! the set of files restarts it; any other reload leaves it running. It must never
//! publish outside its grant or keep running after its shutdown token is cancelled.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::acl::Access;
use crate::auth::Identity;
use crate::broker::codec::QoS;
use crate::broker::{InternalClient, InternalOptions};
use crate::component::{
    Component, ComponentContext, Connector, Grant, Health, HealthReporter, Settings, Stage,
};
use crate::config::Config;
use crate::pki::DevPki;
use crate::tls;

/// Identity of the in-process client that publishes certificate expiry warnings.
pub const CERT_WATCH_IDENTITY: &str = "tollgate:certs";

/// Where it publishes: `$SYS/tollgate/certs/<label>/expiry`.
const CERT_TOPIC_FILTER: &str = "$SYS/tollgate/certs/#";

/// The component: the labelled certificate files it watches are its settings.
#[derive(Debug)]
pub struct CertificateWatch {
    certs: Vec<(String, PathBuf)>,
}

impl CertificateWatch {
    /// The watch for `config`'s certificates (and the development CA, when in use).
    pub fn from_config(config: &Config, dev_pki: Option<&DevPki>) -> Self {
        CertificateWatch {
            certs: watched_certificates(config, dev_pki),
        }
    }
}

impl Component for CertificateWatch {
    fn name(&self) -> &str {
        "certs"
    }

    fn stage(&self) -> Stage {
        Stage::Service
    }

    fn settings(&self) -> &dyn Settings {
        &self.certs
    }

    fn grants(&self) -> Vec<Grant> {
        vec![Grant {
            identity: CERT_WATCH_IDENTITY.to_string(),
            access: Access::Write,
            filter: CERT_TOPIC_FILTER.to_string(),
        }]
    }

    fn start(&mut self, ctx: ComponentContext) -> Result<(), String> {
        if self.certs.is_empty() {
            ctx.health
                .set(Health::Ok("no certificates to watch".into()));
            return Ok(());
        }
        let (tx, rx) = mpsc::unbounded_channel::<(String, String)>();
        let watch = tls::spawn_expiry_watch(
            self.certs.clone(),
            move |topic, payload| {
                // The publisher ends only at shutdown; a send error then loses nothing of value.
                let _ = tx.send((topic, payload));
            },
            ctx.shutdown.clone(),
        );
        ctx.tracker.spawn(async move {
            if let Err(e) = watch.await {
                warn!(reason = %e, "Certificate expiry watch ended unexpectedly.");
            }
        });
        ctx.health.set(Health::Ok(format!(
            "{} certificates watched",
            self.certs.len()
        )));
        ctx.tracker
            .spawn(publish_expiry(rx, ctx.broker, ctx.health, ctx.shutdown));
        Ok(())
    }
}

/// Certificates the expiry watch follows: every TLS listener's server certificate and
/// client CA, and the development CA when one is in use. Labels become topic levels.
pub fn watched_certificates(config: &Config, dev_pki: Option<&DevPki>) -> Vec<(String, PathBuf)> {
    let mut certs: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |label: String, path: PathBuf| {
        if !certs.iter().any(|(_, p)| *p == path) {
            certs.push((label, path));
        }
    };
    for l in config.listeners.iter().filter(|l| l.transport.is_tls()) {
        match (&l.cert, dev_pki) {
            (Some(cert), _) => add(format!("{}-server", l.name), cert.clone()),
            (None, Some(pki)) => add("dev-server".to_string(), pki.server_cert.clone()),
            (None, None) => {}
        }
        if let Some(ca) = &l.client_ca {
            add(format!("{}-client-ca", l.name), ca.clone());
        }
    }
    if let Some(pki) = dev_pki {
        add("dev-ca".to_string(), pki.ca_cert.clone());
    }
    certs
}

async fn publish_expiry(
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
    broker: Arc<dyn Connector>,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut client: Option<InternalClient> = None;
    loop {
        let (topic, payload) = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = rx.recv() => match next {
                Some(item) => item,
                None => break,
            },
        };
        if client.is_none() {
            let options = InternalOptions::new(Identity::internal(CERT_WATCH_IDENTITY));
            match broker.connect_internal(options).await {
                Ok(c) => client = Some(c),
                Err(reason) => {
                    warn!(%topic, %reason, "Cannot publish a certificate expiry warning: no in-process connection to the broker.");
                    health.set(Health::Degraded(format!(
                        "cannot publish {topic}: {reason}"
                    )));
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        if let Err(e) = c.publish(&topic, payload, QoS::AtLeastOnce, true).await {
            warn!(%topic, reason = %e, "Cannot publish a certificate expiry warning.");
            health.set(Health::Degraded(format!("cannot publish {topic}: {e}")));
            client = None;
        }
    }
    // Dropped, not disconnected: the router is shutting down with everything else.
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::app::testing::{config, LOCAL};
    use crate::config::Transport;

    #[test]
    fn its_only_grant_is_writing_the_certificate_topics() {
        let watch = CertificateWatch { certs: Vec::new() };
        assert_eq!(
            watch.grants(),
            [Grant {
                identity: "tollgate:certs".into(),
                access: Access::Write,
                filter: "$SYS/tollgate/certs/#".into(),
            }]
        );
    }

    #[test]
    fn watched_certificates_cover_server_certificates_client_cas_and_the_dev_ca_once() {
        let (dir, _) = config(LOCAL);
        for f in ["s.crt", "s.key", "ca.crt"] {
            std::fs::write(dir.path().join(f), "x").expect("file");
        }
        let mut cfg = config(LOCAL).1;
        cfg.listeners[0].transport = Transport::Tls;
        cfg.listeners[0].name = "devices".into();
        cfg.listeners[0].cert = Some(dir.path().join("s.crt"));
        cfg.listeners[0].client_ca = Some(dir.path().join("ca.crt"));
        let pki = DevPki {
            ca_cert: dir.path().join("ca.crt"),
            server_cert: dir.path().join("dev.crt"),
            server_key: dir.path().join("dev.key"),
            device_cert: dir.path().join("d.crt"),
            device_key: dir.path().join("d.key"),
            created: false,
        };
        let labels: Vec<String> = watched_certificates(&cfg, Some(&pki))
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        // The dev CA is the same file as the client CA here: watched once.
        assert_eq!(labels, ["devices-server", "devices-client-ca"]);
    }
}
