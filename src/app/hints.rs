//! The "how do I connect" lines printed at start: one `mosquitto_sub` and one
//! `mosquitto_pub` command per listener, with `--cafile` pointing at the development
//! CA when that is in use. Pure formatting; it must never print secrets.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::shims::tls::ClientCertMode;
use crate::config::{ListenerConfig, Transport};

/// Commands that connect to `listener` bound at `addr`.
pub fn client_commands(
    listener: &ListenerConfig,
    addr: SocketAddr,
    dev_ca: Option<&Path>,
) -> Vec<String> {
    let tls = listener.transport == Transport::Tls;
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        // The development certificate names localhost; mosquitto checks the host name.
        if tls {
            "localhost".to_string()
        } else if addr.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "::1".to_string()
        }
    } else {
        addr.ip().to_string()
    };
    let mut options = format!("-h {host} -p {}", addr.port());
    if tls {
        match (listener.uses_dev_pki(), dev_ca) {
            (true, Some(ca)) => options.push_str(&format!(" --cafile {}", ca.display())),
            _ => options.push_str(" --cafile <CA that signed the server certificate>"),
        }
        if listener.client_cert_mode() == ClientCertMode::Required {
            options.push_str(" --cert <device.crt> --key <device.key>");
        }
    }
    let certificate_only = tls && listener.client_cert_mode() == ClientCertMode::Required;
    if !(listener.allow_anonymous || certificate_only) {
        options.push_str(" -u <user> -P <password>");
    }
    vec![
        format!("mosquitto_sub {options} -t 'test/#' -v"),
        format!(
            "mosquitto_pub {options} -t test/hello -m 'hello from {}'",
            listener.name
        ),
    ]
}
