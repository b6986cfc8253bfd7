//! Certificate expiry watch: warns 30, 7 and 1 days before a certificate expires (and when it
//! has), in the log and as a `$SYS/tollgate/certs/<label>/expiry` message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{load_certs, rfc2253_subject};

/// How often certificates are re-read and checked.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

const DAY: i64 = 86_400;

/// How close a certificate is to its notAfter date; ordered from harmless to expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExpiryLevel {
    /// More than 30 days left.
    Ok,
    /// 30 days or less left.
    Within30Days,
    /// 7 days or less left.
    Within7Days,
    /// 1 day or less left.
    Within1Day,
    /// Past notAfter.
    Expired,
}

impl ExpiryLevel {
    fn as_str(self) -> &'static str {
        match self {
            ExpiryLevel::Ok => "ok",
            ExpiryLevel::Within30Days => "30-days",
            ExpiryLevel::Within7Days => "7-days",
            ExpiryLevel::Within1Day => "1-day",
            ExpiryLevel::Expired => "expired",
        }
    }
}

/// The level of a certificate whose notAfter is `not_after` (Unix seconds) at time `now`.
pub fn expiry_level(not_after: i64, now: i64) -> ExpiryLevel {
    let left = not_after - now;
    if left <= 0 {
        ExpiryLevel::Expired
    } else if left <= DAY {
        ExpiryLevel::Within1Day
    } else if left <= 7 * DAY {
        ExpiryLevel::Within7Days
    } else if left <= 30 * DAY {
        ExpiryLevel::Within30Days
    } else {
        ExpiryLevel::Ok
    }
}

/// JSON payload published on `$SYS/tollgate/certs/<label>/expiry`.
pub fn expiry_payload(label: &str, path: &Path, subject: &str, not_after: i64, now: i64) -> String {
    let not_after_text = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| not_after.to_string());
    serde_json::json!({
        "label": label,
        "path": path.display().to_string(),
        "subject": subject,
        "not_after": not_after_text,
        "days_left": (not_after - now).div_euclid(DAY),
        "level": expiry_level(not_after, now).as_str(),
    })
    .to_string()
}

/// The `notAfter` (Unix seconds) of the first certificate in the PEM file `path`.
pub fn not_after(path: &Path) -> Result<i64, String> {
    read_status(path).map(|s| s.not_after)
}

struct CertStatus {
    subject: String,
    not_after: i64,
}

fn read_status(path: &Path) -> Result<CertStatus, String> {
    let certs = load_certs(path).map_err(|e| e.to_string())?;
    let leaf = certs.first().ok_or("no certificate")?;
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(CertStatus {
        subject: rfc2253_subject(cert.subject()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// One pass over every certificate: reports each whose level changed since the last pass.
fn check_all(
    certs: &[(String, PathBuf)],
    last: &mut HashMap<String, ExpiryLevel>,
    now: i64,
    publish: &(dyn Fn(String, String) + Send + Sync),
) {
    for (label, path) in certs {
        let status = match read_status(path) {
            Ok(s) => s,
            Err(reason) => {
                warn!(%label, path = %path.display(), %reason, "Certificate expiry check failed: cannot read certificate.");
                continue;
            }
        };
        let level = expiry_level(status.not_after, now);
        let previous = last.insert(label.clone(), level).unwrap_or(ExpiryLevel::Ok);
        if level == previous {
            continue;
        }
        let days_left = (status.not_after - now).div_euclid(DAY);
        match level {
            ExpiryLevel::Ok => {
                info!(%label, path = %path.display(), days_left, "Certificate renewed; expiry no longer close.")
            }
            ExpiryLevel::Expired => {
                warn!(%label, path = %path.display(), subject = %status.subject, "Certificate has EXPIRED: renew it (tollgate pki server / device) and reload.")
            }
            _ => {
                warn!(%label, path = %path.display(), subject = %status.subject, days_left, "Certificate expires soon: renew it and reload.")
            }
        }
        // Wildcards cannot appear in a topic name; a label is operator text, so neutralise them.
        let topic_label: String = label
            .chars()
            .map(|c| {
                if matches!(c, '+' | '#' | '\0') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        publish(
            format!("$SYS/tollgate/certs/{topic_label}/expiry"),
            expiry_payload(label, path, &status.subject, status.not_after, now),
        );
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Watches `certs` (label, PEM path) until `shutdown`: checks at start and every 12 hours, and
/// logs and publishes when a certificate enters the 30-day, 7-day, 1-day or expired window
/// (once per window; a renewed certificate is reported back to `ok`). Files are re-read on
/// every check, so renewed certificates are picked up.
pub fn spawn_expiry_watch(
    certs: Vec<(String, PathBuf)>,
    publish: impl Fn(String, String) + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = HashMap::new();
        loop {
            check_all(&certs, &mut last, unix_now(), &publish);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(EXPIRY_CHECK_INTERVAL) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn thresholds_are_30_7_1_days_and_expired() {
        let t = 1_000_000_000;
        assert_eq!(expiry_level(t + 31 * DAY, t), ExpiryLevel::Ok);
        assert_eq!(expiry_level(t + 30 * DAY, t), ExpiryLevel::Within30Days);
        assert_eq!(expiry_level(t + 8 * DAY, t), ExpiryLevel::Within30Days);
        assert_eq!(expiry_level(t + 7 * DAY, t), ExpiryLevel::Within7Days);
        assert_eq!(expiry_level(t + DAY + 1, t), ExpiryLevel::Within7Days);
        assert_eq!(expiry_level(t + DAY, t), ExpiryLevel::Within1Day);
        assert_eq!(expiry_level(t + 1, t), ExpiryLevel::Within1Day);
        assert_eq!(expiry_level(t, t), ExpiryLevel::Expired);
        assert_eq!(expiry_level(t - 5, t), ExpiryLevel::Expired);
    }

    #[test]
    fn warns_once_per_window_as_fake_time_advances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["srv".to_string()]).expect("params");
        let not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).expect("time");
        params.not_after = not_after;
        let path = dir.path().join("server.crt");
        std::fs::write(&path, params.self_signed(&key).expect("cert").pem()).expect("write");

        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let sink = seen.clone();
        let publish = move |t: String, p: String| sink.lock().expect("lock").push((t, p));
        let certs = vec![("server".to_string(), path)];
        let mut last = HashMap::new();
        let end = 2_000_000_000;
        // 60, 40 days left: nothing; 29, 20: one 30-day warning; 6: 7-day; 0.5: 1-day; after: expired.
        for now in [
            end - 60 * DAY,
            end - 40 * DAY,
            end - 29 * DAY,
            end - 20 * DAY,
            end - 6 * DAY,
            end - 5 * DAY,
            end - DAY / 2,
            end + 10,
            end + DAY,
        ] {
            check_all(&certs, &mut last, now, &publish);
        }
        let seen = seen.lock().expect("lock");
        let levels: Vec<String> = seen
            .iter()
            .map(|(topic, payload)| {
                assert_eq!(topic, "$SYS/tollgate/certs/server/expiry");
                let v: serde_json::Value = serde_json::from_str(payload).expect("json");
                v["level"].as_str().expect("level").to_string()
            })
            .collect();
        assert_eq!(levels, ["30-days", "7-days", "1-day", "expired"]);
        let first: serde_json::Value = serde_json::from_str(&seen[0].1).expect("json");
        assert_eq!(first["days_left"], 29);
    }

    #[tokio::test]
    async fn watch_publishes_on_start_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["srv".to_string()]).expect("params");
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(5);
        let soon = dir.path().join("soon.crt");
        std::fs::write(&soon, params.clone().self_signed(&key).expect("cert").pem())
            .expect("write");
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(400);
        let later = dir.path().join("later.crt");
        std::fs::write(&later, params.self_signed(&key).expect("cert").pem()).expect("write");

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let handle = spawn_expiry_watch(
            vec![("server".into(), soon), ("ca".into(), later)],
            move |topic, payload| {
                let _ = tx.send((topic, payload));
            },
            shutdown.clone(),
        );
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("published in time")
            .expect("message");
        assert_eq!(topic, "$SYS/tollgate/certs/server/expiry");
        assert!(payload.contains("\"level\":\"7-days\""), "{payload}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stopped in time")
            .expect("task");
        // The CA certificate far from expiry produced nothing.
        assert!(rx.try_recv().is_err());
    }
}
