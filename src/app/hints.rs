//! The "how do I connect" lines printed at start: one `mosquitto_sub` and one
//! `mosquitto_pub` command per listener, with `--cafile` pointing at the development
//! CA when that is in use. Pure formatting; it must never print secrets.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{ListenerConfig, Transport};
use crate::tls::ClientCertMode;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_with_env, ConfigSource};

    fn listeners() -> Vec<ListenerConfig> {
        let env = [("HOME".to_string(), "/nonexistent".to_string())].into();
        load_with_env(&ConfigSource::Embedded, &env)
            .expect("default config is valid")
            .config
            .listeners
    }

    #[test]
    fn plain_loopback_listener_gets_host_and_port_only() {
        let l = &listeners()[0];
        let lines = client_commands(l, "127.0.0.1:1883".parse().expect("literal"), None);
        assert_eq!(
            lines[0],
            "mosquitto_sub -h 127.0.0.1 -p 1883 -t 'test/#' -v"
        );
        assert!(lines[1].starts_with("mosquitto_pub -h 127.0.0.1 -p 1883 -t test/hello"));
    }

    #[test]
    fn dev_pki_tls_listener_names_localhost_and_the_dev_ca() {
        let l = &listeners()[1];
        let ca = Path::new("/state/dev-pki/ca.crt");
        let lines = client_commands(l, "127.0.0.1:8883".parse().expect("literal"), Some(ca));
        assert!(
            lines[0].starts_with(
                "mosquitto_sub -h localhost -p 8883 --cafile /state/dev-pki/ca.crt -t"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn listener_without_anonymous_access_shows_credential_placeholders() {
        let mut l = listeners()[0].clone();
        l.allow_anonymous = false;
        let lines = client_commands(&l, "127.0.0.1:1883".parse().expect("literal"), None);
        assert!(lines[0].contains("-u <user> -P <password>"), "{lines:?}");
    }
}
