//! The "how do I connect" lines printed at start: one `mosquitto_sub` and one
//! `mosquitto_pub` command per listener, with `--cafile` pointing at the development
//! CA and `--cert/--key` at the development device certificate when those are in use.
//! Pure formatting; it must never print secrets (key *paths* are not secrets).

use std::net::SocketAddr;

use crate::config::{ListenerConfig, Transport};
use crate::pki::DevPki;
use crate::tls::ClientCertMode;

/// Commands that connect to `listener` bound at `addr`.
pub fn client_commands(
    listener: &ListenerConfig,
    addr: SocketAddr,
    dev_pki: Option<&DevPki>,
) -> Vec<String> {
    if listener.transport.is_websocket() {
        return websocket_hint(listener, addr);
    }
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
    let dev_pki = dev_pki.filter(|_| listener.uses_dev_pki());
    if tls {
        match dev_pki {
            Some(pki) => options.push_str(&format!(" --cafile {}", pki.ca_cert.display())),
            None => options.push_str(" --cafile <CA that signed the server certificate>"),
        }
        match (listener.client_cert_mode(), dev_pki) {
            (ClientCertMode::Off, _) => {}
            (_, Some(pki)) if listener.client_ca.is_none() => options.push_str(&format!(
                " --cert {} --key {}",
                pki.device_cert.display(),
                pki.device_key.display()
            )),
            (ClientCertMode::Required, _) => {
                options.push_str(" --cert <device.crt> --key <device.key>")
            }
            (ClientCertMode::Optional, _) => {}
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

/// mosquitto_pub/sub speak no WebSocket: name the URL a WebSocket client (MQTT.js) uses.
fn websocket_hint(listener: &ListenerConfig, addr: SocketAddr) -> Vec<String> {
    let scheme = if listener.transport.is_tls() {
        "wss"
    } else {
        "ws"
    };
    let host = if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        "localhost".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    vec![format!(
        "MQTT over WebSocket (subprotocol mqtt): {scheme}://{host}:{}{}",
        addr.port(),
        listener.websocket_path()
    )]
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
    fn dev_pki_tls_listener_names_localhost_the_dev_ca_and_the_dev_device_certificate() {
        let l = &listeners()[1];
        let pki = DevPki {
            ca_cert: "/state/dev-pki/ca.crt".into(),
            server_cert: "/state/dev-pki/server.crt".into(),
            server_key: "/state/dev-pki/server.key".into(),
            device_cert: "/state/dev-pki/devices/dev-device.crt".into(),
            device_key: "/state/dev-pki/devices/dev-device.key".into(),
            created: false,
        };
        let lines = client_commands(l, "127.0.0.1:8883".parse().expect("literal"), Some(&pki));
        assert!(
            lines[0].starts_with(
                "mosquitto_sub -h localhost -p 8883 --cafile /state/dev-pki/ca.crt --cert /state/dev-pki/devices/dev-device.crt --key /state/dev-pki/devices/dev-device.key -t"
            ),
            "{lines:?}"
        );
        assert!(!lines[0].contains("-u "), "{lines:?}");
    }

    #[test]
    fn listener_without_anonymous_access_shows_credential_placeholders() {
        let mut l = listeners()[0].clone();
        l.allow_anonymous = false;
        let lines = client_commands(&l, "127.0.0.1:1883".parse().expect("literal"), None);
        assert!(lines[0].contains("-u <user> -P <password>"), "{lines:?}");
    }
}
