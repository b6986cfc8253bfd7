//! Differential test: the same acl_file given to a real mosquitto and to
//! tollgate's matcher must decide every publish and every delivery the same
//! way (mosquitto compatibility for Read/Write; Subscribe is deliberately
//! stricter in tollgate and covered elsewhere). Needs `mosquitto`,
//! `mosquitto_pub`, `mosquitto_sub` and `mosquitto_passwd` on PATH.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{mosquitto_passwd_file, peer_installed, LineChild, Mosquitto};
use tollgate::acl::{Access, Acl, Authorizer};
use tollgate::auth::{AuthMethod, Identity};

const ACL: &str = "# anonymous clients
topic read public/#
topic write public/in

user admin
topic readwrite #

user sensor_001
topic write sensors/001/#
topic read commands/001

user dashboard
topic read sensors/#
topic read devices/#
topic deny sensors/secret/#

user probe_writer
topic write #

user probe_reader
topic read #

pattern readwrite devices/%u/#
pattern read clients/%c/in
pattern read ready/#
";

const TOPICS: &[&str] = &[
    "sensors/001/temp",
    "sensors/001",
    "sensors/001/",
    "sensors/002/temp",
    "Sensors/001/temp",
    "sensors/secret/x",
    "commands/001",
    "commands/001/",
    "devices/gw1/status",
    "devices/alice/x",
    "devices/admin/y",
    "clients/alice-client/in",
    "public/news",
    "public",
    "public/in",
    "a//b",
    "devices/a/b/x",
    "clients/x/y/in",
];

/// (username, client id); `None` is an anonymous client.
const WHO: &[(Option<&str>, &str)] = &[
    (Some("admin"), "admin-client"),
    (Some("sensor_001"), "sensor_001-client"),
    (Some("dashboard"), "dashboard-client"),
    (Some("alice"), "alice-client"),
    (None, "anon-client"),
];

/// Identities whose username or client id contains `/`: tollgate refuses them
/// every pattern grant, so it must allow a subset of what mosquitto allows.
const HOSTILE: &[(Option<&str>, &str)] = &[(Some("a/b"), "ab-client"), (Some("alice"), "x/y")];

const PASSWORD: &str = "pw-for-tests";

fn start_mosquitto(dir: &Path) -> Mosquitto {
    let users = [
        "admin",
        "sensor_001",
        "dashboard",
        "alice",
        "a/b",
        "probe_writer",
        "probe_reader",
    ]
    .map(|user| (user, PASSWORD));
    let passwd = mosquitto_passwd_file(dir, &users);
    std::fs::write(dir.join("acl"), ACL).expect("acl file");
    Mosquitto::start(
        dir,
        &format!(
            "allow_anonymous true\npassword_file {}\nacl_file {}\npersistence false\n",
            passwd.display(),
            dir.join("acl").display()
        ),
    )
}

fn credentials(cmd: &mut Command, user: Option<&str>) {
    if let Some(user) = user {
        cmd.args(["-u", user, "-P", PASSWORD]);
    }
}

fn publish(port: u16, user: Option<&str>, client_id: &str, topic: &str, payload: &str) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-i",
        client_id,
        "-t",
        topic,
        "-m",
        payload,
    ]);
    credentials(&mut cmd, user);
    let out = cmd.output().expect("mosquitto_pub must be installed");
    assert!(
        out.status.success(),
        "mosquitto_pub {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Subscriber {
    peer: LineChild,
    /// `ready/<n>`: a topic only this subscriber listens to, for readiness and the end marker.
    marker: String,
}

fn subscribe(
    port: u16,
    user: Option<&str>,
    client_id: &str,
    topics: &[&str],
    n: usize,
) -> Subscriber {
    let marker = format!("ready/{n}");
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-v",
        "-i",
        client_id,
    ]);
    credentials(&mut cmd, user);
    for t in topics.iter().copied().chain([marker.as_str()]) {
        cmd.args(["-t", t]);
    }
    Subscriber {
        peer: LineChild::spawn(cmd.stderr(Stdio::null())),
        marker,
    }
}

/// Publish each subscriber's marker until each subscriber has seen it: subscriptions are live.
fn wait_ready(port: u16, subs: &[&Subscriber]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<&Subscriber> = subs.to_vec();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "subscribers never became ready: {:?}",
            pending.iter().map(|s| &s.marker).collect::<Vec<_>>()
        );
        for s in &pending {
            publish(
                port,
                Some("probe_writer"),
                "probe-writer",
                &s.marker,
                "ready",
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        pending.retain(|s| {
            let marker = format!("{} ready", s.marker);
            !s.peer.lines.try_iter().any(|l| l == marker)
        });
    }
}

/// Send the end marker and collect every line received before it.
fn drain(port: u16, sub: &Subscriber) -> Vec<String> {
    publish(
        port,
        Some("probe_writer"),
        "probe-writer",
        &sub.marker,
        "end",
    );
    let marker = format!("{} end", sub.marker);
    let mut got = Vec::new();
    loop {
        let line = sub
            .peer
            .lines
            .recv_timeout(Duration::from_secs(5))
            .expect("end marker must arrive");
        if line == marker {
            return got;
        }
        if !line.starts_with("ready/") {
            got.push(line);
        }
    }
}

fn identity(user: Option<&str>, client_id: &str) -> Identity {
    Identity {
        username: user.map(str::to_string),
        client_id: client_id.to_string(),
        via: if user.is_some() {
            AuthMethod::Password
        } else {
            AuthMethod::Anonymous
        },
        listener: "diff".into(),
        jwt: None,
    }
}

fn mosquitto_present() -> bool {
    [
        "mosquitto",
        "mosquitto_pub",
        "mosquitto_sub",
        "mosquitto_passwd",
    ]
    .iter()
    .all(|bin| peer_installed(bin))
}

/// Compare one decision: equal for ordinary identities, never more permissive for hostile ones.
fn compare(out: &mut Vec<String>, what: &str, hostile: bool, mosquitto: bool, tollgate: bool) {
    let wrong = if hostile {
        tollgate && !mosquitto
    } else {
        tollgate != mosquitto
    };
    if wrong {
        out.push(format!("{what}: mosquitto={mosquitto} tollgate={tollgate}"));
    }
}

#[test]
fn publish_and_delivery_decisions_match_mosquitto() {
    assert!(
        mosquitto_present(),
        "install mosquitto and mosquitto-clients to run this test"
    );
    let acl = Acl::parse("acl", ACL, &[]).expect("valid acl");
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_mosquitto(dir.path());
    let port = broker.port;
    let who: Vec<(Option<&str>, &str, bool)> = WHO
        .iter()
        .map(|(u, c)| (*u, *c, false))
        .chain(HOSTILE.iter().map(|(u, c)| (*u, *c, true)))
        .collect();

    // Deliveries: each identity subscribes to every topic exactly; one writer publishes each once.
    let subs: Vec<Subscriber> = who
        .iter()
        .enumerate()
        .map(|(n, (user, cid, _))| subscribe(port, *user, cid, TOPICS, n))
        .collect();
    let reader = subscribe(
        port,
        Some("probe_reader"),
        "probe-reader",
        &["#"],
        who.len(),
    );
    wait_ready(port, &subs.iter().chain([&reader]).collect::<Vec<_>>());
    for topic in TOPICS {
        publish(
            port,
            Some("probe_writer"),
            "probe-writer",
            topic,
            "delivery",
        );
    }
    let mut mismatches = Vec::new();
    let mut stricter = 0;
    for ((user, cid, hostile), sub) in who.iter().zip(&subs) {
        let got: BTreeSet<String> = drain(port, sub).into_iter().collect();
        for topic in TOPICS {
            let mosquitto = got.contains(&format!("{topic} delivery"));
            let tollgate = acl.allows(&identity(*user, cid), Access::Read, topic);
            stricter += usize::from(mosquitto && !tollgate);
            compare(
                &mut mismatches,
                &format!("read {user:?}/{cid} {topic}"),
                *hostile,
                mosquitto,
                tollgate,
            );
        }
    }
    let _ = drain(port, &reader);

    // Publishes: every identity publishes every topic; the probe reader sees what mosquitto let through.
    for (user, cid, _) in &who {
        for topic in TOPICS {
            publish(port, *user, cid, topic, cid);
        }
    }
    let got: BTreeSet<String> = drain(port, &reader).into_iter().collect();
    for (user, cid, hostile) in &who {
        for topic in TOPICS {
            let mosquitto = got.contains(&format!("{topic} {cid}"));
            let tollgate = acl.allows(&identity(*user, cid), Access::Write, topic);
            stricter += usize::from(mosquitto && !tollgate);
            compare(
                &mut mismatches,
                &format!("write {user:?}/{cid} {topic}"),
                *hostile,
                mosquitto,
                tollgate,
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differences from mosquitto:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "tollgate refused {stricter} accesses mosquitto allowed to identities containing `/`"
    );
}
