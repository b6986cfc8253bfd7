//! The bridge's counters across restarts: `counters.json` in the journal directory
//! (`<broker.data_dir>/bridge/<name>/`, beside the segments, which the journal ignores),
//! replaced atomically (`fsutil::write_atomic`: a reader sees the old file or the new
//! one) every [`SAVE_EVERY`] while the bridge runs and once more when it stops. A crash
//! loses at most the counts of the last interval; a missing or unreadable file starts
//! the counters at zero, with a warning for a damaged one. It never touches the journal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::state::{CounterSnapshot, StatusBoard};

/// How often the counters are written while the bridge runs.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);
/// The file's name in the journal directory.
const FILE: &str = "counters.json";

/// The counters file of the journal in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Read the counters saved in `dir`; `None` when there are none (first start) or they
/// cannot be read (logged).
pub fn load(dir: &Path, bridge: &str) -> Option<CounterSnapshot> {
    let path = path(dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(%bridge, path = %path.display(), reason = %e, "Bridge counters not read; they start at zero.");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(%bridge, path = %path.display(), reason = %e, "Bridge counters file damaged; the counters start at zero.");
            None
        }
    }
}

/// Write `snapshot` to `dir` atomically.
pub fn save(dir: &Path, snapshot: &CounterSnapshot) -> std::io::Result<()> {
    let text = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&path(dir), &text, 0o600, None)
}

/// Save the board's counters to `dir` on the blocking pool; failures are logged.
pub async fn save_now(board: &StatusBoard, dir: &Path, bridge: &str) {
    let snapshot = board.snapshot();
    let dir = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || save(&dir, &snapshot)).await;
    if let Ok(Err(e)) = result {
        warn!(%bridge, reason = %e, "Bridge counters not saved (they may restart lower after a restart).");
    }
}

/// Save every [`SAVE_EVERY`] until `stop` (the caller saves once more at the end).
pub async fn save_loop(
    board: Arc<StatusBoard>,
    dir: PathBuf,
    bridge: String,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAVE_EVERY) => {}
        }
        // Nothing moved: no write (an idle gateway does not wear its flash).
        let snapshot = board.snapshot();
        if last.as_ref() != Some(&snapshot) {
            save_now(&board, &dir, &bridge).await;
            last = Some(snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::Overflow;
    use crate::bridge::outbox::{tests::record, MemoryOutbox, Outbox};
    use crate::bridge::state::Counters;
    use crate::component::HealthBoard;

    fn board(outbox: Arc<dyn Outbox>) -> StatusBoard {
        StatusBoard::new(
            "cloud",
            HealthBoard::default().reporter("bridge:cloud"),
            outbox,
        )
    }

    #[tokio::test]
    async fn counters_survive_a_restart_added_to_the_new_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(dir.path(), "cloud"),
            None,
            "first start: nothing saved"
        );

        // First run: some traffic, saved at stop.
        let outbox = Arc::new(MemoryOutbox::new(1 << 20, Overflow::BlockPublishers));
        outbox.append(record("a", "1")).await.expect("stored");
        let first = board(outbox);
        Counters::bump(&first.counters.sent);
        Counters::bump(&first.counters.sent);
        Counters::bump(&first.counters.acked);
        Counters::bump(&first.counters.reconnects);
        Counters::bump(&first.counters.dropped_full);
        Counters::bump(&first.counters.lost_at_open);
        save_now(&first, dir.path(), "cloud").await;

        // Second run: restored, then counting on.
        let saved = load(dir.path(), "cloud").expect("saved");
        let second = board(Arc::new(MemoryOutbox::new(
            1 << 20,
            Overflow::BlockPublishers,
        )));
        second.counters.restore(&saved);
        Counters::bump(&second.counters.sent);
        let v: serde_json::Value = serde_json::from_str(&second.payload()).expect("JSON");
        assert_eq!(v["sent"], 3);
        assert_eq!(v["acked"], 1);
        assert_eq!(v["reconnects"], 1);
        assert_eq!(v["stored"], 1, "the outbox's total of the first run");
        assert_eq!(v["dropped"]["full"], 1);
        assert_eq!(v["lost_at_open"], 0, "per start, not carried");
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE]);
    }

    #[test]
    fn a_damaged_file_starts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path()), b"{\"values\": {\"sent\": ").expect("write");
        assert_eq!(load(dir.path(), "cloud"), None);
        // Unknown names (a later version) are ignored, known ones kept.
        std::fs::write(
            path(dir.path()),
            br#"{"values": {"sent": 5, "future": 1}, "stored": 2, "later": true}"#,
        )
        .expect("write");
        let s = load(dir.path(), "cloud").expect("readable");
        assert_eq!((s.values["sent"], s.stored), (5, 2));
    }
}
