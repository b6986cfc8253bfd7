//! Bench fixtures: the scratch directory, the shared TLS certificates (made
//! with `openssl`), the password and ACL files (made with `mosquitto_passwd`)
//! and the two brokers' equivalent configuration files. It must never write
//! outside its own scratch directory.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// Errors while preparing fixtures.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A file could not be written or read.
    #[error("cannot write or read {path}: {source}; check that the temp directory is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external tool (openssl, mosquitto_passwd) failed.
    #[error("`{cmd}` failed: {detail}; is it installed (apt-get install {package})?")]
    Tool {
        cmd: String,
        detail: String,
        package: &'static str,
    },
    /// No free port could be found.
    #[error("cannot find a free loopback port: {0}")]
    Port(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A scratch directory removed on drop unless kept.
pub struct Scratch {
    pub dir: PathBuf,
    pub keep: bool,
}

impl Scratch {
    /// Create a fresh directory under the system temp dir.
    pub fn new(keep: bool) -> Result<Self, SetupError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("tollgate-bench-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Write `contents` to `path`.
pub fn write(path: &Path, contents: &str) -> Result<(), SetupError> {
    fs::write(path, contents).map_err(io_err(path))
}

/// Ask the kernel for a free loopback port (bind :0, read it, release it).
pub fn free_port() -> Result<u16, SetupError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(SetupError::Port)?;
    let port = l.local_addr().map_err(SetupError::Port)?.port();
    Ok(port)
}

fn run(cmd: &mut Command, package: &'static str) -> Result<(), SetupError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| SetupError::Tool {
        cmd: shown.clone(),
        detail: e.to_string(),
        package,
    })?;
    if !out.status.success() {
        return Err(SetupError::Tool {
            cmd: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            package,
        });
    }
    Ok(())
}

/// Paths of one server certificate chain.
#[derive(Clone, Debug)]
pub struct CertSet {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA and the server certificates both brokers share.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    /// The CA's private key (client certificates for the bridge section are signed later).
    pub ca_key: PathBuf,
    pub rsa: CertSet,
    pub ec: CertSet,
}

/// Generate a throwaway CA (RSA-2048) and two server certificates for
/// 127.0.0.1/localhost signed by it: RSA-2048 and ECDSA P-256.
pub fn make_pki(dir: &Path) -> Result<Pki, SetupError> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=tollgate-bench CA"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl",
    )?;
    let ext = dir.join("server.ext");
    write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    let make_server = |name: &str, newkey: &[&str]| -> Result<CertSet, SetupError> {
        let key = dir.join(format!("{name}.key"));
        let csr = dir.join(format!("{name}.csr"));
        let cert = dir.join(format!("{name}.crt"));
        run(
            Command::new("openssl")
                .args(["req", "-new", "-nodes", "-subj", "/CN=localhost"])
                .args(newkey)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl",
        )?;
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
            "openssl",
        )?;
        Ok(CertSet { cert, key })
    };
    let rsa = make_server("server-rsa", &["-newkey", "rsa:2048"])?;
    let ec = make_server(
        "server-ec",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )?;
    Ok(Pki {
        ca,
        ca_key,
        rsa,
        ec,
    })
}

/// A client certificate (ECDSA P-256, `CN=<cn>`, clientAuth) signed by the bench CA, for
/// mutual TLS: its CN is the identity a broker with `use_identity_as_username` sees.
pub fn make_client_cert(dir: &Path, pki: &Pki, cn: &str) -> Result<CertSet, SetupError> {
    let ext = dir.join("client.ext");
    write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )?;
    let key = dir.join(format!("client-{cn}.key"));
    let csr = dir.join(format!("client-{cn}.csr"));
    let cert = dir.join(format!("client-{cn}.crt"));
    run(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-subj", &format!("/CN={cn}")])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl",
    )?;
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&pki.ca)
            .arg("-CAkey")
            .arg(&pki.ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        "openssl",
    )?;
    Ok(CertSet { cert, key })
}

/// Credentials used by the throughput clients when `--auth` is on.
pub const BENCH_USER: &str = "bench";
/// Password of [`BENCH_USER`].
pub const BENCH_PASS: &str = "bench-secret";

/// User of the wrong-password sanity check (run last: brokers may throttle
/// the source address after a failure).
pub const PROBE_USER: &str = "probe";
/// Real password of [`PROBE_USER`] (the check sends another one).
pub const PROBE_PASS: &str = "probe-secret";

/// Username of power-cut device `i` (0-based).
pub fn device_user(i: usize) -> String {
    format!("dev{i:05}")
}

/// Password of power-cut device `i`.
pub fn device_pass(i: usize) -> String {
    format!("pw-{i}-x9")
}

/// Files for `--auth` mode.
#[derive(Clone, Debug)]
pub struct AuthFiles {
    pub passwd: PathBuf,
    pub acl: PathBuf,
}

/// Write a password file for the bench user and `devices` device users,
/// hashed by `mosquitto_passwd -U` (Mosquitto's own `$7$` format), and an ACL
/// file in mosquitto syntax with `filler_rules` extra non-matching rules for
/// the bench user ahead of the granting one.
pub fn make_auth(dir: &Path, devices: usize, filler_rules: usize) -> Result<AuthFiles, SetupError> {
    let passwd = dir.join("passwd");
    let mut plain = format!("{BENCH_USER}:{BENCH_PASS}\n{PROBE_USER}:{PROBE_PASS}\n");
    for i in 0..devices {
        let _ = writeln!(plain, "{}:{}", device_user(i), device_pass(i));
    }
    write(&passwd, &plain)?;
    run(
        Command::new("mosquitto_passwd").arg("-U").arg(&passwd),
        "mosquitto",
    )?;
    let acl = dir.join("acl");
    let mut text = String::from("# generated by tollgate-bench\n");
    // Pattern rules apply to every client wherever they stand; first, so no
    // reader mistakes them for rules of the user above them.
    text.push_str("pattern readwrite devices/%u/#\n\n");
    let _ = writeln!(text, "user {BENCH_USER}");
    for i in 0..filler_rules {
        let _ = writeln!(text, "topic read filler/{i}/+/state");
    }
    text.push_str("topic readwrite bench/#\n");
    write(&acl, &text)?;
    Ok(AuthFiles { passwd, acl })
}

/// Ports of one broker's listeners.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub plain: u16,
    pub tls_rsa: u16,
    pub tls_ec: u16,
    /// MQTT over WebSocket over TLS (RSA-2048 certificate), path `/mqtt`.
    pub wss: u16,
}

impl Ports {
    /// Pick three free ports.
    pub fn pick() -> Result<Self, SetupError> {
        Ok(Self {
            plain: free_port()?,
            tls_rsa: free_port()?,
            tls_ec: free_port()?,
            wss: free_port()?,
        })
    }

    /// A broker with one listener (the bridge section's cloud): every field is `port`, so
    /// the start-up wait probes that listener.
    pub fn single(port: u16) -> Self {
        Self {
            plain: port,
            tls_rsa: port,
            tls_ec: port,
            wss: port,
        }
    }
}

/// Mosquitto configuration equivalent to [`tollgate_conf`]: nothing dropped,
/// nothing persisted, unlimited connections, Nagle off.
pub fn mosquitto_conf(pki: &Pki, ports: Ports, auth: Option<&AuthFiles>) -> String {
    let mut c = String::from(
        "# generated by tollgate-bench\n\
         per_listener_settings false\n\
         persistence false\n\
         max_inflight_messages 0\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         set_tcp_nodelay true\n\
         # Default log types (error, warning, notice, information: one line per\n\
         # connect), like tollgate's default info level with its audit events.\n\
         log_dest stderr\n\
         # Stay the invoking user (as root Mosquitto would switch to `mosquitto`\n\
         # and could not read the 0600 keys in the scratch directory).\n\
         user root\n",
    );
    match auth {
        Some(a) => {
            c.push_str("allow_anonymous false\n");
            let _ = writeln!(c, "password_file {}", a.passwd.display());
            let _ = writeln!(c, "acl_file {}", a.acl.display());
        }
        None => c.push_str("allow_anonymous true\n"),
    }
    let _ = writeln!(
        c,
        "\nlistener {} 127.0.0.1\nmax_connections -1",
        ports.plain
    );
    for (port, set) in [(ports.tls_rsa, &pki.rsa), (ports.tls_ec, &pki.ec)] {
        let _ = writeln!(
            c,
            "\nlistener {port} 127.0.0.1\nmax_connections -1\ncafile {}\ncertfile {}\nkeyfile {}",
            pki.ca.display(),
            set.cert.display(),
            set.key.display()
        );
    }
    if ports.wss != ports.plain {
        let _ = writeln!(
            c,
            "\nlistener {} 127.0.0.1\nprotocol websockets\nmax_connections -1\ncafile {}\ncertfile {}\nkeyfile {}",
            ports.wss,
            pki.ca.display(),
            pki.rsa.cert.display(),
            pki.rsa.key.display()
        );
    }
    c
}

pub fn toml_str(p: &Path) -> String {
    // TOML basic string: escape backslash and quote.
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// tollgate configuration equivalent to [`mosquitto_conf`]. With `queues`,
/// the per-session queue bounds are raised like Mosquitto's
/// `max_queued_messages 0` (those keys are not in the fixed schema; without
/// `queues` only fixed-schema keys are written).
pub fn tollgate_conf(
    data_dir: &Path,
    pki: &Pki,
    ports: Ports,
    auth: Option<&AuthFiles>,
    queues: bool,
) -> String {
    let anon = auth.is_none();
    let mut c = String::from("# generated by tollgate-bench\n[broker]\n");
    let _ = writeln!(c, "data_dir = {}", toml_str(data_dir));
    c.push_str("max_packet_size = 1048576\nmax_connections = 1000000\n");
    if queues {
        // Upper bounds tollgate accepts; like Mosquitto's max_queued_messages 0,
        // max_queued_bytes 0 and max_inflight_messages 0.
        c.push_str(
            "max_offline_messages = 10000000\nmax_offline_bytes = 4294967296\nmax_inflight = 65535\n",
        );
    }
    let _ = writeln!(
        c,
        "\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:{}\"\ntransport = \"tcp\"\nallow_anonymous = {anon}",
        ports.plain
    );
    for (name, port, set) in [
        ("tls-rsa", ports.tls_rsa, &pki.rsa),
        ("tls-ec", ports.tls_ec, &pki.ec),
    ] {
        let _ = writeln!(
            c,
            "\n[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ntransport = \"tls\"\n\
             allow_anonymous = {anon}\ncert = {}\nkey = {}\ntls_versions = [\"1.2\", \"1.3\"]",
            toml_str(&set.cert),
            toml_str(&set.key)
        );
    }
    if ports.wss != ports.plain {
        let _ = writeln!(
            c,
            "\n[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:{}\"\ntransport = \"wss\"\n\
             allow_anonymous = {anon}\ncert = {}\nkey = {}",
            ports.wss,
            toml_str(&pki.rsa.cert),
            toml_str(&pki.rsa.key)
        );
    }
    if let Some(a) = auth {
        let _ = writeln!(c, "\n[auth]\npassword_file = {}", toml_str(&a.passwd));
        let _ = writeln!(c, "\n[acl]\nfile = {}", toml_str(&a.acl));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fixture(name: &str) -> (PathBuf, Pki, AuthFiles) {
        let dir =
            std::env::temp_dir().join(format!("tollgate-bench-test-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("invariant: temp dir writable in tests");
        let file = |n: &str| {
            let p = dir.join(n);
            fs::write(&p, "placeholder\n").expect("invariant: temp dir writable in tests");
            p
        };
        let pki = Pki {
            ca: file("ca.crt"),
            ca_key: file("ca.key"),
            rsa: CertSet {
                cert: file("rsa.crt"),
                key: file("rsa.key"),
            },
            ec: CertSet {
                cert: file("ec.crt"),
                key: file("ec.key"),
            },
        };
        let auth = AuthFiles {
            passwd: file("passwd"),
            acl: file("acl"),
        };
        (dir, pki, auth)
    }

    fn ports() -> Ports {
        Ports {
            plain: 18831,
            tls_rsa: 18832,
            tls_ec: 18833,
            wss: 18834,
        }
    }

    #[test]
    fn generated_tollgate_config_passes_tollgate_validation() {
        let (dir, pki, auth) = fixture("conf");
        for (auth, queues) in [(None, true), (Some(&auth), true), (None, false)] {
            let path = dir.join("tollgate.toml");
            write(&path, &tollgate_conf(&dir, &pki, ports(), auth, queues))
                .expect("invariant: temp dir writable in tests");
            let loaded = tollgate::config::load_with_env(
                &tollgate::config::ConfigSource::File(path.clone()),
                &HashMap::new(),
            );
            if let Err(e) = loaded {
                panic!(
                    "tollgate refused the bench config (auth {}, queues {queues}): {:?}",
                    auth.is_some(),
                    e.problems()
                );
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn mosquitto_config_loses_nothing_and_shares_files() {
        let (dir, pki, auth) = fixture("mosq");
        let c = mosquitto_conf(&pki, ports(), Some(&auth));
        for line in [
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "persistence false",
            "allow_anonymous false",
            "listener 18832 127.0.0.1",
            "listener 18834 127.0.0.1\nprotocol websockets",
        ] {
            assert!(c.contains(line), "missing `{line}` in:\n{c}");
        }
        assert!(c.contains(&format!("password_file {}", auth.passwd.display())));
        assert!(c.contains(&format!("certfile {}", pki.rsa.cert.display())));
        assert_eq!(c.matches("max_connections -1").count(), 4);
        let _ = fs::remove_dir_all(&dir);
    }
}
