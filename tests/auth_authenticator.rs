//! `PasswordAuthenticator` through the public `Authenticator` seam: certificate and
//! username rules, anonymous handling, empty passwords, unknown users, the success
//! cache, throttling and audit events.

mod support;

use std::time::Duration;

use support::auth::{alice_and_bob, from, request, ALICE_PW};
use tollgate::auth::{
    AnonymousOnly, AuthConfig, AuthError, AuthMethod, Authenticator, HashScheme,
    PasswordAuthenticator, PasswordFile,
};

fn auth(settings: AuthConfig) -> PasswordAuthenticator {
    PasswordAuthenticator::new(Some(alice_and_bob()), settings)
}

#[tokio::test]
async fn accepts_right_password_and_refuses_wrong_one() {
    let a = auth(AuthConfig::default());
    let id = a
        .authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    assert_eq!(id.username.as_deref(), Some("alice"));
    assert_eq!(id.via, AuthMethod::Password);
    assert_eq!(id.client_id, "dev-1");
    assert_eq!(&*id.listener, "tls");
    let wrong = a
        .authenticate(from(request(Some("bob"), Some(b"nope")), "192.0.2.11:1"))
        .await;
    assert_eq!(wrong, Err(AuthError::BadCredentials));
}

#[tokio::test]
async fn unknown_user_still_costs_a_hash() {
    let a = auth(AuthConfig::default());
    assert_eq!(a.hash_evaluations(), 0);
    let r = a.authenticate(request(Some("mallory"), Some(b"x"))).await;
    assert_eq!(r, Err(AuthError::BadCredentials));
    assert_eq!(
        a.hash_evaluations(),
        1,
        "unknown users must spend a (dummy) hash so timing does not reveal which users exist"
    );
}

#[tokio::test]
async fn cache_hit_avoids_a_second_hash() {
    let a = auth(AuthConfig::default());
    for _ in 0..5 {
        a.authenticate(request(Some("alice"), Some(ALICE_PW)))
            .await
            .expect("accepted");
    }
    assert_eq!(a.hash_evaluations(), 1);
    assert_eq!(a.cache_hits(), 4);
    assert_eq!(a.cached_verifications(), 1);
    // A wrong password is never answered from the cache.
    let wrong = a
        .authenticate(from(
            request(Some("alice"), Some(b"alice-pW")),
            "192.0.2.99:1",
        ))
        .await;
    assert_eq!(wrong, Err(AuthError::BadCredentials));
    assert_eq!(a.hash_evaluations(), 2);
}

#[tokio::test]
async fn reconnect_storm_with_same_credentials_costs_one_hash() {
    let a = auth(AuthConfig {
        verify_concurrency: 1,
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for i in 0..20 {
        let a = a.clone();
        let peer = format!("198.51.100.{}:1883", i + 1);
        tasks.push(tokio::spawn(async move {
            a.authenticate(from(request(Some("alice"), Some(ALICE_PW)), &peer))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("accepted");
    }
    assert_eq!(a.hash_evaluations(), 1);
}

#[tokio::test]
async fn new_authenticator_starts_with_an_empty_cache() {
    let a = auth(AuthConfig::default());
    a.authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    let reloaded = auth(AuthConfig::default());
    reloaded
        .authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    assert_eq!(reloaded.cache_hits(), 0);
    assert_eq!(reloaded.hash_evaluations(), 1);
}

#[tokio::test(start_paused = true)]
async fn cache_entries_expire_after_ttl() {
    let a = auth(AuthConfig {
        cache_ttl: Duration::from_secs(60),
        ..Default::default()
    });
    a.authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    tokio::time::advance(Duration::from_secs(61)).await;
    a.authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    assert_eq!(a.hash_evaluations(), 2);
}

#[tokio::test(start_paused = true)]
async fn throttling_delays_grow_and_reset_on_success() {
    let base = Duration::from_millis(100);
    let a = auth(AuthConfig {
        throttle_base: base,
        throttle_max: Duration::from_millis(300),
        ..Default::default()
    });
    let ip = "192.0.2.10".parse().expect("ip");
    let wrong = || request(Some("alice"), Some(b"wrong"));
    let right = || request(Some("alice"), Some(ALICE_PW));

    assert_eq!(
        a.authenticate(wrong()).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(a.retry_after(ip, Some("alice")), Some(base));
    // While throttled, even the right password is answered at once without hashing.
    let hashes = a.hash_evaluations();
    assert_eq!(a.authenticate(right()).await, Err(AuthError::Throttled));
    assert_eq!(a.hash_evaluations(), hashes);

    tokio::time::advance(base).await;
    assert_eq!(
        a.authenticate(wrong()).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(a.retry_after(ip, Some("alice")), Some(base * 2));
    tokio::time::advance(base * 2).await;
    assert_eq!(
        a.authenticate(wrong()).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(
        a.retry_after(ip, Some("alice")),
        Some(Duration::from_millis(300)),
        "capped at throttle_max"
    );

    tokio::time::advance(Duration::from_millis(300)).await;
    a.authenticate(right())
        .await
        .expect("accepted after the delay");
    assert_eq!(a.retry_after(ip, Some("alice")), None, "success resets");
    assert_eq!(
        a.authenticate(wrong()).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(a.retry_after(ip, Some("alice")), Some(base), "back to base");
}

#[tokio::test(start_paused = true)]
async fn throttles_per_username_across_addresses_and_per_address_across_usernames() {
    let a = auth(AuthConfig {
        throttle_base: Duration::from_secs(5),
        ..Default::default()
    });
    assert_eq!(
        a.authenticate(request(Some("alice"), Some(b"wrong"))).await,
        Err(AuthError::BadCredentials)
    );
    // Same user from elsewhere: throttled.
    assert_eq!(
        a.authenticate(from(request(Some("alice"), Some(b"x")), "203.0.113.5:1"))
            .await,
        Err(AuthError::Throttled)
    );
    // Same address, other user: throttled.
    assert_eq!(
        a.authenticate(request(Some("bob"), Some(b"bob-pw"))).await,
        Err(AuthError::Throttled)
    );
    // Unrelated address and user: unaffected.
    a.authenticate(from(request(Some("bob"), Some(b"bob-pw")), "203.0.113.6:1"))
        .await
        .expect("accepted");
    assert_eq!(a.throttle_entries(), (1, 1));
}

#[tokio::test]
async fn certificate_identity_mismatching_username_is_refused() {
    let a = auth(AuthConfig::default());
    let mut r = request(Some("alice"), Some(ALICE_PW));
    r.certificate_identity = Some("sensor_001".into());
    match a.authenticate(r).await {
        Err(AuthError::NotAuthorized(msg)) => assert_eq!(
            msg,
            "certificate identity sensor_001 does not match username alice"
        ),
        other => panic!("expected refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn certificate_identity_decides_when_username_absent_or_equal() {
    let a = auth(AuthConfig::default());
    let mut r = request(None, None);
    r.password_auth = false;
    r.certificate_identity = Some("sensor_001".into());
    let id = a.authenticate(r.clone()).await.expect("accepted");
    assert_eq!(id.username.as_deref(), Some("sensor_001"));
    assert_eq!(id.via, AuthMethod::Certificate);
    r.username = Some("sensor_001".into());
    let id = a.authenticate(r).await.expect("equal username accepted");
    assert_eq!(id.via, AuthMethod::Certificate);
    assert_eq!(a.hash_evaluations(), 0, "certificates never hash");
}

#[tokio::test]
async fn empty_or_missing_password_is_refused_without_hashing() {
    let a = auth(AuthConfig::default());
    assert_eq!(
        a.authenticate(request(Some("alice"), Some(b""))).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(
        a.authenticate(request(Some("alice"), None)).await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(a.hash_evaluations(), 0);
}

#[tokio::test]
async fn anonymous_is_refused_where_not_allowed_and_has_no_username_where_allowed() {
    let a = auth(AuthConfig::default());
    assert!(matches!(
        a.authenticate(request(None, None)).await,
        Err(AuthError::NotAuthorized(_))
    ));
    let mut r = request(None, None);
    r.allow_anonymous = true;
    let id = a.authenticate(r.clone()).await.expect("anonymous allowed");
    assert_eq!(id.via, AuthMethod::Anonymous);
    assert_eq!(id.username, None);
    // A password without a username is not silently treated as anonymous.
    r.password = Some(bytes::Bytes::from_static(b"pw"));
    assert_eq!(a.authenticate(r).await, Err(AuthError::BadCredentials));
}

#[tokio::test]
async fn username_on_listener_without_password_auth_is_refused() {
    let a = auth(AuthConfig::default());
    let mut r = request(Some("alice"), Some(ALICE_PW));
    r.password_auth = false;
    r.allow_anonymous = true;
    assert!(matches!(
        a.authenticate(r).await,
        Err(AuthError::NotAuthorized(_))
    ));
}

#[tokio::test]
async fn without_password_file_users_are_refused() {
    let a = PasswordAuthenticator::new(None, AuthConfig::default());
    assert!(matches!(
        a.authenticate(request(Some("alice"), Some(ALICE_PW))).await,
        Err(AuthError::NotAuthorized(_))
    ));
}

#[tokio::test]
async fn parallel_guesses_from_one_address_cost_one_hash() {
    let a = auth(AuthConfig {
        verify_concurrency: 1,
        throttle_base: Duration::from_secs(5),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for i in 0..10 {
        let a = a.clone();
        let guess = format!("guess-{i}");
        tasks.push(tokio::spawn(async move {
            a.authenticate(request(Some("alice"), Some(guess.as_bytes())))
                .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let bad = results
        .iter()
        .filter(|r| **r == Err(AuthError::BadCredentials))
        .count();
    let throttled = results
        .iter()
        .filter(|r| **r == Err(AuthError::Throttled))
        .count();
    assert_eq!((bad, throttled), (1, 9));
    assert_eq!(a.hash_evaluations(), 1);
}

#[tokio::test]
async fn anonymous_only_never_turns_an_unverified_username_into_an_identity() {
    let mut r = request(Some("admin"), Some(b"whatever"));
    r.allow_anonymous = true;
    let id = AnonymousOnly
        .authenticate(r.clone())
        .await
        .expect("anonymous");
    assert_eq!(id.via, AuthMethod::Anonymous);
    assert_eq!(id.username, None);
    r.certificate_identity = Some("sensor_001".into());
    assert!(matches!(
        AnonymousOnly.authenticate(r).await,
        Err(AuthError::NotAuthorized(_))
    ));
}

#[tokio::test]
async fn reload_empties_the_cache_but_keeps_throttling() {
    let original = alice_and_bob();
    let text = original.to_text();
    let a = PasswordAuthenticator::new(
        Some(original),
        AuthConfig {
            throttle_base: Duration::from_secs(5),
            ..Default::default()
        },
    );
    a.authenticate(request(Some("alice"), Some(ALICE_PW)))
        .await
        .expect("accepted");
    let attacker = from(request(Some("mallory"), Some(b"x")), "203.0.113.66:1");
    assert_eq!(
        a.authenticate(attacker.clone()).await,
        Err(AuthError::BadCredentials)
    );

    // alice's password changes in the reloaded file: the old one must stop working.
    let mut changed = PasswordFile::parse("reloaded", text.as_bytes()).expect("parses");
    changed
        .upsert("alice", b"new-pw", HashScheme::mosquitto_default())
        .expect("hash");
    let settings = AuthConfig {
        throttle_base: Duration::from_secs(5),
        ..Default::default()
    };
    let b = a.reload(Some(changed), settings);
    assert_eq!(
        b.authenticate(from(request(Some("alice"), Some(ALICE_PW)), "192.0.2.50:1"))
            .await,
        Err(AuthError::BadCredentials)
    );
    assert_eq!(b.authenticate(attacker).await, Err(AuthError::Throttled));
    assert!(!b.password_unchanged(&a, "alice"));
    assert!(b.password_unchanged(&a, "bob"));
    assert!(!b.password_unchanged(&a, "mallory"));
}
