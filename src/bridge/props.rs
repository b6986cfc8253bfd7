//! MQTT 5 PUBLISH properties across the bridge, both ways: user properties, content
//! type, payload format indicator, correlation data, response topic and the remaining
//! message expiry. Topic aliases and subscription identifiers belong to one connection
//! and are never carried.
//!
//! A Response Topic names where the reply goes, which is the opposite direction: going
//! out, it is mapped local → remote by the first `in` (or `both`) rule that covers it,
//! so the reply comes back in through that rule; coming in, remote → local by the first
//! `out` (or `both`) rule. A response topic no rule covers is kept as it is.

use std::time::{SystemTime, UNIX_EPOCH};

use super::outbox::MessageProperties;
use super::rules::Rule;
use crate::broker::codec::v5;

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What an outgoing record keeps of a local delivery's properties (`None`: nothing).
pub fn outgoing(
    properties: Option<v5::PublishProperties>,
    rules: &[Rule],
    now_ms: impl FnOnce() -> u64,
) -> Option<Box<MessageProperties>> {
    let p = properties?;
    let response_topic = p.response_topic.map(|t| {
        rules
            .iter()
            .filter(|r| r.is_in())
            .find_map(|r| r.local_to_remote(&t))
            .unwrap_or(t)
    });
    let m = MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        expires_at_ms: p
            .message_expiry_interval
            .map(|s| now_ms().saturating_add(u64::from(s) * 1000)),
        content_type: p.content_type,
        response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    };
    (m != MessageProperties::default()).then(|| Box::new(m))
}

/// The properties to send upstream at `now_ms`; `Err` when the message has expired.
pub fn upstream(m: &MessageProperties, now_ms: u64) -> Result<v5::PublishProperties, Expired> {
    let message_expiry_interval = match m.expires_at_ms {
        None => None,
        Some(at) if at <= now_ms => return Err(Expired),
        // Rounded up: a message with 300 ms left still has "1 s", never "0".
        Some(at) => Some(u32::try_from((at - now_ms).div_ceil(1000)).unwrap_or(u32::MAX)),
    };
    Ok(v5::PublishProperties {
        payload_format_indicator: m.payload_format_indicator,
        message_expiry_interval,
        topic_alias: None,
        response_topic: m.response_topic.clone(),
        correlation_data: m.correlation_data.clone(),
        user_properties: m.user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: m.content_type.clone(),
    })
}

/// The message expired in the outbox before it could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

/// The properties a message from the cloud is published with locally.
pub fn incoming(
    properties: Option<v5::PublishProperties>,
    rules: &[Rule],
) -> Option<v5::PublishProperties> {
    let mut p = properties?;
    p.topic_alias = None;
    p.subscription_identifiers.clear();
    p.response_topic = p.response_topic.map(|t| {
        rules
            .iter()
            .filter(|r| r.is_out())
            .find_map(|r| r.remote_to_local(&t))
            .unwrap_or(t)
    });
    Some(p)
}

/// Bytes the properties take in a PUBLISH, their length prefix excluded (MQTT 5
/// §3.3.2.3: one identifier byte per property, then its value).
pub fn encoded_len(p: &v5::PublishProperties) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, |s| 1 + 2 + s.len());
    p.payload_format_indicator.map_or(0, |_| 2)
        + p.message_expiry_interval.map_or(0, |_| 5)
        + p.topic_alias.map_or(0, |_| 3)
        + text(&p.content_type)
        + text(&p.response_topic)
        + p.correlation_data.as_ref().map_or(0, |d| 1 + 2 + d.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::{Direction, TopicRuleConfig};

    fn rules() -> Vec<Rule> {
        [("sensors/#", Direction::Out), ("cmd/#", Direction::In)]
            .iter()
            .enumerate()
            .map(|(i, (pattern, direction))| {
                Rule::from_config(
                    i,
                    &TopicRuleConfig {
                        pattern: (*pattern).into(),
                        direction: *direction,
                        qos: 1,
                        local_prefix: String::new(),
                        remote_prefix: "site/gw1/".into(),
                        retain: true,
                        rate: None,
                    },
                )
            })
            .collect()
    }

    fn props(response_topic: &str) -> v5::PublishProperties {
        v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some(response_topic.into()),
            correlation_data: Some(bytes::Bytes::from_static(b"id-7")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![4],
            content_type: Some("text/plain".into()),
        }
    }

    #[test]
    fn out_maps_the_response_topic_through_an_in_rule_and_keeps_the_rest() {
        let rules = rules();
        let m = outgoing(Some(props("cmd/replies/1")), &rules, || 1_000_000).expect("kept");
        assert_eq!(m.response_topic.as_deref(), Some("site/gw1/cmd/replies/1"));
        assert_eq!(m.expires_at_ms, Some(1_060_000));
        let up = upstream(&m, 1_000_500).expect("not expired");
        assert_eq!(
            up.message_expiry_interval,
            Some(60),
            "59.5 s left: rounded up"
        );
        assert_eq!(
            (up.topic_alias, up.subscription_identifiers.len()),
            (None, 0)
        );
        assert_eq!(up.user_properties, [("k".to_string(), "v".to_string())]);
        assert_eq!(upstream(&m, 1_060_000), Err(Expired));
        // Covered by no in rule: kept.
        let m = outgoing(Some(props("elsewhere/x")), &rules, || 0).expect("kept");
        assert_eq!(m.response_topic.as_deref(), Some("elsewhere/x"));
        // Nothing to carry.
        assert!(outgoing(Some(v5::PublishProperties::default()), &rules, || 0).is_none());
        assert!(outgoing(None, &rules, || 0).is_none());
    }

    #[test]
    fn in_maps_the_response_topic_through_an_out_rule() {
        let rules = rules();
        let p = incoming(Some(props("site/gw1/sensors/replies")), &rules).expect("kept");
        assert_eq!(p.response_topic.as_deref(), Some("sensors/replies"));
        assert_eq!((p.topic_alias, p.subscription_identifiers.len()), (None, 0));
        let p = incoming(Some(props("other/x")), &rules).expect("kept");
        assert_eq!(p.response_topic.as_deref(), Some("other/x"));
    }
}
