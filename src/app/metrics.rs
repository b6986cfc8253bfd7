//! The metrics endpoint's place in the application: gather one scrape's figures
//! from the core, the listeners' counters, the audit counts and the watched certificates.
//! It must never hold locks the broker needs: everything it reads is an atomic or a file.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::core::Core;
use crate::edge::metrics::{ListenerView, Snapshot};
use crate::telemetry::audit;

/// The certificates a scrape reports (label, file): set at start, replaced on reload so
/// a certificate a reload points to is the one whose expiry is shown.
pub(super) type WatchedCertificates = Arc<RwLock<Vec<(String, PathBuf)>>>;

/// The list for replacing; a poisoned lock still holds a complete list.
pub(super) fn write(list: &WatchedCertificates) -> RwLockWriteGuard<'_, Vec<(String, PathBuf)>> {
    list.write().unwrap_or_else(PoisonError::into_inner)
}

/// What each scrape gathers: runs on the blocking pool (it reads certificate files).
pub(super) fn snapshot_source(
    core: Arc<dyn Core>,
    listeners: Vec<ListenerView>,
    certificates: WatchedCertificates,
) -> Arc<dyn Fn() -> Snapshot + Send + Sync> {
    Arc::new(move || Snapshot {
        broker: core.stats(),
        listeners: listeners.clone(),
        audit: audit::Kind::ALL
            .iter()
            .map(|k| (k.name(), audit::count(*k)))
            .collect(),
        certificates: certificates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(label, path)| (label.clone(), crate::tls::not_after(path)))
            .collect(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    })
}
