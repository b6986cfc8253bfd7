//! Subscription trie: one node per topic level of a live subscription filter, holding
//! the sessions subscribed there (plain and shared). It owns nothing else and never
//! keeps a node without a subscription below it: removal prunes empty branches, so
//! memory follows live subscriptions only.

use std::collections::HashMap;
use std::sync::Arc;

use super::fasthash::IntMap;
use super::wire::QoS;

/// Session table key (see `router::Router::sessions`).
pub(crate) type SessionKey = u64;

/// What a subscriber asked for on one filter (MQTT v5 subscription options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubOptions {
    /// Granted maximum QoS.
    pub qos: QoS,
    /// v5 No Local: never deliver the subscriber's own publications.
    pub no_local: bool,
    /// v5 Retain As Published: keep the RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    /// v5 Subscription Identifier sent along with matching messages.
    pub id: Option<usize>,
    /// Set for shared subscriptions: the group and filter, so a message can be handed
    /// to another member when this one's session ends unacknowledged.
    pub share: Option<Arc<SharedRef>>,
}

/// Names one shared subscription group on one filter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SharedRef {
    pub group: Box<str>,
    pub filter: Box<str>,
}

/// Members of one shared subscription group on one filter, served round robin.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionKey, SubOptions)>,
    next: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Whether `children` has a `#` / `+` child: the per-message walk skips the two
    /// wildcard lookups (one SipHash each) on the many nodes that have neither.
    has_hash: bool,
    has_plus: bool,
    subscribers: IntMap<SessionKey, SubOptions>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }

    fn emit(
        &mut self,
        out: &mut Vec<(SessionKey, SubOptions)>,
        online: &dyn Fn(SessionKey) -> bool,
    ) {
        out.extend(self.subscribers.iter().map(|(k, o)| (*k, o.clone())));
        for group in self.shared.values_mut() {
            if let Some(member) = group.pick(online) {
                out.push(member);
            }
        }
    }
}

impl SharedGroup {
    /// Round robin over online members; when none is online, over all members (a
    /// persistent member then queues the message offline).
    fn pick(&mut self, online: &dyn Fn(SessionKey) -> bool) -> Option<(SessionKey, SubOptions)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        for step in 0..n {
            let i = (self.next + step) % n;
            if online(self.members[i].0) {
                self.next = (i + 1) % n;
                return Some(self.members[i].clone());
            }
        }
        let i = self.next % n;
        self.next = (i + 1) % n;
        Some(self.members[i].clone())
    }
}

/// The subscription trie.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionTrie {
    root: Node,
    nodes: usize,
}

impl SubscriptionTrie {
    /// Number of nodes below the root (for the memory-bound test and stats).
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// Add or replace a subscription; returns true when it did not exist before.
    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        key: SessionKey,
        options: SubOptions,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            if !node.children.contains_key(level) {
                self.nodes += 1;
                match level {
                    "#" => node.has_hash = true,
                    "+" => node.has_plus = true,
                    _ => {}
                }
            }
            node = node.children.entry(Box::from(level)).or_default();
        }
        match group {
            None => node.subscribers.insert(key, options).is_none(),
            Some(group) => {
                let group = node.shared.entry(Box::from(group)).or_default();
                if let Some(slot) = group.members.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = options;
                    false
                } else {
                    group.members.push((key, options));
                    true
                }
            }
        }
    }

    /// Remove a subscription and prune empty nodes; returns true when it existed.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: SessionKey) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut pruned = 0;
        let removed = remove_rec(&mut self.root, &levels, group, key, &mut pruned);
        self.nodes -= pruned;
        removed
    }

    /// Choose a member of one shared group (round robin, online first).
    pub fn pick_shared(
        &mut self,
        share: &SharedRef,
        online: &dyn Fn(SessionKey) -> bool,
    ) -> Option<(SessionKey, SubOptions)> {
        let mut node = &mut self.root;
        for level in share.filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.shared.get_mut(&*share.group)?.pick(online)
    }

    /// Collect every subscription matching `topic` (one entry per plain subscription,
    /// one chosen member per shared group). Leading wildcards never match `$` topics.
    pub fn matches(
        &mut self,
        topic: &str,
        out: &mut Vec<(SessionKey, SubOptions)>,
        online: &dyn Fn(SessionKey) -> bool,
    ) {
        walk(
            &mut self.root,
            Some(topic),
            topic.starts_with('$'),
            out,
            online,
        );
    }
}

fn remove_rec(
    node: &mut Node,
    levels: &[&str],
    group: Option<&str>,
    key: SessionKey,
    pruned: &mut usize,
) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(&key).is_some(),
            Some(g) => {
                let Some(shared) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = shared.members.len();
                shared.members.retain(|(k, _)| *k != key);
                let removed = shared.members.len() != before;
                if shared.members.is_empty() {
                    node.shared.remove(g);
                } else if shared.next >= shared.members.len() {
                    shared.next = 0;
                }
                removed
            }
        };
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_rec(child, rest, group, key, pruned);
    if child.is_empty() {
        node.children.remove(*first);
        match *first {
            "#" => node.has_hash = false,
            "+" => node.has_plus = false,
            _ => {}
        }
        *pruned += 1;
    }
    removed
}

/// `rest` is the remaining topic (`None` once every level is consumed); walking
/// it with `split_once` avoids allocating a level list per routed message.
fn walk(
    node: &mut Node,
    rest: Option<&str>,
    dollar_root: bool,
    out: &mut Vec<(SessionKey, SubOptions)>,
    online: &dyn Fn(SessionKey) -> bool,
) {
    if !dollar_root && node.has_hash {
        if let Some(hash) = node.children.get_mut("#") {
            hash.emit(out, online);
        }
    }
    let Some(rest) = rest else {
        node.emit(out, online);
        return;
    };
    let (first, next) = match rest.split_once('/') {
        Some((first, next)) => (first, Some(next)),
        None => (rest, None),
    };
    if !dollar_root && node.has_plus {
        if let Some(plus) = node.children.get_mut("+") {
            walk(plus, next, false, out, online);
        }
    }
    if let Some(child) = node.children.get_mut(first) {
        walk(child, next, false, out, online);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SubOptions {
        SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            id: None,
            share: None,
        }
    }

    fn keys(trie: &mut SubscriptionTrie, topic: &str) -> Vec<SessionKey> {
        let mut out = Vec::new();
        trie.matches(topic, &mut out, &|_| true);
        let mut k: Vec<_> = out.into_iter().map(|(k, _)| k).collect();
        k.sort();
        k
    }

    #[test]
    fn wildcards_match_per_spec() {
        let mut t = SubscriptionTrie::default();
        t.insert("a/+/c", None, 1, opts());
        t.insert("a/#", None, 2, opts());
        t.insert("#", None, 3, opts());
        t.insert("+/b/c", None, 4, opts());
        t.insert("a/b/c", None, 5, opts());
        assert_eq!(keys(&mut t, "a/b/c"), vec![1, 2, 3, 4, 5]);
        assert_eq!(keys(&mut t, "a"), vec![2, 3]);
        assert_eq!(keys(&mut t, "x/y"), vec![3]);
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        let mut t = SubscriptionTrie::default();
        t.insert("#", None, 1, opts());
        t.insert("+/broker/uptime", None, 2, opts());
        t.insert("$SYS/#", None, 3, opts());
        assert_eq!(keys(&mut t, "$SYS/broker/uptime"), vec![3]);
    }

    #[test]
    fn removal_prunes_every_node() {
        let mut t = SubscriptionTrie::default();
        t.insert("a/b/c", None, 1, opts());
        t.insert("a/b", Some("g"), 2, opts());
        assert_eq!(t.node_count(), 3);
        assert!(t.remove("a/b/c", None, 1));
        assert_eq!(t.node_count(), 2);
        assert!(t.remove("a/b", Some("g"), 2));
        assert_eq!(t.node_count(), 0);
        assert!(!t.remove("a/b", None, 2));
    }

    #[test]
    fn shared_group_round_robins_and_prefers_online_members() {
        let mut t = SubscriptionTrie::default();
        t.insert("s", Some("g"), 1, opts());
        t.insert("s", Some("g"), 2, opts());
        let a = keys(&mut t, "s");
        let b = keys(&mut t, "s");
        assert_ne!(a, b);
        let mut out = Vec::new();
        for _ in 0..3 {
            t.matches("s", &mut out, &|k| k == 2);
        }
        assert!(out.iter().all(|(k, _)| *k == 2));
    }

    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x", "c"]).prop_map(str::to_string)
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x", "+"]).prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn trie_agrees_with_topic_matches_and_prunes_to_nothing(
            filters in prop::collection::vec(
                (prop::collection::vec(filter_level(), 1..4), any::<bool>()),
                1..12,
            ),
            topics in prop::collection::vec(prop::collection::vec(level(), 1..5), 1..12),
        ) {
            let filters: Vec<String> = filters
                .into_iter()
                .map(|(levels, hash)| {
                    let mut f = levels.join("/");
                    if hash {
                        f.push_str("/#");
                    }
                    f
                })
                .collect();
            let mut t = SubscriptionTrie::default();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, None, i as SessionKey, opts());
            }
            for topic in topics.iter().map(|l| l.join("/")) {
                let mut expected: Vec<SessionKey> = filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| crate::topic::matches(f, &topic))
                    .map(|(i, _)| i as SessionKey)
                    .collect();
                expected.sort();
                prop_assert_eq!(keys(&mut t, &topic), expected, "topic {:?}", topic);
            }
            for (i, f) in filters.iter().enumerate() {
                t.remove(f, None, i as SessionKey);
            }
            prop_assert_eq!(t.node_count(), 0);
        }
    }
}
