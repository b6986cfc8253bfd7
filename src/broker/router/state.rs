//! The router's side of durable state (`super::super::persist`): loading the retained
//! messages and the persistent sessions (`stored.rs`) before the first request,
//! writing every change of the retained store, holding a QoS 1/2 publisher's
//! acknowledgement until its retained message is durable, upkeep (clears, ends,
//! compaction) and the final flush.

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::super::persist::{Replay, RetainedLog, SessionLog, StoredWill};
use super::*;

/// `$SYS` retained topics are rebuilt by the broker itself: never stored.
fn stored_topic(topic: &[u8]) -> bool {
    !topic.starts_with(b"$SYS/")
}

impl Router {
    /// Open and load the state, if `[persistence]` is enabled. A state that cannot be
    /// opened is logged; the broker then serves with its retained store in memory only.
    pub(super) async fn open_state(&mut self) {
        let settings = &self.ctx.shared.settings;
        if !settings.persistence.enabled {
            return;
        }
        let data_dir = settings.data_dir.clone();
        let settings = settings.clone();
        let started = std::time::Instant::now();
        let mut expired = 0;
        let replayed = RetainedLog::open(&data_dir, &settings.persistence, |change| {
            self.replay_retained(change)
        })
        .await;
        match replayed {
            Ok((log, loaded)) => {
                self.ctx.now = Instant::now();
                stats(&self.ctx)
                    .state_lost_at_open
                    .store(loaded.lost_records, Ordering::Relaxed);
                self.state = Some(log);
                self.update_state_stats();
            }
            Err(e) => {
                error!(reason = %e, "Broker state cannot be opened: retained messages are kept in memory only and are lost at the next restart. Fix the directory (owner, permissions, disk) and restart, or set [persistence] enabled = false.");
                stats(&self.ctx)
                    .state_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        match SessionLog::open(&data_dir, &settings.persistence).await {
            Ok((log, loaded)) => {
                self.ctx.now = Instant::now();
                stats(&self.ctx)
                    .state_lost_at_open
                    .fetch_add(loaded.lost_records, Ordering::Relaxed);
                expired = loaded.expired;
                let due = self.restore_sessions(loaded.sessions);
                self.ctx.sessions_log = Some(log);
                self.publish_due_wills(due, loaded.wills_due);
                self.update_state_stats();
            }
            Err(e) => {
                error!(reason = %e, "Session state cannot be opened: persistent sessions are kept in memory only and are lost at the next restart. Fix the directory (owner, permissions, disk) and restart, or set [persistence] enabled = false.");
                stats(&self.ctx)
                    .state_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        info!(
            retained = self.retained.len(),
            sessions = self.sessions.len(),
            sessions_expired_while_down = expired,
            ms = started.elapsed().as_millis() as u64,
            "Broker state loaded."
        );
    }

    /// Apply one retained change read from the log (the log is not open yet, so
    /// nothing is written back).
    fn replay_retained(&mut self, change: Replay) {
        match change {
            Replay::Set(message) => {
                if !self.retain_store(&message) {
                    warn!(topic = %LogStr(message.topic_str()), "Stored retained message not loaded: over max_retained_messages or max_retained_bytes.");
                }
            }
            Replay::Clear(topic) => {
                if let Ok(topic) = std::str::from_utf8(&topic) {
                    self.retain_clear(topic);
                }
            }
        }
    }

    /// Publish the delayed wills that came due while the broker was down: of restored
    /// sessions (`due`) and of sessions that expired meanwhile (`ended`), once every
    /// session is back so their subscribers get them.
    fn publish_due_wills(&mut self, due: Vec<SessionKey>, ended: Vec<(Identity, StoredWill)>) {
        let count = due.len() + ended.len();
        for key in due {
            self.fire_will(key);
        }
        for (identity, will) in ended {
            let record = will.record;
            let spec = WillSpec {
                message: will.msg,
                delay: will.delay,
            };
            self.publish_will(Box::new(spec), &identity);
            if let Some(log) = self.ctx.sessions_log.as_mut() {
                log.ack(record);
            }
        }
        if count > 0 {
            info!(
                wills = count,
                "Delayed wills due while the broker was down published."
            );
        }
    }

    /// Write a change of the retained store (`stored`: `msg` is now retained; otherwise
    /// its topic was cleared). A QoS 1/2 publisher's acknowledgement, if one waits for
    /// this route, is held until the change is durable; one that cannot be stored
    /// releases it as lost (v5 0x97: the publisher is not told it is safe).
    pub(super) fn persist_retained(&mut self, msg: &Message, stored: bool) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if !stored_topic(&msg.topic) {
            return;
        }
        let written = if stored {
            state.set(msg, self.ctx.now).map(Some)
        } else {
            state.clear(&msg.topic)
        };
        let durable = match written {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                stats(&self.ctx)
                    .state_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(topic = %LogStr(msg.topic_str()), reason = %e, "Retained message change not stored: it is lost at the next restart.");
                if let Some(hold) = self.ctx.hold_route() {
                    self.ctx.release_hold(Some(hold), true);
                }
                return;
            }
        };
        let Some(hold) = self.ctx.hold_route() else {
            return;
        };
        self.ctx
            .release_when_durable(super::stored::DurableLog::Retained, durable, hold);
    }

    /// A held acknowledgement's retained change is durable (or failed).
    pub(super) fn state_stored(&mut self, hold: u64, ok: bool) {
        if !ok {
            stats(&self.ctx)
                .state_failures
                .fetch_add(1, Ordering::Relaxed);
            warn!("A retained or queued message could not be made durable; its publisher is told it was not stored.");
        }
        self.ctx.release_hold(Some(hold), !ok);
    }

    /// Compaction driven by pressure: after a router turn that appended a quarter
    /// segment to a state log, its budget is looked at again at once (the 1 s upkeep
    /// alone let a minimum-size log under a fast stream fill up and refuse messages).
    /// Also where deferred QoS 1 packet ids are written once their message is durable.
    pub(super) fn state_pressure(&mut self) {
        self.store_deferred_pkids(false);
        if self
            .ctx
            .sessions_log
            .as_mut()
            .is_some_and(|log| log.pressure_due())
        {
            self.compact_sessions();
        }
        if self.state.as_mut().is_some_and(|log| log.pressure_due()) {
            self.state_upkeep();
        }
    }

    /// Periodic upkeep of the state log (once a second).
    pub(super) fn state_upkeep(&mut self) {
        if let Some(log) = self.ctx.sessions_log.as_mut() {
            log.upkeep(self.ctx.now);
        }
        self.compact_sessions();
        let Some(mut state) = self.state.take() else {
            self.update_state_stats();
            return;
        };
        state.upkeep(self.ctx.now, |topic| {
            std::str::from_utf8(topic)
                .ok()
                .and_then(|t| self.retained_at(t))
        });
        self.state = Some(state);
        self.update_state_stats();
    }

    fn update_state_stats(&self) {
        let s = stats(&self.ctx);
        let mut bytes = 0;
        if let Some(state) = &self.state {
            let (records, retained_bytes) = state.live();
            s.state_retained.store(records as u64, Ordering::Relaxed);
            bytes += retained_bytes;
            s.state_failures.store(
                s.state_failures.load(Ordering::Relaxed).max(state.failed),
                Ordering::Relaxed,
            );
        }
        if let Some(log) = &self.ctx.sessions_log {
            let (sessions, records, session_bytes) = log.live();
            s.state_sessions.store(sessions as u64, Ordering::Relaxed);
            s.state_session_records
                .store(records as u64, Ordering::Relaxed);
            bytes += session_bytes;
        }
        s.state_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Clean shutdown: everything written is made durable.
    pub(super) async fn close_state(&mut self) {
        if let Some(state) = self.state.take() {
            state.close().await;
        }
        // Before the sessions go offline: a restart re-sends in-flight messages with DUP.
        self.store_deferred_pkids(true);
        self.store_all_offline();
        if let Some(log) = self.ctx.sessions_log.take() {
            log.close().await;
        }
    }
}
