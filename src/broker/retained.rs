//! Retained message store: a topic-level tree holding the last retained message per
//! topic, matched against subscription filters in O(matching topics) rather than by
//! scanning every retained message. It owns only live retained messages: clearing
//! one prunes its branch, so nothing is kept for topics that no longer retain.
//! Its depth is the publisher's topic depth, so no walk here (insert, remove,
//! matching, drop) recurses.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::link::Message;
use crate::topic::walk::WalkStack;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// Drops the subtree node by node from an explicit stack: the derived drop would
/// recurse once per level of the deepest topic.
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

/// The retained store.
#[derive(Default)]
pub(crate) struct RetainedStore {
    root: Node,
    count: usize,
}

impl RetainedStore {
    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Store `message` as the retained message of `topic` (replacing any).
    pub fn insert(&mut self, topic: &str, message: Arc<Message>) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
    }

    /// Clear the retained message of `topic` and prune the emptied branch. Two
    /// walks down, no recursion: the first finds the message and the deepest node on
    /// the path that must stay (`keep`); when the message's node empties, every node
    /// below `keep` on the path held only the path, and the second walk cuts that
    /// chain off at `keep`.
    pub fn remove(&mut self, topic: &str) -> bool {
        let mut node = &mut self.root;
        let mut keep = 0;
        for (at, level) in topic.split('/').enumerate() {
            if node.children.len() > 1 || node.message.is_some() {
                keep = at;
            }
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            node = child;
        }
        if node.message.take().is_none() {
            return false;
        }
        self.count -= 1;
        if node.children.is_empty() {
            let mut levels = topic.split('/');
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
        }
        true
    }

    /// Every retained message whose topic matches `filter` (MQTT rules: leading
    /// wildcards never match `$` topics).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let mut stack: WalkStack<Visit<'_>, INLINE_VISITS> = WalkStack::with(Visit::Match {
            node: &self.root,
            rest: Some(filter),
            at_root: true,
        });
        while let Some(visit) = stack.pop() {
            match visit {
                Visit::Match {
                    node,
                    rest,
                    at_root,
                } => {
                    let Some(rest) = rest else {
                        out.extend(node.message.iter().cloned());
                        continue;
                    };
                    let (first, next) = match rest.split_once('/') {
                        Some((first, next)) => (first, Some(next)),
                        None => (rest, None),
                    };
                    match first {
                        "#" => {
                            // "a/#" also matches "a" itself.
                            if !at_root {
                                out.extend(node.message.iter().cloned());
                            }
                            stack.push(Visit::Everything {
                                node,
                                skip_dollar: at_root,
                            });
                        }
                        "+" => {
                            for (name, child) in &node.children {
                                if at_root && name.starts_with('$') {
                                    continue;
                                }
                                stack.push(Visit::Match {
                                    node: child,
                                    rest: next,
                                    at_root: false,
                                });
                            }
                        }
                        literal => {
                            if let Some(child) = node.children.get(literal) {
                                stack.push(Visit::Match {
                                    node: child,
                                    rest: next,
                                    at_root: false,
                                });
                            }
                        }
                    }
                }
                Visit::Everything { node, skip_dollar } => {
                    for (name, child) in &node.children {
                        if skip_dollar && name.starts_with('$') {
                            continue;
                        }
                        out.extend(child.message.iter().cloned());
                        stack.push(Visit::Everything {
                            node: child,
                            skip_dollar: false,
                        });
                    }
                }
            }
        }
    }
}

/// Not derived: a derived `Debug` would recurse once per level.
impl fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("count", &self.count)
            .finish()
    }
}

/// A node still to visit by [`RetainedStore::matching`].
#[derive(Clone, Copy)]
enum Visit<'a> {
    /// Match the filter levels left (`None` once all are consumed) below `node`.
    Match {
        node: &'a Node,
        rest: Option<&'a str>,
        at_root: bool,
    },
    /// Everything below `node` (a `#`); leading wildcards never match `$` topics.
    Everything { node: &'a Node, skip_dollar: bool },
}

/// Pending visits held without allocating; a `+` or `#` over a wide level spills.
const INLINE_VISITS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::QoS;
    use crate::topic::walk::on_small_stack;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            publisher: None,
            origin: None,
        })
    }

    fn topics_matching(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic_str().to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut s = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/b"] {
            s.insert(t, msg(t));
        }
        assert_eq!(topics_matching(&s, "#"), vec!["a", "a/b", "a/b/c", "b/b"]);
        assert_eq!(topics_matching(&s, "a/#"), vec!["a", "a/b", "a/b/c"]);
        assert_eq!(topics_matching(&s, "+/b"), vec!["a/b", "b/b"]);
        assert_eq!(topics_matching(&s, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(topics_matching(&s, "+/x"), Vec::<String>::new());
    }

    #[test]
    fn deepest_topics_insert_match_clear_and_drop_on_a_small_stack() {
        on_small_stack(|| {
            let deep = "a/".repeat(100_000) + "a";
            let slashes = "/".repeat(100_000);
            let mid = "a/".repeat(50_000) + "a";
            let mut s = RetainedStore::default();
            for t in [&deep, &slashes, &mid] {
                s.insert(t, msg(t));
            }
            assert_eq!(s.len(), 3);
            assert_eq!(topics_matching(&s, "#").len(), 3);
            assert_eq!(topics_matching(&s, "a/#").len(), 2);
            assert_eq!(topics_matching(&s, &deep), vec![deep.clone()]);
            assert_eq!(
                topics_matching(&s, &("+/".repeat(100_000) + "+")),
                vec![slashes.clone(), deep.clone()]
            );
            assert_eq!(topics_matching(&s, &("+/".repeat(50_000) + "#")).len(), 3);
            assert_eq!(topics_matching(&s, &("a/".repeat(50_000) + "#")).len(), 2);

            assert!(s.remove(&mid));
            assert!(!s.remove(&mid));
            assert_eq!(topics_matching(&s, "a/#"), vec![deep.clone()]);
            assert!(s.remove(&deep));
            assert!(s.remove(&slashes));
            assert_eq!(s.len(), 0);
            assert!(s.root.children.is_empty());

            // Dropping a store that still holds deep topics.
            s.insert(&deep, msg(&deep));
            s.insert(&slashes, msg(&slashes));
            drop(s);
        });
    }

    /// Nodes below the root, counted with a loop.
    fn nodes(s: &RetainedStore) -> usize {
        let mut stack = vec![&s.root];
        let mut count = 0;
        while let Some(node) = stack.pop() {
            count += node.children.len();
            stack.extend(node.children.values());
        }
        count
    }

    /// Nodes a store holding exactly `topics` must have: one per distinct prefix.
    fn distinct_prefixes<'a>(topics: impl Iterator<Item = &'a String>) -> usize {
        let mut prefixes = std::collections::HashSet::new();
        for t in topics {
            for (i, _) in t.match_indices('/') {
                prefixes.insert(&t[..i]);
            }
            prefixes.insert(t.as_str());
        }
        prefixes.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x"]).prop_map(str::to_string)
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x", "+"]).prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn store_agrees_with_topic_matches_and_prunes(
            topics in prop::collection::vec(prop::collection::vec(level(), 1..12), 1..16),
            filters in prop::collection::vec((prop::collection::vec(filter_level(), 0..12), any::<bool>()), 1..8),
        ) {
            let topics: Vec<String> = topics.into_iter().map(|l| l.join("/")).collect();
            let mut s = RetainedStore::default();
            for t in &topics {
                s.insert(t, msg(t));
            }
            let mut unique = topics.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(s.len(), unique.len());
            for (levels, hash) in filters {
                let mut f = levels.join("/");
                if hash {
                    if !f.is_empty() || !levels.is_empty() { f.push('/'); }
                    f.push('#');
                }
                if f.is_empty() {
                    continue;
                }
                let expected: Vec<String> = unique
                    .iter()
                    .filter(|t| crate::topic::matches(&f, t))
                    .cloned()
                    .collect();
                prop_assert_eq!(topics_matching(&s, &f), expected, "filter {:?}", f);
            }
            // Odd positions first: clearing must keep every branch another topic uses.
            let order: Vec<&String> = unique.iter().skip(1).step_by(2)
                .chain(unique.iter().step_by(2))
                .collect();
            for (n, t) in order.iter().enumerate() {
                prop_assert!(s.remove(t));
                prop_assert!(!s.remove(t));
                prop_assert_eq!(nodes(&s), distinct_prefixes(order[n + 1..].iter().copied()));
                for left in &order[n + 1..] {
                    prop_assert_eq!(topics_matching(&s, left), vec![left.to_string()]);
                }
            }
            prop_assert_eq!(s.len(), 0);
            prop_assert!(s.root.children.is_empty());
        }
    }
}
