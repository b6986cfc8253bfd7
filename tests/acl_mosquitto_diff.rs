//! Differential test: the same acl_file given to a real mosquitto and to
//! tollgate's matcher must decide every publish and every delivery the same
//! way (mosquitto compatibility for Read/Write; Subscribe is deliberately
//! stricter in tollgate and covered elsewhere). Needs `mosquitto`,
//! `mosquitto_pub`, `mosquitto_sub` and `mosquitto_passwd` on PATH.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

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
pattern read ready/%c
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
];

/// (username, client id); `None` is an anonymous client.
const WHO: &[(Option<&str>, &str)] = &[
    (Some("admin"), "admin-client"),
    (Some("sensor_001"), "sensor_001-client"),
    (Some("dashboard"), "dashboard-client"),
    (Some("alice"), "alice-client"),
    (None, "anon-client"),
];

const PASSWORD: &str = "pw-for-tests";

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto() -> Mosquitto {
    let dir = tempfile::tempdir().expect("temp dir");
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "").expect("passwd file");
    for user in [
        "admin",
        "sensor_001",
        "dashboard",
        "alice",
        "probe_writer",
        "probe_reader",
    ] {
        let status = Command::new("mosquitto_passwd")
            .args(["-b", passwd.to_str().expect("utf-8 path"), user, PASSWORD])
            .status()
            .expect("mosquitto_passwd must be installed (apt install mosquitto)");
        assert!(status.success(), "mosquitto_passwd failed for {user}");
    }
    std::fs::write(dir.path().join("acl"), ACL).expect("acl file");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npassword_file {}\nacl_file {}\npersistence false\n",
            passwd.display(),
            dir.path().join("acl").display()
        ),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().expect("utf-8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto must be installed (apt install mosquitto)");
    let broker = Mosquitto {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker
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
    child: Child,
    lines: Receiver<String>,
    client_id: String,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subscribe(port: u16, user: Option<&str>, client_id: &str, topics: &[&str]) -> Subscriber {
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
    for t in topics
        .iter()
        .copied()
        .chain([format!("ready/{client_id}").as_str()])
    {
        cmd.args(["-t", t]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Subscriber {
        child,
        lines,
        client_id: client_id.to_string(),
    }
}

/// Publish `ready/<client id>` until each subscriber has seen it: subscriptions are live.
fn wait_ready(port: u16, subs: &[&Subscriber]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<&Subscriber> = subs.to_vec();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "subscribers never became ready");
        for s in &pending {
            publish(
                port,
                Some("probe_writer"),
                "probe-writer",
                &format!("ready/{}", s.client_id),
                "ready",
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        pending.retain(|s| {
            let marker = format!("ready/{} ready", s.client_id);
            !s.lines.try_iter().any(|l| l == marker)
        });
    }
}

/// Send the end marker and collect every line received before it.
fn drain(port: u16, sub: &Subscriber) -> Vec<String> {
    publish(
        port,
        Some("probe_writer"),
        "probe-writer",
        &format!("ready/{}", sub.client_id),
        "end",
    );
    let marker = format!("ready/{} end", sub.client_id);
    let mut got = Vec::new();
    loop {
        let line = sub
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
    .all(|bin| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(bin).is_file()))
            .unwrap_or(false)
    })
}

#[test]
fn publish_and_delivery_decisions_match_mosquitto() {
    assert!(
        mosquitto_present(),
        "install mosquitto and mosquitto-clients to run this test"
    );
    let acl = Acl::parse("acl", ACL, &[]).expect("valid acl");
    let broker = start_mosquitto();
    let port = broker.port;

    // Deliveries: each identity subscribes to every topic exactly; one writer publishes each once.
    let subs: Vec<Subscriber> = WHO
        .iter()
        .map(|(user, cid)| subscribe(port, *user, cid, TOPICS))
        .collect();
    let reader = subscribe(port, Some("probe_reader"), "probe-reader", &["#"]);
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
    for ((user, cid), sub) in WHO.iter().zip(&subs) {
        let got: BTreeSet<String> = drain(port, sub).into_iter().collect();
        for topic in TOPICS {
            let mosquitto = got.contains(&format!("{topic} delivery"));
            let tollgate = acl.allows(&identity(*user, cid), Access::Read, topic);
            if mosquitto != tollgate {
                mismatches.push(format!(
                    "read {user:?} {topic}: mosquitto={mosquitto} tollgate={tollgate}"
                ));
            }
        }
    }
    let _ = drain(port, &reader);

    // Publishes: every identity publishes every topic; the probe reader sees what mosquitto let through.
    for (user, cid) in WHO {
        for topic in TOPICS {
            publish(port, *user, cid, topic, cid);
        }
    }
    let got: BTreeSet<String> = drain(port, &reader).into_iter().collect();
    for (user, cid) in WHO {
        for topic in TOPICS {
            let mosquitto = got.contains(&format!("{topic} {cid}"));
            let tollgate = acl.allows(&identity(*user, cid), Access::Write, topic);
            if mosquitto != tollgate {
                mismatches.push(format!(
                    "write {user:?} {topic}: mosquitto={mosquitto} tollgate={tollgate}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differences from mosquitto:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
