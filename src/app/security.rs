//! Where `[auth]`, `[acl]` and the certificate files become running security state:
//! the password authenticator (throttle state carried across reloads), the compiled
//! ACL, and the built-in grants of the gateway's own in-process clients (the grant
//! table the components declare, see `crate::component::Grant`).
//! It must never half-apply a change (everything is built before anything is swapped)
//! and never log a password.

use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::acl::{Access, Acl, AclDecision, AclError, AllowAll, Authorizer};
use crate::auth::jwt::JwtVerifier;
use crate::auth::{AuthMethod, Identity, PasswordAuthenticator, PasswordFile};
use crate::component::Grant;
use crate::config::Config;
use crate::topic;

/// Authentication and authorization built from one configuration.
#[derive(Clone)]
pub struct Security {
    /// Certificates, password file and anonymous clients at CONNECT.
    pub authenticator: PasswordAuthenticator,
    /// What every PUBLISH, SUBSCRIBE and delivery is checked against.
    pub authorizer: Arc<dyn Authorizer>,
    /// The compiled ACL, when `[acl]` configures one (`None`: everything is allowed).
    pub acl: Option<Arc<Acl>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("authenticator", &self.authenticator)
            .field("acl", &self.acl.as_ref().map(|a| a.stats()))
            .finish()
    }
}

/// THE place where `[auth]` and `[acl]` become the authenticator and authorizer, at
/// start (`previous = None`) and on every reload (`previous` = the running state, whose
/// failure throttling and hashing pool carry over). `grants` is the components' grant
/// table: the only permissions the ACL does not decide. Every problem is returned, one
/// line each, with the key it concerns, so `tollgate check` lists them all at once.
pub fn build_security(
    config: &Config,
    previous: Option<&Security>,
    grants: Vec<Grant>,
) -> Result<Security, Vec<String>> {
    let label = config.source.label();
    let mut problems = Vec::new();
    let passwords = match &config.auth.password_file {
        None => None,
        Some(path) => match PasswordFile::load(path) {
            Ok(file) => Some(file),
            Err(e) => {
                for line in e.to_string().lines() {
                    problems.push(format!("{label}: auth.password_file: {}", line.trim()));
                }
                None
            }
        },
    };
    let acl = if config.acl.is_configured() {
        match Acl::load(config.acl.file.as_deref(), &config.acl.rule) {
            Ok(acl) => Some(Arc::new(acl)),
            Err(AclError::Invalid { problems: found }) => {
                for p in found {
                    problems.push(format!("{label}: acl: {p}"));
                }
                None
            }
            Err(e) => {
                problems.push(format!("{label}: acl.file: {e}"));
                None
            }
        }
    } else {
        None
    };
    // [auth.jwt]: keys read now (also on every reload), the replay cache carried over.
    let jwt = match &config.auth.jwt {
        None => None,
        Some(settings) => {
            let replay = previous.and_then(|p| p.authenticator.jwt().map(|j| j.replay_cache()));
            match JwtVerifier::load(settings, replay) {
                Ok(v) => Some(v),
                Err(found) => {
                    problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
                    None
                }
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let settings = config.auth.clone();
    let authenticator = match previous {
        Some(old) => old.authenticator.reload(passwords, settings),
        None => PasswordAuthenticator::new(passwords, settings),
    }
    .with_jwt(jwt);
    let inner: Arc<dyn Authorizer> = match &acl {
        Some(acl) => acl.clone(),
        None => Arc::new(AllowAll),
    };
    Ok(Security {
        authenticator,
        authorizer: Arc::new(GatewayAuthorizer {
            inner,
            grants: grants.into(),
        }),
        acl,
    })
}

/// Warnings about the loaded security state (ACL lines that probably do not do what
/// their author meant), for `tollgate check` and the logs.
pub fn security_warnings(security: &Security) -> Vec<String> {
    security
        .acl
        .as_ref()
        .map(|acl| acl.warnings().to_vec())
        .unwrap_or_default()
}

/// A password file more exposed than private keys may be (the rule of
/// [`crate::fsutil::secret_exposure`]). Only a warning: the file holds hashes, not
/// keys, and Mosquitto's own files are often 0644; refusing would break upgrades.
pub fn password_file_warning(config: &Config) -> Option<String> {
    let path = config.auth.password_file.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    let exposure = crate::fsutil::secret_file_exposure(&meta)?;
    Some(format!(
        "{}: auth.password_file: {} {} (password hashes can be attacked offline)",
        config.source.label(),
        path.display(),
        exposure.describe(path)
    ))
}

/// Log what is in force, at start and after every accepted reload.
pub fn log_security(config: &Config, security: &Security, event: &str) {
    let users = security.authenticator.user_count();
    match &config.auth.password_file {
        Some(path) => {
            info!(password_file = %path.display(), users, "{event}: password file loaded.")
        }
        None => debug!("{event}: no password file configured."),
    }
    if let Some(warning) = password_file_warning(config) {
        warn!(warning = %warning, "Password file permissions are too open.");
    }
    match &security.acl {
        Some(acl) => {
            let stats = acl.stats();
            info!(
                acl_file = %config.acl.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                inline_rules = config.acl.rule.len(),
                rules = stats.rules,
                users = stats.users,
                anonymous_rules = stats.anonymous_rules,
                pattern_rules = stats.pattern_rules,
                "{event}: ACL loaded; anything not granted is denied."
            );
            for warning in acl.warnings() {
                warn!(warning = %warning, "ACL warning.");
            }
        }
        None => warn!("{event}: no ACL configured ([acl] file or rules): every client may publish and subscribe anywhere."),
    }
}

/// The configured authorizer plus the grant table: an in-process client (which no
/// network client can become) holding a component's identity may do what that
/// component's grants say, whatever the ACL says; everything else is the ACL's call.
struct GatewayAuthorizer {
    inner: Arc<dyn Authorizer>,
    grants: Arc<[Grant]>,
}

impl GatewayAuthorizer {
    fn grant(&self, identity: &Identity, access: Access, topic: &str) -> Option<&Grant> {
        if identity.via != AuthMethod::Internal {
            return None;
        }
        let name = identity.username.as_deref()?;
        self.grants.iter().find(|g| {
            g.identity == name
                && match (g.access, access) {
                    (Access::Write, Access::Write) | (Access::Read, Access::Read) => {
                        topic::matches(&g.filter, topic)
                    }
                    // A read grant covers subscribing to filters inside it.
                    (Access::Read, Access::Subscribe) => topic::filter_covers(&g.filter, topic),
                    _ => false,
                }
        })
    }
}

/// A JWT's ACL claim narrows what the ACL grants (both must allow); no claim, no
/// narrowing. An identity authenticated by token whose grant is not known (a session
/// or will restored from disk, which keeps the identity but not the token) is allowed
/// nothing: its claim may have been narrower than the ACL file.
fn token_allows(identity: &Identity, access: Access, topic: &str) -> bool {
    match &identity.jwt {
        Some(grant) => grant.allows(access, topic),
        None => identity.via != crate::auth::AuthMethod::Jwt,
    }
}

impl Authorizer for GatewayAuthorizer {
    fn check(&self, identity: &Identity, access: Access, topic: &str) -> AclDecision {
        if let Some(g) = self.grant(identity, access, topic) {
            return AclDecision::Allow {
                rule: Some(format!(
                    "built-in: {} {} {}",
                    g.identity,
                    match g.access {
                        Access::Write => "writes",
                        Access::Read | Access::Subscribe => "reads",
                    },
                    g.filter
                )),
            };
        }
        if !token_allows(identity, access, topic) {
            return AclDecision::Deny {
                rule: Some("token claim: outside the JWT's ACL claim".into()),
            };
        }
        self.inner.check(identity, access, topic)
    }

    fn allows(&self, identity: &Identity, access: Access, topic: &str) -> bool {
        self.grant(identity, access, topic).is_some()
            || (token_allows(identity, access, topic) && self.inner.allows(identity, access, topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::certs::{CertificateWatch, CERT_WATCH_IDENTITY};
    use crate::component::Component;
    use crate::config::{load_with_env, ConfigSource};

    use crate::app::testing::{config, LOCAL};

    fn user(name: &str, via: AuthMethod) -> Identity {
        Identity {
            username: Some(name.to_string()),
            client_id: name.to_string(),
            via,
            listener: Arc::from("local"),
            jwt: None,
        }
    }

    #[test]
    fn password_file_readable_by_others_is_loaded_with_a_warning_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("passwd");
        std::fs::write(&path, "").expect("write");
        let file = dir.path().join("t.toml");
        let body = format!("{LOCAL}password_auth = true\n[auth]\npassword_file = \"passwd\"\n");
        std::fs::write(&file, body).expect("write");
        let cfg = load_with_env(&ConfigSource::File(file), &Default::default())
            .expect("valid config")
            .config;
        let chmod = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(0o644);
        build_security(&cfg, None, Vec::new()).expect("still loads");
        let warning = password_file_warning(&cfg).expect("warned");
        assert!(
            warning.contains("auth.password_file")
                && warning.contains(&format!("chmod 600 {}", path.display())),
            "{warning}"
        );
        chmod(0o600);
        assert_eq!(password_file_warning(&cfg), None);
        chmod(0o640);
        assert_eq!(password_file_warning(&cfg), None, "own group");
    }

    #[test]
    fn without_acl_everything_is_allowed_and_with_acl_unlisted_is_denied() {
        let (_d, open) = config(LOCAL);
        let s = build_security(&open, None, Vec::new()).expect("builds");
        assert!(s.acl.is_none());
        assert!(s
            .authorizer
            .allows(&user("u", AuthMethod::Password), Access::Write, "a/b"));
        let (_d, closed) = config(&format!(
            "{LOCAL}[[acl.rule]]\nuser = \"u\"\naccess = \"write\"\ntopic = \"a/#\"\n"
        ));
        let s = build_security(&closed, None, Vec::new()).expect("builds");
        let u = user("u", AuthMethod::Password);
        assert!(s.authorizer.allows(&u, Access::Write, "a/b"));
        assert!(!s.authorizer.allows(&u, Access::Write, "b"));
        assert!(!s.authorizer.allows(&u, Access::Read, "a/b"));
    }

    /// A token identity restored from disk (a persisted session or will) has lost its
    /// grant: it is allowed nothing, since its ACL claim may have been narrower than
    /// the ACL file. Other identities without a grant are not affected.
    #[test]
    fn a_token_identity_without_its_grant_is_allowed_nothing() {
        let (_d, open) = config(LOCAL);
        let s = build_security(&open, None, Vec::new()).expect("builds");
        let restored = user("device-7", AuthMethod::Jwt);
        for access in [Access::Write, Access::Read, Access::Subscribe] {
            assert!(!s.authorizer.allows(&restored, access, "a/b"), "{access:?}");
        }
        assert!(s.authorizer.allows(
            &user("device-7", AuthMethod::Password),
            Access::Write,
            "a/b"
        ));
    }

    #[test]
    fn only_the_internal_certificate_publisher_may_write_its_sys_topics() {
        let (_d, closed) = config(&format!(
            "{LOCAL}[[acl.rule]]\nuser = \"u\"\naccess = \"write\"\ntopic = \"a/#\"\n"
        ));
        let grants = CertificateWatch::from_config(&closed, None).grants();
        let s = build_security(&closed, None, grants).expect("builds");
        let topic = "$SYS/tollgate/certs/devices-server/expiry";
        let watch = Identity::internal(CERT_WATCH_IDENTITY);
        assert!(s.authorizer.allows(&watch, Access::Write, topic));
        assert!(s
            .authorizer
            .check(&watch, Access::Write, topic)
            .is_allowed());
        assert!(!s
            .authorizer
            .allows(&watch, Access::Write, "$SYS/broker/uptime"));
        assert!(!s.authorizer.allows(&watch, Access::Read, topic));
        // The same name over the network (password or certificate) gets nothing extra.
        for via in [AuthMethod::Password, AuthMethod::Certificate] {
            let forged = user(CERT_WATCH_IDENTITY, via);
            assert!(!s.authorizer.allows(&forged, Access::Write, topic));
        }
    }

    #[test]
    fn every_password_and_acl_problem_is_reported_with_its_key() {
        let (dir, _) = config(LOCAL);
        std::fs::write(dir.path().join("passwd"), "a:$7$broken\nb:$7$broken\n").expect("passwd");
        std::fs::write(dir.path().join("acl"), "topic read a/#/b\n").expect("acl");
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            format!("{LOCAL}[auth]\npassword_file = \"passwd\"\n[acl]\nfile = \"acl\"\n"),
        )
        .expect("write");
        let cfg = load_with_env(&ConfigSource::File(path), &Default::default())
            .expect("valid config")
            .config;
        let problems = build_security(&cfg, None, Vec::new()).expect_err("broken files");
        let text = problems.join("\n");
        assert!(text.contains("auth.password_file"), "{text}");
        assert!(
            text.contains("passwd:1") && text.contains("passwd:2"),
            "{text}"
        );
        assert!(text.contains("acl:1"), "{text}");
    }
}
