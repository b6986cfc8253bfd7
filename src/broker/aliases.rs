//! MQTT v5 topic aliases of one connection, both ways. Inbound: the aliases a client
//! sets towards the broker, bounded in count (`topic_alias_maximum`) and in bytes
//! (`MAX_INBOUND_ALIAS_BYTES`), each topic an owned copy (never a slice of the read
//! buffer). Outbound: aliases the broker assigns towards a client that announced a
//! Topic Alias Maximum, reused round robin. It owns nothing else and never lets a
//! client grow it beyond those bounds.

use std::collections::HashMap;

use bytes::Bytes;

use super::codec::v5;
use super::fasthash::IntMap;

/// Bytes of topic names a client's inbound aliases may hold together: room for the
/// default 32 aliases of 2 KiB each; a client needing more gets 0x97.
pub(crate) const MAX_INBOUND_ALIAS_BYTES: usize = 64 * 1024;

/// Aliases set by the client (alias → topic).
#[derive(Default)]
pub(crate) struct InboundAliases {
    topics: IntMap<u16, Bytes>,
    bytes: usize,
}

impl InboundAliases {
    pub(crate) fn get(&self, alias: u16) -> Option<&Bytes> {
        self.topics.get(&alias)
    }

    /// Map `alias` to a copy of `topic`; `Err` (with the reason for 0x97) when the
    /// aliases would hold more than `MAX_INBOUND_ALIAS_BYTES`.
    pub(crate) fn set(&mut self, alias: u16, topic: &[u8]) -> Result<(), String> {
        let old = self.topics.get(&alias).map_or(0, Bytes::len);
        let bytes = self.bytes - old + topic.len();
        if bytes > MAX_INBOUND_ALIAS_BYTES {
            return Err(format!(
                "topic aliases would hold {bytes} bytes of topic names; at most {MAX_INBOUND_ALIAS_BYTES} per connection"
            ));
        }
        self.bytes = bytes;
        self.topics.insert(alias, Bytes::copy_from_slice(topic));
        Ok(())
    }
}

/// Aliases the broker assigns towards the client (topic → alias), at most `max`.
pub(crate) struct OutboundAliases {
    by_topic: HashMap<Bytes, u16>,
    /// Topic of each alias, index `alias - 1`.
    slots: Vec<Option<Bytes>>,
    /// Next alias to (re)assign, round robin.
    next: u16,
    max: u16,
}

impl OutboundAliases {
    /// `max`: the smaller of the client's Topic Alias Maximum and the broker's own.
    pub(crate) fn new(max: u16) -> Self {
        OutboundAliases {
            by_topic: HashMap::new(),
            slots: Vec::new(),
            next: 1,
            max,
        }
    }

    /// Replace the topic of `publish` by its alias when it has one, or assign one
    /// (sending the topic along once).
    pub(crate) fn apply(&mut self, publish: &mut v5::Publish) {
        if self.max == 0 || publish.topic.is_empty() {
            return;
        }
        let alias = match self.by_topic.get(&publish.topic) {
            Some(&alias) => {
                publish.topic = Bytes::new();
                alias
            }
            None => {
                let alias = self.next;
                self.next = if alias >= self.max { 1 } else { alias + 1 };
                let slot = usize::from(alias - 1);
                if self.slots.len() <= slot {
                    self.slots.resize(slot + 1, None);
                }
                if let Some(old) = self.slots[slot].take() {
                    self.by_topic.remove(&old);
                }
                // A copy: the table must not keep the message's buffer alive.
                let topic = Bytes::copy_from_slice(&publish.topic);
                self.slots[slot] = Some(topic.clone());
                self.by_topic.insert(topic, alias);
                alias
            }
        };
        publish
            .properties
            .get_or_insert_with(Default::default)
            .topic_alias = Some(alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::QoS;

    fn publish(topic: &'static str) -> v5::Publish {
        v5::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Bytes::from_static(topic.as_bytes()),
            pkid: 0,
            payload: Bytes::new(),
            properties: None,
        }
    }

    fn sent(aliases: &mut OutboundAliases, topic: &'static str) -> (String, Option<u16>) {
        let mut p = publish(topic);
        aliases.apply(&mut p);
        (
            String::from_utf8(p.topic.to_vec()).expect("utf8"),
            p.properties.and_then(|p| p.topic_alias),
        )
    }

    #[test]
    fn outbound_aliases_are_assigned_reused_and_recycled_round_robin() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(sent(&mut a, "a/1"), ("a/1".into(), Some(1)));
        assert_eq!(sent(&mut a, "a/1"), ("".into(), Some(1)));
        assert_eq!(sent(&mut a, "a/2"), ("a/2".into(), Some(2)));
        assert_eq!(sent(&mut a, "a/3"), ("a/3".into(), Some(1)));
        assert_eq!(sent(&mut a, "a/1"), ("a/1".into(), Some(2)));
        assert_eq!(sent(&mut a, "a/3"), ("".into(), Some(1)));
        assert!(a.by_topic.len() <= 2 && a.slots.len() <= 2);
        let mut none = OutboundAliases::new(0);
        assert_eq!(sent(&mut none, "a/1"), ("a/1".into(), None));
    }

    #[test]
    fn inbound_aliases_are_bounded_in_bytes() {
        let mut a = InboundAliases::default();
        let topic = vec![b't'; MAX_INBOUND_ALIAS_BYTES / 2];
        a.set(1, &topic).expect("fits");
        a.set(2, &topic).expect("fits exactly");
        assert!(a.set(3, b"x").is_err());
        // Replacing an alias frees its old topic's bytes.
        a.set(2, b"short").expect("replacement fits");
        a.set(3, b"x").expect("room again");
        assert_eq!(a.get(2).map(|t| &t[..]), Some(&b"short"[..]));
    }
}
