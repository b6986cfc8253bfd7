//! Identity extraction from a verified client certificate (CN, SAN, subject).
//!
//! The identity is returned exactly as it appears in the certificate: one that contains `+`,
//! `#`, `/` or NUL is not altered or refused here; the ACL layer refuses to substitute such a
//! name into `%u` pattern rules, so it can only match explicit `user` rules.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use super::{IdentitySource, TlsError};

/// Identity of the verified client certificate on `conn` (a `ServerConnection` or an
/// `UnbufferedServerConnection`, both deref to `CommonState`); `None` when the client sent none.
///
/// Call this after the handshake completed: rustls has then verified the chain (CA, dates,
/// key usage, CRL), so only the extraction can fail here.
pub fn peer_identity(
    conn: &rustls::CommonState,
    source: IdentitySource,
) -> Result<Option<String>, TlsError> {
    match conn.peer_certificates().and_then(|c| c.first()) {
        None => Ok(None),
        Some(leaf) => certificate_identity(leaf.as_ref(), source).map(Some),
    }
}

/// Identity of a DER certificate for the given source.
pub fn certificate_identity(der: &[u8], source: IdentitySource) -> Result<String, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TlsError::BadPeerCertificate(e.to_string()))?;
    let subject = cert.subject();
    let missing = || TlsError::IdentityMissing {
        wanted: source,
        subject: rfc2253_subject(subject),
    };
    match source {
        IdentitySource::Cn => {
            let cn = subject.iter_common_name().next().ok_or_else(missing)?;
            cn.as_str()
                .map(str::to_string)
                .map_err(|e| TlsError::BadPeerCertificate(format!("common name: {e}")))
        }
        IdentitySource::Subject => Ok(rfc2253_subject(subject)),
        IdentitySource::SanDns | IdentitySource::SanEmail | IdentitySource::SanUri => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| TlsError::BadPeerCertificate(format!("subjectAltName: {e}")))?
                .ok_or_else(missing)?;
            san.value
                .general_names
                .iter()
                .find_map(|n| match (source, n) {
                    (IdentitySource::SanDns, GeneralName::DNSName(s))
                    | (IdentitySource::SanEmail, GeneralName::RFC822Name(s))
                    | (IdentitySource::SanUri, GeneralName::URI(s)) => Some(s.to_string()),
                    _ => None,
                })
                .ok_or_else(missing)
        }
    }
}

/// The subject in RFC 2253 form (last RDN first, `,` between RDNs, `+` inside one), which is
/// what Mosquitto's `use_subject_as_username` produces (e.g. `CN=client1,O=MyOrg,C=US`).
pub fn rfc2253_subject(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type();
                    let key = match x509_parser::objects::oid2abbrev(oid, registry) {
                        Ok("Email") => "emailAddress".to_string(),
                        Ok(abbrev) => abbrev.to_string(),
                        Err(_) => oid.to_id_string(),
                    };
                    let value = match atv.as_str() {
                        Ok(s) => escape_rfc2253(s),
                        Err(_) => format!(
                            "#{}",
                            atv.attr_value()
                                .data
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect::<String>()
                        ),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape_rfc2253(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(configure: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        configure(&mut params);
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn extracts_each_identity_kind() {
        let der = cert(|p| {
            p.distinguished_name.push(DnType::CountryName, "US");
            p.distinguished_name
                .push(DnType::OrganizationName, "My Org, Inc");
            p.distinguished_name.push(DnType::CommonName, "sensor_001");
            p.subject_alt_names = vec![
                SanType::Rfc822Name("ops@example.com".try_into().expect("ia5")),
                SanType::DnsName("sensor-001.local".try_into().expect("ia5")),
                SanType::URI("spiffe://plant/sensor/1".try_into().expect("ia5")),
                SanType::DnsName("second.local".try_into().expect("ia5")),
            ];
        });
        let id = |s| certificate_identity(&der, s).expect("identity");
        assert_eq!(id(IdentitySource::Cn), "sensor_001");
        assert_eq!(id(IdentitySource::SanDns), "sensor-001.local");
        assert_eq!(id(IdentitySource::SanEmail), "ops@example.com");
        assert_eq!(id(IdentitySource::SanUri), "spiffe://plant/sensor/1");
        assert_eq!(
            id(IdentitySource::Subject),
            "CN=sensor_001,O=My Org\\, Inc,C=US"
        );
    }

    #[test]
    fn missing_identity_field_is_an_error_naming_the_subject() {
        let der = cert(|p| p.distinguished_name.push(DnType::OrganizationName, "NoCn"));
        let err = certificate_identity(&der, IdentitySource::Cn).expect_err("no CN");
        assert!(err.to_string().contains("O=NoCn"), "{err}");
        assert!(certificate_identity(&der, IdentitySource::SanDns).is_err());
    }

    #[test]
    fn wildcard_characters_are_returned_as_is() {
        let der = cert(|p| p.distinguished_name.push(DnType::CommonName, "a/#+b"));
        assert_eq!(
            certificate_identity(&der, IdentitySource::Cn).expect("cn"),
            "a/#+b"
        );
    }
}
