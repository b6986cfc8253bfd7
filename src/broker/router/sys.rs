//! The broker's own statistics: counters refreshed after every router turn and the
//! retained `$SYS/...` topics published every `sys_interval`. Only the broker writes
//! under `$SYS/`; this module must never take client input.

use std::sync::Arc;

use super::*;

impl Router {
    pub(super) fn publish_sys(&mut self) {
        self.update_stats();
        let snapshot = self.ctx.shared.stats.snapshot(self.ctx.shared.started);
        let audit = self.ctx.shared.log_limits.stats();
        let values: [(&str, String); 25] = [
            (
                "$SYS/broker/version",
                format!("tollgate {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", snapshot.uptime.as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                snapshot.clients_connected.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                snapshot.messages_received.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                snapshot.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                snapshot.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", snapshot.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                snapshot.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                snapshot.retained_messages.to_string(),
            ),
            // What the bounds did (design decision 12: a counter for every limit).
            (
                "$SYS/tollgate/retained/bytes",
                snapshot.retained_bytes.to_string(),
            ),
            (
                "$SYS/tollgate/sessions/count",
                snapshot.sessions.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/queue_overflow",
                snapshot.dropped_queue_overflow.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/slow_consumer",
                snapshot.dropped_slow_consumer.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/expired",
                snapshot.dropped_expired.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/oversize",
                snapshot.dropped_oversize.to_string(),
            ),
            (
                "$SYS/tollgate/dropped/retained_quota",
                snapshot.dropped_retained_quota.to_string(),
            ),
            (
                "$SYS/tollgate/publishers_blocked",
                snapshot.publishers_blocked.to_string(),
            ),
            (
                "$SYS/tollgate/refused/session_owner",
                snapshot.refused_session_owner.to_string(),
            ),
            (
                "$SYS/tollgate/refused/session_quota",
                snapshot.refused_session_quota.to_string(),
            ),
            (
                "$SYS/tollgate/refused/subscription_quota",
                snapshot.refused_subscription_quota.to_string(),
            ),
            (
                "$SYS/tollgate/audit/acl_denied",
                audit.acl_denied.to_string(),
            ),
            (
                "$SYS/tollgate/audit/auth_refused",
                audit.auth_refused.to_string(),
            ),
            (
                "$SYS/tollgate/audit/invalid_connect",
                audit.invalid_connect.to_string(),
            ),
            (
                "$SYS/tollgate/audit/protocol_violation",
                audit.protocol_violation.to_string(),
            ),
            ("$SYS/tollgate/audit/timeout", audit.timeout.to_string()),
        ];
        let events = crate::telemetry::audit::Kind::ALL.iter().map(|k| {
            (
                Bytes::from(format!("$SYS/tollgate/audit/events/{}", k.name())),
                crate::telemetry::audit::count(*k).to_string(),
            )
        });
        let untracked = (
            Bytes::from_static(b"$SYS/tollgate/auth/untracked_failures"),
            crate::auth::untracked_failures().to_string(),
        );
        let listeners = listener_values(&self.ctx.shared);
        let values = values
            .into_iter()
            .chain(state_values(&snapshot))
            .map(|(topic, value)| (Bytes::from_static(topic.as_bytes()), value))
            .chain(events)
            .chain(std::iter::once(untracked))
            .chain(listeners);
        for (topic, value) in values {
            self.route(
                Arc::new(Message {
                    topic,
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: None,
                    expires_at: None,
                    publisher: None,
                    origin: None,
                }),
                None,
            );
        }
        self.complete_targets();
    }
}

/// `$SYS/tollgate/state/...`: the durable state (`[persistence]`).
fn state_values(snapshot: &crate::broker::stats::BrokerStats) -> [(&'static str, String); 6] {
    [
        (
            "$SYS/tollgate/state/retained",
            snapshot.state_retained.to_string(),
        ),
        (
            "$SYS/tollgate/state/sessions",
            snapshot.state_sessions.to_string(),
        ),
        (
            "$SYS/tollgate/state/session_records",
            snapshot.state_session_records.to_string(),
        ),
        (
            "$SYS/tollgate/state/bytes",
            snapshot.state_bytes.to_string(),
        ),
        (
            "$SYS/tollgate/state/failures",
            snapshot.state_failures.to_string(),
        ),
        (
            "$SYS/tollgate/state/lost_at_open",
            snapshot.state_lost_at_open.to_string(),
        ),
    ]
}

/// `$SYS/tollgate/listener/<name>/...`: each registered listener's messages and the
/// actions of its rate controls.
fn listener_values(shared: &crate::broker::shared::Shared) -> Vec<(Bytes, String)> {
    use std::sync::atomic::Ordering::Relaxed;
    let listeners = shared
        .listeners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut values = Vec::with_capacity(listeners.len() * 7);
    for (name, t) in listeners.iter() {
        for (suffix, n) in [
            ("messages/received", &t.messages_received),
            ("messages/sent", &t.messages_sent),
            ("rate/connects_refused", &t.connects_refused),
            ("rate/publish_throttled", &t.publish_throttled),
            ("rate/publish_disconnects", &t.publish_rate_disconnects),
            ("rate/qos_downgraded", &t.qos_downgraded),
            ("rate/qos_refused", &t.qos_refused),
        ] {
            values.push((
                Bytes::from(format!("$SYS/tollgate/listener/{name}/{suffix}")),
                n.load(Relaxed).to_string(),
            ));
        }
    }
    values
}
