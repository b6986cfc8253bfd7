//! MQTT 5 enhanced authentication with the method `jwt` and re-authentication (AUTH
//! 0x19, MQTT 5 §4.12.1), over real sockets with the raw MQTT 5 client of
//! `support::raw` (rumqttc 0.25 has no re-authentication API and cannot even read an
//! AUTH): every
//! byte the gateway answers is seen, AUTH and DISCONNECT included. Tokens are ES256,
//! signed in the test with a P-256 key made by rcgen.
//!
//! - CONNECT with Authentication Method `jwt` and the token as Authentication Data:
//!   CONNACK 0x00 carrying the method; an unknown method: CONNACK 0x8C;
//! - re-authentication before `exp` keeps the session past the old `exp` (a round trip
//!   through the broker after it, ended by a marker);
//! - a token of another identity, an expired token, a bad signature or a replayed `jti`
//!   in AUTH: DISCONNECT 0x87 with the reason, each counted in
//!   `tollgate_auth_total{method="jwt"}` (scraped from the metrics endpoint);
//! - AUTH from a client that connected without a method, or AUTH 0x18: DISCONNECT 0x82;
//! - a narrower ACL claim applies to the publishes and deliveries after the AUTH;
//! - more than the budget of re-authentications per minute: DISCONNECT 0x96.
//!
//! The old-`exp` test waits `TOLLGATE_REAUTH_EXP_SECS` (default 3) seconds past the
//! first token's expiry; a longer check: `TOLLGATE_REAUTH_EXP_SECS=30`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::gateway::*;
use support::jwt::{claims, now, rcgen_pair, ACL, AUDIENCE, ISSUER};
use support::raw::{
    self, auth, auth_properties, puback, string_property, Connect, RawClient, AUTH,
    AUTHENTICATION_METHOD, DISCONNECT, PUBACK, PUBLISH, REASON_STRING, SUBACK,
};
use support::wait::WAIT;

struct Keys {
    ec: EncodingKey,
    /// A key the gateway does not know (for bad signatures).
    stranger: EncodingKey,
}

fn make_keys(dir: &Path) -> Keys {
    let (ec, pem, _) = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    std::fs::write(dir.join("ec-1.pem"), pem).expect("write");
    let (stranger, _, _) = rcgen_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    Keys { ec, stranger }
}

fn sign(key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, key).expect("sign")
}

/// A gateway with a `devices` listener that takes tokens, a `plain` anonymous one, and
/// the metrics endpoint on a free loopback port (`metrics_addr`).
async fn gateway(dir: &Path) -> Gateway {
    std::fs::write(dir.join("acl"), ACL).expect("acl");
    let metrics = format!("127.0.0.1:{}", support::net::free_port());
    std::fs::write(dir.join("metrics-addr"), &metrics).expect("write");
    let body = format!(
        "[[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n\
         jwt_auth = true\npassword_auth = false\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n\
         allow_anonymous = true\npassword_auth = false\n\
         [auth.jwt]\nkeys = [\"ec-1.pem\"]\n\
         issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\nleeway = \"0s\"\nacl_claim = \"mqtt\"\n\
         [acl]\nfile = \"acl\"\n[metrics]\nbind = \"{metrics}\"\n"
    );
    Gateway::start(dir, &body).await
}

/// The value of one `tollgate_auth_total` sample for the method `jwt`.
async fn jwt_auth_total(dir: &Path, outcome: &str, reason: &str) -> u64 {
    let addr = std::fs::read_to_string(dir.join("metrics-addr")).expect("metrics address");
    let mut s = TcpStream::connect(addr.as_str()).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tollgate\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the endpoint answers and closes within the limit")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    let name =
        format!("tollgate_auth_total{{method=\"jwt\",outcome=\"{outcome}\",reason=\"{reason}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("no sample {name} in {text}"));
    line[name.len()..].trim().parse().expect("a counter")
}

// ---- raw MQTT 5 -------------------------------------------------------------------

/// A v5 CONNECT, clean start, keep alive 60 s, with an Authentication Method and Data.
fn connect(id: &str, method: Option<&str>, token: Option<&str>) -> Vec<u8> {
    Connect {
        properties: Some(auth_properties(method, token)),
        ..Connect::new(true, id)
    }
    .encode()
}

fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    raw::publish(true, topic, qos, pkid, payload)
}

/// SUBSCRIBE at QoS 1 with No Local (a client's own messages do not come back).
fn subscribe(filter: &str, pkid: u16) -> Vec<u8> {
    raw::subscribe(true, filter, 0x05, pkid)
}

/// The shared raw client with what these tests do with it.
struct Raw(RawClient);

impl std::ops::Deref for Raw {
    type Target = RawClient;
    fn deref(&self) -> &RawClient {
        &self.0
    }
}

impl std::ops::DerefMut for Raw {
    fn deref_mut(&mut self) -> &mut RawClient {
        &mut self.0
    }
}

impl Raw {
    /// CONNECT; the CONNACK's reason code and properties.
    async fn connect(
        addr: SocketAddr,
        id: &str,
        method: Option<&str>,
        token: Option<&str>,
    ) -> (Raw, u8, Vec<(u8, Vec<u8>)>) {
        let (raw, ack) = RawClient::connect(addr, &connect(id, method, token)).await;
        (Raw(raw), ack.reason_code(), ack.properties())
    }

    /// Connected with the method `jwt` and `token` (CONNACK success asserted).
    async fn with_token(addr: SocketAddr, id: &str, token: &str) -> Raw {
        let (raw, code, props) = Raw::connect(addr, id, Some("jwt"), Some(token)).await;
        assert_eq!(code, 0, "CONNACK success: {props:?}");
        assert_eq!(
            string_property(&props, AUTHENTICATION_METHOD).as_deref(),
            Some("jwt")
        );
        raw
    }

    /// AUTH 0x19 with `token`; asserts the AUTH 0x00 answer carries the method.
    async fn reauthenticate(&mut self, token: &str) {
        self.send(&auth(0x19, Some("jwt"), token)).await;
        let answer = self.expect(AUTH).await;
        assert_eq!(answer.body.first(), Some(&0x00), "AUTH success: {answer:?}");
        assert_eq!(
            string_property(&answer.properties(), AUTHENTICATION_METHOD).as_deref(),
            Some("jwt")
        );
    }

    /// The reason code of the PUBACK of a QoS 1 publish.
    async fn publish_acked(&mut self, topic: &str, pkid: u16) -> u8 {
        self.send(&publish(topic, 1, pkid, b"x")).await;
        let body = self.expect_body(PUBACK).await;
        assert_eq!(&body[..2], &pkid.to_be_bytes(), "PUBACK of {pkid}");
        body.get(2).copied().unwrap_or(0)
    }

    async fn subscribed(&mut self, filter: &str, pkid: u16) -> u8 {
        self.send(&subscribe(filter, pkid)).await;
        let body = self.expect_body(SUBACK).await;
        // pkid, properties, one reason code.
        *body.last().expect("a reason code")
    }

    /// Topics of the PUBLISHes received up to and including `marker` (acknowledging
    /// QoS 1 ones).
    async fn topics_until(&mut self, marker: &str) -> Vec<String> {
        let mut topics = Vec::new();
        loop {
            let packet = self.next().await.expect("connection open");
            if packet.kind != PUBLISH {
                continue;
            }
            let message = packet.publish(true);
            if let Some(pkid) = message.pkid {
                self.send(&puback(pkid)).await;
            }
            topics.push(message.topic.clone());
            if message.topic == marker {
                return topics;
            }
        }
    }
}

// ---- tests ------------------------------------------------------------------------

#[tokio::test]
async fn connect_with_the_jwt_method_and_refuse_unknown_methods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let addr = gw.addr("devices");
    let mut ok = Raw::with_token(addr, "m-ok", &sign(&keys.ec, &claims("dev-1", 600))).await;
    assert_eq!(ok.publish_acked("site/dev-1/t", 1).await, 0);
    // Methods are case-sensitive: "JWT" is unknown.
    for method in ["JWT", "SCRAM-SHA-1"] {
        let (_raw, code, props) = Raw::connect(addr, "m-bad", Some(method), Some("x")).await;
        assert_eq!(code, 0x8C, "{method}: {props:?}");
        let reason = string_property(&props, REASON_STRING).unwrap_or_default();
        assert!(reason.contains("unknown authentication method"), "{reason}");
    }
    // `jwt` where the listener takes no tokens.
    let (_raw, code, _) = Raw::connect(gw.addr("plain"), "m-plain", Some("jwt"), Some("x")).await;
    assert_eq!(code, 0x8C);
    // A bad token in the Authentication Data: bad credentials, as in the password.
    let stranger = sign(&keys.stranger, &claims("dev-1", 600));
    let (_raw, code, _) = Raw::connect(addr, "m-sig", Some("jwt"), Some(&stranger)).await;
    assert_eq!(code, 0x86);
    // A password-looking Authentication Data is never checked as a password.
    let (_raw, code, _) = Raw::connect(addr, "m-pw", Some("jwt"), Some("secret")).await;
    assert_eq!(code, 0x86);
    gw.stop().await;
}

#[tokio::test]
async fn re_authentication_keeps_the_session_past_the_old_exp() {
    let extra: u64 = std::env::var("TOLLGATE_REAUTH_EXP_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let first_exp = now() + 3;
    let mut first = claims("dev-1", 0);
    first["exp"] = json!(first_exp);
    let mut c = Raw::with_token(gw.addr("devices"), "renewed", &sign(&keys.ec, &first)).await;
    assert_eq!(c.subscribed("site/dev-1/#", 1).await, 1);
    c.reauthenticate(&sign(&keys.ec, &claims("dev-1", 600)))
        .await;
    // Past the first token's exp (whole seconds: exp is in seconds).
    while now() <= first_exp + extra {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A round trip through the broker: had the session ended at the old exp, its
    // DISCONNECT would come before the marker (sent by another client: No Local).
    let mut other = Raw::with_token(
        gw.addr("devices"),
        "marker",
        &sign(&keys.ec, &claims("dev-2", 600)),
    )
    .await;
    other.send(&publish("site/dev-1/marker", 0, 0, b"m")).await;
    let topics = c.topics_until("site/dev-1/marker").await;
    assert_eq!(topics, vec!["site/dev-1/marker".to_string()]);
    // The new token's exp still ends it: a second re-authentication to a short exp.
    let mut short = claims("dev-1", 0);
    short["exp"] = json!(now() + 2);
    c.reauthenticate(&sign(&keys.ec, &short)).await;
    let (code, reason) = c.skip_to(DISCONNECT).await.reason();
    assert_eq!(code, 0xA0, "{reason}");
    assert!(reason.contains("token expired"), "{reason}");
    gw.stop().await;
}

#[tokio::test]
async fn refused_re_authentications_end_the_session_with_0x87() {
    let log = support::logs::global("info");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let addr = gw.addr("devices");
    let good = || sign(&keys.ec, &claims("dev-1", 600));
    let mut expired = claims("dev-1", 0);
    expired["exp"] = json!(now() - 10);
    let mut used = claims("dev-1", 600);
    used["jti"] = json!("once");
    let used = sign(&keys.ec, &used);
    let cases: [(&str, String, &str); 4] = [
        (
            "other",
            sign(&keys.ec, &claims("dev-2", 600)),
            "does not match",
        ),
        ("expired", sign(&keys.ec, &expired), "token expired"),
        (
            "signature",
            sign(&keys.stranger, &claims("dev-1", 600)),
            "signature invalid",
        ),
        ("replay", used.clone(), "jti replayed"),
    ];
    // The replayed token is used once first, at a CONNECT.
    let _first = Raw::with_token(addr, "jti-first", &used).await;
    let refused_before = jwt_auth_total(dir.path(), "refused", "not_authorized").await;
    for (id, token, expected) in &cases {
        let mut c = Raw::with_token(addr, id, &good()).await;
        c.send(&auth(0x19, Some("jwt"), token)).await;
        let (code, reason) = c.disconnected().await;
        assert_eq!(code, 0x87, "{id}: {reason}");
        assert!(reason.contains(expected), "{id}: {reason}");
    }
    // Audited (the refusal and the ended session), never with the token.
    let text = log.text();
    for (id, token, expected) in &cases {
        assert!(
            text.lines()
                .any(|l| l.contains("auth_refused") && l.contains(expected)),
            "{id}: auth_refused names {expected:?}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("session_revoked") && l.contains(id) && l.contains(expected)),
            "{id}: session_revoked"
        );
        assert!(
            !text.contains(token.as_str()),
            "{id}: the token is never logged"
        );
    }
    // Each refusal counted (the CONNECTs before them were accepted).
    assert_eq!(
        jwt_auth_total(dir.path(), "refused", "not_authorized").await,
        refused_before + 4
    );
    assert_eq!(jwt_auth_total(dir.path(), "success", "accepted").await, 5);
    gw.stop().await;
}

#[tokio::test]
async fn auth_is_a_protocol_error_without_the_method_or_as_a_second_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let token = sign(&keys.ec, &claims("dev-1", 600));
    // Connected without a method (anonymous listener): AUTH is a protocol error.
    let (mut c, code, _) = Raw::connect(gw.addr("plain"), "no-method", None, None).await;
    assert_eq!(code, 0);
    c.send(&auth(0x19, Some("jwt"), &token)).await;
    let (code, reason) = c.disconnected().await;
    assert_eq!(code, 0x82, "{reason}");
    assert!(reason.contains("no Authentication Method"), "{reason}");
    // Connected with the method: 0x18 Continue is no step of it, and the method must
    // be the CONNECT's.
    for (id, packet) in [
        ("continue", auth(0x18, Some("jwt"), &token)),
        ("no-method", auth(0x19, None, &token)),
        ("other-method", auth(0x19, Some("JWT"), &token)),
    ] {
        let mut c = Raw::with_token(gw.addr("devices"), id, &token).await;
        c.send(&packet).await;
        let (code, reason) = c.disconnected().await;
        assert_eq!(code, 0x82, "{id}: {reason}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_narrower_claim_applies_to_what_follows_the_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let addr = gw.addr("devices");
    let mut wide = claims("dev-1", 600);
    wide["mqtt"] = json!({"publish": ["site/dev-1/#"], "subscribe": ["site/dev-1/#"]});
    let mut narrow = claims("dev-1", 600);
    narrow["mqtt"] = json!({"publish": ["site/dev-1/a"], "subscribe": ["site/dev-1/a"]});
    let mut c = Raw::with_token(addr, "narrowed", &sign(&keys.ec, &wide)).await;
    let mut other =
        Raw::with_token(addr, "publisher", &sign(&keys.ec, &claims("dev-2", 600))).await;
    assert_eq!(c.subscribed("site/dev-1/#", 1).await, 1);
    assert_eq!(c.publish_acked("site/dev-1/b", 2).await, 0);
    assert_eq!(other.publish_acked("site/dev-1/b", 1).await, 0);
    assert_eq!(
        c.topics_until("site/dev-1/b").await,
        vec!["site/dev-1/b".to_string()]
    );
    // The AUTH and a publish right behind it, in one write: the publish sees the new
    // claim.
    let mut both = auth(0x19, Some("jwt"), &sign(&keys.ec, &narrow));
    both.extend_from_slice(&publish("site/dev-1/b", 1, 3, b"x"));
    c.send(&both).await;
    assert_eq!(c.expect_body(AUTH).await.first(), Some(&0x00));
    let ack = c.expect_body(PUBACK).await;
    assert_eq!(ack.get(2), Some(&0x87), "PUBACK not authorized: {ack:?}");
    assert_eq!(c.publish_acked("site/dev-1/a", 4).await, 0);
    // Deliveries too: another publisher's message to b is no longer delivered; the
    // one to a behind it is the marker.
    assert_eq!(other.publish_acked("site/dev-1/b", 2).await, 0);
    assert_eq!(other.publish_acked("site/dev-1/a", 3).await, 0);
    assert_eq!(
        c.topics_until("site/dev-1/a").await,
        vec!["site/dev-1/a".to_string()]
    );
    // New subscriptions outside the claim are refused.
    assert_eq!(c.subscribed("site/dev-1/#", 5).await, 0x87);
    gw.stop().await;
}

#[tokio::test]
async fn re_authentications_beyond_the_budget_end_the_session_with_0x96() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = make_keys(dir.path());
    let gw = gateway(dir.path()).await;
    let token = || sign(&keys.ec, &claims("dev-1", 600));
    let mut c = Raw::with_token(gw.addr("devices"), "eager", &token()).await;
    // The budget is 6 per minute (documented in the README).
    for _ in 0..6 {
        c.reauthenticate(&token()).await;
    }
    c.send(&auth(0x19, Some("jwt"), &token())).await;
    let (code, reason) = c.disconnected().await;
    assert_eq!(code, 0x96, "{reason}");
    assert!(reason.contains("re-authentications"), "{reason}");
    gw.stop().await;
}
