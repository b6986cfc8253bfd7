//! Subscription trie: one node per topic level of a live subscription filter, holding
//! the sessions subscribed there (plain and shared). It owns nothing else and never
//! keeps a node without a subscription below it: removal prunes empty branches, so
//! memory follows live subscriptions only. Its depth is the client's filter depth,
//! so no walk here (insert, remove, match, drop) recurses: they loop, with an
//! explicit stack where a walk branches.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::codec::QoS;
use super::fasthash::IntMap;
use crate::topic::walk::WalkStack;

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
    /// Atomic only so that the matching walk can hold shared references to several
    /// nodes at once; the trie is always used through `&mut` (relaxed = plain load/store).
    next: AtomicUsize,
}

#[derive(Default)]
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

    fn emit(&self, out: &mut Vec<(SessionKey, SubOptions)>, online: &dyn Fn(SessionKey) -> bool) {
        out.extend(self.subscribers.iter().map(|(k, o)| (*k, o.clone())));
        for group in self.shared.values() {
            if let Some(member) = group.pick(online) {
                out.push(member);
            }
        }
    }

    /// Whether this node stays when its child on a removal path is pruned.
    fn has_more_than_one_child_or_subscriptions(&self) -> bool {
        self.children.len() > 1 || !self.subscribers.is_empty() || !self.shared.is_empty()
    }

    /// Remove `key` from this node's plain subscribers or from `group`.
    fn remove_here(&mut self, group: Option<&str>, key: SessionKey) -> bool {
        let Some(g) = group else {
            return self.subscribers.remove(&key).is_some();
        };
        let Some(shared) = self.shared.get_mut(g) else {
            return false;
        };
        let before = shared.members.len();
        shared.members.retain(|(k, _)| *k != key);
        let removed = shared.members.len() != before;
        if shared.members.is_empty() {
            self.shared.remove(g);
        } else if *shared.next.get_mut() >= shared.members.len() {
            *shared.next.get_mut() = 0;
        }
        removed
    }
}

/// Drops the subtree node by node from an explicit stack: the derived drop would
/// recurse once per level of the deepest filter.
impl Drop for Node {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = std::mem::take(&mut self.children).into_values().collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(std::mem::take(&mut node.children).into_values());
        }
    }
}

/// Not derived: a derived `Debug` would recurse once per level.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("children", &self.children.len())
            .field("subscribers", &self.subscribers.len())
            .field("shared", &self.shared.len())
            .finish()
    }
}

impl SharedGroup {
    /// Round robin over online members; when none is online, over all members (a
    /// persistent member then queues the message offline).
    fn pick(&self, online: &dyn Fn(SessionKey) -> bool) -> Option<(SessionKey, SubOptions)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let next = self.next.load(Ordering::Relaxed);
        for step in 0..n {
            let i = (next + step) % n;
            if online(self.members[i].0) {
                self.next.store((i + 1) % n, Ordering::Relaxed);
                return Some(self.members[i].clone());
            }
        }
        let i = next % n;
        self.next.store((i + 1) % n, Ordering::Relaxed);
        Some(self.members[i].clone())
    }
}

/// The subscription trie.
#[derive(Default)]
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
    /// Two walks down, no recursion: the first finds the subscription and the
    /// deepest node on the path that must stay (`keep`); when the subscription's
    /// node empties, every node below `keep` on the path held only the path, and
    /// the second walk cuts that chain off at `keep`.
    pub fn remove(&mut self, filter: &str, group: Option<&str>, key: SessionKey) -> bool {
        let mut node = &mut self.root;
        let mut depth = 0;
        let mut keep = 0;
        for (at, level) in filter.split('/').enumerate() {
            if node.has_more_than_one_child_or_subscriptions() {
                keep = at;
            }
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            node = child;
            depth = at + 1;
        }
        if !node.remove_here(group, key) {
            return false;
        }
        if node.is_empty() {
            let mut levels = filter.split('/');
            let mut node = &mut self.root;
            for level in levels.by_ref().take(keep) {
                node = node
                    .children
                    .get_mut(level)
                    .expect("invariant: the path was walked above");
            }
            let cut = levels.next().expect("invariant: keep < depth");
            // The chain's own drop is iterative (see `impl Drop for Node`).
            drop(node.children.remove(cut));
            match cut {
                "#" => node.has_hash = false,
                "+" => node.has_plus = false,
                _ => {}
            }
            self.nodes -= depth - keep;
        }
        true
    }

    /// Choose a member of one shared group (round robin, online first).
    pub fn pick_shared(
        &mut self,
        share: &SharedRef,
        online: &dyn Fn(SessionKey) -> bool,
    ) -> Option<(SessionKey, SubOptions)> {
        let mut node = &self.root;
        for level in share.filter.split('/') {
            node = node.children.get(level)?;
        }
        node.shared.get(&*share.group)?.pick(online)
    }

    /// Collect every subscription matching `topic` (one entry per plain subscription,
    /// one chosen member per shared group). Leading wildcards never match `$` topics.
    pub fn matches(
        &mut self,
        topic: &str,
        out: &mut Vec<(SessionKey, SubOptions)>,
        online: &dyn Fn(SessionKey) -> bool,
    ) {
        walk(&self.root, topic, out, online);
    }
}

impl fmt::Debug for SubscriptionTrie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// A node still to visit and the topic left below it (`None` once every level is
/// consumed). Walking the topic with `split_once` avoids allocating a level list
/// per routed message.
#[derive(Clone, Copy)]
struct Visit<'a> {
    node: &'a Node,
    rest: Option<&'a str>,
    dollar_root: bool,
}

/// Pending visits held without allocating: one per level where both a `+` and a
/// literal child match, so 8 covers all but contrived subscription sets (each
/// inline slot costs a store per routed message).
const INLINE_VISITS: usize = 8;

/// Depth-first, in the order the recursive walk had: `#` child, the node itself,
/// then the `+` subtree, then the literal one.
fn walk(
    root: &Node,
    topic: &str,
    out: &mut Vec<(SessionKey, SubOptions)>,
    online: &dyn Fn(SessionKey) -> bool,
) {
    let mut stack: WalkStack<Visit<'_>, INLINE_VISITS> = WalkStack::with(Visit {
        node: root,
        rest: Some(topic),
        dollar_root: topic.starts_with('$'),
    });
    while let Some(Visit {
        node,
        rest,
        dollar_root,
    }) = stack.pop()
    {
        if !dollar_root && node.has_hash {
            if let Some(hash) = node.children.get("#") {
                hash.emit(out, online);
            }
        }
        let Some(rest) = rest else {
            node.emit(out, online);
            continue;
        };
        let (first, next) = match rest.split_once('/') {
            Some((first, next)) => (first, Some(next)),
            None => (rest, None),
        };
        if let Some(child) = node.children.get(first) {
            stack.push(Visit {
                node: child,
                rest: next,
                dollar_root: false,
            });
        }
        if !dollar_root && node.has_plus {
            if let Some(plus) = node.children.get("+") {
                stack.push(Visit {
                    node: plus,
                    rest: next,
                    dollar_root: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::walk::on_small_stack;

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

    #[test]
    fn deepest_filters_insert_match_remove_and_drop_on_a_small_stack() {
        on_small_stack(|| {
            let deep = "a/".repeat(100_000) + "a";
            let slashes = "/".repeat(100_000);
            let plus_hash = "+/".repeat(100_000) + "#";
            let mut t = SubscriptionTrie::default();
            t.insert(&deep, None, 1, opts());
            t.insert(&slashes, None, 2, opts());
            t.insert(&plus_hash, None, 3, opts());
            t.insert(&deep, Some("g"), 4, opts());
            assert_eq!(t.node_count(), 3 * 100_001);
            let mut out = Vec::new();
            t.matches(&deep, &mut out, &|_| true);
            let mut k: Vec<SessionKey> = out.iter().map(|(k, _)| *k).collect();
            k.sort();
            assert_eq!(k, vec![1, 3, 4]);
            assert_eq!(keys(&mut t, &slashes), vec![2, 3]);
            assert_eq!(keys(&mut t, &format!("{slashes}/")), vec![3]);
            assert_eq!(keys(&mut t, "a/a"), Vec::<SessionKey>::new());
            let share = SharedRef {
                group: "g".into(),
                filter: deep.as_str().into(),
            };
            assert_eq!(t.pick_shared(&share, &|_| true).map(|(k, _)| k), Some(4));

            assert!(t.remove(&deep, None, 1));
            assert_eq!(
                t.node_count(),
                3 * 100_001,
                "the shared group keeps the path"
            );
            assert!(t.remove(&deep, Some("g"), 4));
            assert_eq!(t.node_count(), 2 * 100_001);
            assert!(t.remove(&slashes, None, 2));
            assert!(t.remove(&plus_hash, None, 3));
            assert_eq!(t.node_count(), 0);

            // Dropping a trie that still holds deep filters.
            t.insert(&deep, None, 1, opts());
            t.insert(&slashes, None, 2, opts());
            drop(t);
        });
    }

    #[test]
    fn matching_keeps_pending_branches_beyond_the_inline_stack() {
        // `+/+/.../a` at every depth: walking `a/a/.../a` defers a literal branch at
        // each of 40 levels while it follows the `+` chain.
        let mut filters: Vec<String> = (0..40).map(|k| "+/".repeat(k) + "a").collect();
        filters.push("+/".repeat(40) + "+");
        filters.push("a/".repeat(40) + "a");
        let mut t = SubscriptionTrie::default();
        for (i, f) in filters.iter().enumerate() {
            t.insert(f, None, i as SessionKey, opts());
        }
        for topic in [
            "a/".repeat(40) + "a",
            "a/".repeat(10) + "a",
            "a".to_string(),
        ] {
            let expected: Vec<SessionKey> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| crate::topic::matches(f, &topic))
                .map(|(i, _)| i as SessionKey)
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(keys(&mut t, &topic), expected, "{topic}");
        }
    }

    /// Nodes a trie holding exactly `filters` must have: one per distinct prefix.
    fn distinct_prefixes<'a>(filters: impl Iterator<Item = &'a String>) -> usize {
        let mut prefixes = std::collections::HashSet::new();
        for f in filters {
            for (i, _) in f.match_indices('/') {
                prefixes.insert(&f[..i]);
            }
            prefixes.insert(f.as_str());
        }
        prefixes.len()
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
                (prop::collection::vec(filter_level(), 1..12), any::<bool>()),
                1..12,
            ),
            topics in prop::collection::vec(prop::collection::vec(level(), 1..13), 1..12),
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
            prop_assert_eq!(t.node_count(), distinct_prefixes(filters.iter()));
            // Odd keys first, then even ones: removal must prune exactly the nodes no
            // remaining filter uses, wherever the remaining ones branch off.
            let order: Vec<usize> = (0..filters.len())
                .filter(|i| i % 2 == 1)
                .chain((0..filters.len()).filter(|i| i % 2 == 0))
                .collect();
            for (n, &i) in order.iter().enumerate() {
                prop_assert!(t.remove(&filters[i], None, i as SessionKey));
                prop_assert!(!t.remove(&filters[i], None, i as SessionKey));
                let remaining = order[n + 1..].iter().map(|&j| &filters[j]);
                prop_assert_eq!(t.node_count(), distinct_prefixes(remaining));
            }
            prop_assert_eq!(t.node_count(), 0);
        }
    }
}
