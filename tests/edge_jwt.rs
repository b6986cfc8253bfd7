//! JWT authentication (`jwt_auth = true` on a listener, `[auth.jwt]`), over real sockets
//! with rumqttc (v5 and v3.1.1) and mosquitto_pub/mosquitto_sub. Tokens are signed in
//! the test with jsonwebtoken; the keys are made at test time (RSA with the `rsa`
//! crate, P-256 and Ed25519 with rcgen over ring).

mod support;

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

use support::clients::{v5_connect, v5_options, V5};
use support::jwt::{now, rcgen_pair, ACL, AUDIENCE, ISSUER};
use support::{gateway::*, logs, peers::*};

/// Signing keys made for one test: an RSA key (`rsa-1`), a P-256 key (`ec-1`) and an
/// Ed25519 key (`ed-1`), with their public halves written as PEM files named by kid.
struct Keys {
    rsa: EncodingKey,
    rsa_public_pem: String,
    ec: EncodingKey,
    ed: EncodingKey,
}

fn rsa_pair() -> (EncodingKey, String) {
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
    // ring (under jsonwebtoken) takes RSA private keys as PKCS#1 DER.
    let der = private.to_pkcs1_der().expect("pkcs1");
    let public = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public pem");
    (EncodingKey::from_rsa_der(der.as_bytes()), public)
}

fn make_keys(dir: &Path) -> Keys {
    let (rsa, rsa_public_pem) = rsa_pair();
    let (ec, ec_pem, _) = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (ed, ed_pem, _) = rcgen_pair(&rcgen::PKCS_ED25519);
    std::fs::write(dir.join("rsa-1.pem"), &rsa_public_pem).expect("write");
    std::fs::write(dir.join("ec-1.pem"), ec_pem).expect("write");
    std::fs::write(dir.join("ed-1.pem"), ed_pem).expect("write");
    Keys {
        rsa,
        rsa_public_pem,
        ec,
        ed,
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A gateway with a plain loopback listener `devices` that takes JWTs (and no
/// passwords), the three PEM keys, issuer and audience required, the `mqtt` ACL claim,
/// no leeway (so expiry is observed at `exp`), and the ACL above.
async fn gateway(dir: &Path, extra_keys: &str) -> Gateway {
    std::fs::write(dir.join("acl"), ACL).expect("acl");
    Gateway::start(dir, &body(extra_keys, true)).await
}

fn body(extra_keys: &str, jwt_auth: bool) -> String {
    format!(
        "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n\
         jwt_auth = {jwt_auth}\npassword_auth = false\n\
         [auth.jwt]\nkeys = [\"rsa-1.pem\", \"ec-1.pem\", \"ed-1.pem\"{extra_keys}]\n\
         issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\nleeway = \"0s\"\nacl_claim = \"mqtt\"\n\
         [acl]\nfile = \"acl\"\n"
    )
}

fn v5_with_token(
    gw: &Gateway,
    id: &str,
    user: Option<&str>,
    token: &str,
) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(gw.addr("devices"), id);
    o.set_credentials(user.unwrap_or(""), token.to_string());
    o
}

/// What a CONNECT with these options is answered: "Success" or the refusal's code.
async fn connect_outcome(options: rumqttc::v5::MqttOptions) -> String {
    let (_client, el) = rumqttc::v5::AsyncClient::new(options, 10);
    let mut events = support::clients::spawn_events(el, support::clients::debug_text);
    loop {
        let ev = tokio::time::timeout(support::wait::WAIT, events.recv())
            .await
            .expect("answer within the limit")
            .expect("event loop alive");
        match ev {
            Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(c))) => {
                return format!("{:?}", c.code)
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

async fn publish(c: &mut V5, topic: &str) -> p5::PubAckReason {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, "x")
        .await
        .expect("queued");
    c.wait_for(|p| match p {
        p5::Packet::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn jsonwebtoken_refuses_hmac_with_an_rsa_key_and_foreign_algorithms() {
    // What this module relies on in jsonwebtoken 9 (decoding.rs verify_signature): every
    // allowed algorithm must be of the key's family, and the header's alg must be allowed.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let public =
        jsonwebtoken::DecodingKey::from_rsa_pem(keys.rsa_public_pem.as_bytes()).expect("pem");
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(keys.rsa_public_pem.as_bytes()),
        &claims("dev-1"),
    );
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.set_audience(&[AUDIENCE]);
    let err = jsonwebtoken::decode::<Value>(&forged, &public, &v).expect_err("refused");
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
    );
    let v = jsonwebtoken::Validation::new(Algorithm::HS256);
    let err = jsonwebtoken::decode::<Value>(&forged, &public, &v).expect_err("refused");
    assert_eq!(
        *err.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
    );
    let _ = (keys.ec, keys.ed);
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_connect_and_publish() {
    if !require_peer("mosquitto_pub") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let mut reader = v5_connect(v5_with_token(
        &gw,
        "reader",
        None,
        &sign(Algorithm::EdDSA, Some("ed-1"), &keys.ed, &claims("dev-2")),
    ))
    .await;
    reader.subscribe("site/#", QoS::AtLeastOnce).await;
    // RS256 with the username equal to the claim, ES256 without a kid and no username.
    let mut rs = v5_connect(v5_with_token(
        &gw,
        "rs",
        Some("dev-1"),
        &sign(Algorithm::RS256, Some("rsa-1"), &keys.rsa, &claims("dev-1")),
    ))
    .await;
    assert_eq!(publish(&mut rs, "site/rs").await, p5::PubAckReason::Success);
    let got = reader.publish().await;
    assert_eq!(&got.topic[..], b"site/rs");
    let mut es = v5_connect(v5_with_token(
        &gw,
        "es",
        None,
        &sign(Algorithm::ES256, None, &keys.ec, &claims("dev-1")),
    ))
    .await;
    assert_eq!(publish(&mut es, "site/es").await, p5::PubAckReason::Success);
    assert_eq!(&reader.publish().await.topic[..], b"site/es");
    // mosquitto_pub (3.1.1) with the token as its password.
    let token = sign(Algorithm::RS256, Some("rsa-1"), &keys.rsa, &claims("dev-1"));
    let port = gw.port("devices");
    let args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "mosq",
        "-u",
        "dev-1",
        "-P",
        &token,
        "-q",
        "1",
        "-t",
        "site/mosq",
        "-m",
        "hello",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    // Off the runtime thread: the gateway runs on it.
    let out = tokio::task::spawn_blocking(move || mosquitto_pub_output(&args))
        .await
        .expect("mosquitto_pub ran");
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
    let got = reader.publish().await;
    assert_eq!(&got.topic[..], b"site/mosq");
    assert_eq!(&got.payload[..], b"hello");
    gw.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason_audited() {
    let log = logs::global("info");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let good = claims("dev-1");
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let rs = |c: &Value| sign(Algorithm::RS256, Some("rsa-1"), &keys.rsa, c);
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(keys.rsa_public_pem.as_bytes()),
        &good,
    );
    let tampered = {
        let t = rs(&good);
        let (head_payload, _sig) = t.rsplit_once('.').expect("three parts");
        let (head, _) = head_payload.split_once('.').expect("three parts");
        // The signature of the good token over another payload (dev-2).
        format!(
            "{head}.{}.{}",
            b64(claims("dev-2").to_string().as_bytes()),
            _sig
        )
    };
    let cases: Vec<(&str, String, Option<&str>, &str, &str)> = vec![
        (
            "expired",
            rs(&with("exp", json!(now() - 60))),
            None,
            "BadUserNamePassword",
            "token expired",
        ),
        (
            "not yet valid",
            rs(&with("nbf", json!(now() + 300))),
            None,
            "BadUserNamePassword",
            "token not yet valid",
        ),
        (
            "wrong issuer",
            rs(&with("iss", json!("https://evil.example"))),
            None,
            "NotAuthorized",
            "wrong issuer",
        ),
        (
            "wrong audience",
            rs(&with("aud", json!("other"))),
            None,
            "NotAuthorized",
            "wrong audience",
        ),
        (
            "alg none",
            none_token,
            None,
            "BadUserNamePassword",
            "alg none refused",
        ),
        (
            "key confusion",
            confused,
            None,
            "BadUserNamePassword",
            "HMAC algorithm HS256 refused",
        ),
        (
            "tampered",
            tampered,
            None,
            "BadUserNamePassword",
            "signature invalid",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("rsa-9"), &keys.rsa, &good),
            None,
            "BadUserNamePassword",
            "unknown kid",
        ),
        (
            "username mismatch",
            rs(&good),
            Some("dev-2"),
            "NotAuthorized",
            "does not match the token",
        ),
    ];
    for (what, token, user, code, reason) in cases {
        let outcome = connect_outcome(v5_with_token(&gw, "bad", user, &token)).await;
        assert!(outcome.contains(code), "{what}: {outcome}");
        let text = log.text();
        assert!(text.contains(reason), "{what}: audit names {reason:?}");
        assert!(!text.contains(&token), "{what}: the token is never logged");
    }
    // 3.1.1: the same refusal is CONNACK 4 (bad user name or password).
    let mut o = rumqttc::MqttOptions::new("bad-v4", "127.0.0.1", gw.addr("devices").port());
    o.set_credentials("dev-1", rs(&with("exp", json!(now() - 60))));
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let err = el.poll().await.expect_err("refused");
    assert!(
        format!("{err:?}").contains("BadUserNamePassword"),
        "{err:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_session_ends_when_the_token_expires() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let short = |sub: &str| {
        let mut c = claims(sub);
        c["exp"] = json!(now() + 3);
        sign(Algorithm::RS256, Some("rsa-1"), &keys.rsa, &c)
    };
    let mut client = v5_connect(v5_with_token(&gw, "short", None, &short("dev-1"))).await;
    let reason = client.disconnect_reason().await;
    assert!(reason.contains("MaximumConnectTime"), "{reason}");
    // 3.1.1 (mosquitto_sub): the connection is closed; it exits on its own.
    let port = gw.port("devices");
    let token = short("dev-2");
    let sub = spawn_peer(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "short-v4",
            "-u",
            "dev-2",
            "-P",
            &token,
            "-t",
            "site/#",
            "-V",
            "mqttv311",
            "-d",
        ],
    );
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || finish_within(sub, Duration::from_secs(15)))
        .await
        .expect("mosquitto_sub waited for");
    // Connected (its CONNACK came), then closed by the broker at exp, 3 s after signing.
    assert!(started.elapsed() >= Duration::from_secs(1), "{out:?}");
    // Exited by itself (not killed at the limit), with an error: the broker closed.
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "mosquitto_sub ended by the broker: {out:?}"
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("received CONNACK (0)"),
        "it was connected first: {out:?}"
    );
    // Its reconnect with the same, now expired, token is refused (3.1.1 code 4).
    assert!(said.contains("received CONNACK (4)"), "{out:?}");
    gw.stop().await;
}

#[tokio::test]
async fn the_acl_claim_narrows_the_acl_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let mut c = claims("dev-1");
    c["mqtt"] = json!({"publish": ["site/dev-1/#"], "subscribe": ["site/dev-1/#"]});
    let mut narrow = v5_connect(v5_with_token(
        &gw,
        "narrow",
        None,
        &sign(Algorithm::RS256, None, &keys.rsa, &c),
    ))
    .await;
    // Allowed by the ACL file and the claim.
    assert_eq!(
        publish(&mut narrow, "site/dev-1/t").await,
        p5::PubAckReason::Success
    );
    // Allowed by the ACL file, not by the claim.
    assert_eq!(
        publish(&mut narrow, "site/other/t").await,
        p5::PubAckReason::NotAuthorized
    );
    let ack = narrow.subscribe("site/#", QoS::AtLeastOnce).await;
    assert_eq!(
        ack.return_codes,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    // The claim never widens: outside the ACL file stays refused.
    c["mqtt"] = json!({"publish": ["#"], "subscribe": ["#"]});
    let mut wide = v5_connect(v5_with_token(
        &gw,
        "wide",
        None,
        &sign(Algorithm::RS256, None, &keys.rsa, &c),
    ))
    .await;
    assert_eq!(
        publish(&mut wide, "elsewhere/t").await,
        p5::PubAckReason::NotAuthorized
    );
    assert_eq!(
        publish(&mut wide, "site/other/t").await,
        p5::PubAckReason::Success
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_token_with_a_jti_is_accepted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let mut c = claims("dev-1");
    c["jti"] = json!("token-42");
    let token = sign(Algorithm::RS256, None, &keys.rsa, &c);
    let first = v5_connect(v5_with_token(&gw, "once", None, &token)).await;
    drop(first);
    let again = connect_outcome(v5_with_token(&gw, "twice", None, &token)).await;
    assert!(again.contains("NotAuthorized"), "{again}");
    c["jti"] = json!("token-43");
    let other = connect_outcome(v5_with_token(
        &gw,
        "other",
        None,
        &sign(Algorithm::RS256, None, &keys.rsa, &c),
    ))
    .await;
    assert_eq!(other, "Success");
    gw.stop().await;
}

#[tokio::test]
async fn a_jwks_file_is_read_again_on_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let (_, _, pair) = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let new_key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("key");
    // The JWKS starts without the new key; reload adds it under kid "ec-2".
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys": []}"#).expect("jwks");
    let gw = gateway(dir.path(), ", \"jwks.json\"").await;
    let token = sign(Algorithm::ES256, Some("ec-2"), &new_key, &claims("dev-1"));
    let before = connect_outcome(v5_with_token(&gw, "rotated", None, &token)).await;
    assert!(before.contains("BadUserNamePassword"), "{before}");
    let public = pair.public_key_raw();
    assert_eq!(public.len(), 65, "uncompressed P-256 point");
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-2", "use": "sig", "alg": "ES256",
        "x": b64(&public[1..33]), "y": b64(&public[33..])});
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [jwk]}).to_string(),
    )
    .expect("jwks");
    gw.reload.reload().await.expect("reload with the new JWKS");
    let after = connect_outcome(v5_with_token(&gw, "rotated", None, &token)).await;
    assert_eq!(after, "Success");
    let _ = keys;
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_that_stops_tokens_on_the_listener_ends_token_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path(), "").await;
    let token = sign(Algorithm::RS256, None, &keys.rsa, &claims("dev-1"));
    let mut client = v5_connect(v5_with_token(&gw, "stopped", None, &token)).await;
    write_config(
        dir.path(),
        &format!(
            "sys_interval = \"0\"\n[shutdown]\ngrace_period = \"2s\"\n{}",
            body("", false)
        ),
    );
    gw.reload.reload().await.expect("reload without jwt_auth");
    let reason = client.disconnect_reason().await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    let again = connect_outcome(v5_with_token(&gw, "again", None, &token)).await;
    // Not a token any more on this listener: a password without a username.
    assert!(again.contains("BadUserNamePassword"), "{again}");
    gw.stop().await;
}

#[test]
fn check_names_the_key_of_each_jwt_mistake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\njwt_auth = true\n\
                [auth.jwt]\nkeys = [\"missing.pem\"]\nalgorithms = [\"RS256\", \"HS256\"]\nleeway = \"10m\"\n";
    let path = write_config(dir.path(), body);
    let out = tollgate(&["check", "-c", path.to_str().expect("utf-8")], dir.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    for key in [
        "auth.jwt.keys[0]",
        "auth.jwt.algorithms[1]",
        "auth.jwt.leeway",
    ] {
        assert!(text.contains(key), "{key} named in: {text}");
    }
    // A listener with jwt_auth but no [auth.jwt].
    let body = "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\njwt_auth = true\n";
    let path = write_config(dir.path(), body);
    let out = tollgate(&["check", "-c", path.to_str().expect("utf-8")], dir.path());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("listener[0].jwt_auth"), "{text}");
}

/// Claims of a good token for `sub`, valid for ten minutes.
fn claims(sub: &str) -> Value {
    support::jwt::claims(sub, 600)
}
