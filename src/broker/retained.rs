//! Retained message store: a topic-level tree holding the last retained message per
//! topic, matched against subscription filters in O(matching topics) rather than by
//! scanning every retained message. It owns only live retained messages: clearing
//! one prunes its branch, so nothing is kept for topics that no longer retain.

use std::collections::HashMap;
use std::sync::Arc;

use super::router::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// The retained store.
#[derive(Debug, Default)]
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

    /// Clear the retained message of `topic` and prune the emptied branch.
    pub fn remove(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = remove_rec(&mut self.root, &levels);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Every retained message whose topic matches `filter` (MQTT rules: leading
    /// wildcards never match `$` topics).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&self.root, &levels, true, out);
    }
}

fn remove_rec(node: &mut Node, levels: &[&str]) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.message.take().is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_rec(child, rest);
    if child.message.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn collect(node: &Node, levels: &[&str], at_root: bool, out: &mut Vec<Arc<Message>>) {
    let Some((first, rest)) = levels.split_first() else {
        if let Some(m) = &node.message {
            out.push(m.clone());
        }
        return;
    };
    match *first {
        "#" => {
            // "a/#" also matches "a" itself.
            if !at_root {
                if let Some(m) = &node.message {
                    out.push(m.clone());
                }
            }
            collect_all(node, at_root, out);
        }
        "+" => {
            for (name, child) in &node.children {
                if at_root && name.starts_with('$') {
                    continue;
                }
                collect(child, rest, false, out);
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                collect(child, rest, false, out);
            }
        }
    }
}

fn collect_all(node: &Node, skip_dollar: bool, out: &mut Vec<Arc<Message>>) {
    for (name, child) in &node.children {
        if skip_dollar && name.starts_with('$') {
            continue;
        }
        if let Some(m) = &child.message {
            out.push(m.clone());
        }
        collect_all(child, false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::QoS;
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

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x"]).prop_map(str::to_string)
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x", "+"]).prop_map(str::to_string)
    }

    proptest! {
        #[test]
        fn store_agrees_with_topic_matches_and_prunes(
            topics in prop::collection::vec(prop::collection::vec(level(), 1..4), 1..16),
            filters in prop::collection::vec((prop::collection::vec(filter_level(), 0..4), any::<bool>()), 1..8),
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
            for t in &unique {
                prop_assert!(s.remove(t));
            }
            prop_assert_eq!(s.len(), 0);
            prop_assert!(s.root.children.is_empty());
        }
    }
}
