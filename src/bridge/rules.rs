//! Topic rules of a bridge, with mosquitto's `topic pattern dir qos local-prefix
//! remote-prefix` semantics: the pattern is applied after the prefix, so a rule
//! subscribes to `local_prefix + pattern` locally (out) or `remote_prefix + pattern`
//! remotely (in), and a topic keeps its suffix after the prefix while the prefix is
//! swapped. An empty pattern makes each prefix a whole topic (mosquitto's `topic ""`).
//! Pure functions only: no I/O, no broker, so they are tested exhaustively here.

use super::config::{Direction, TopicRuleConfig};
use crate::topic::matches;

/// One rule ready to map topics (validated by `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Position in `[[bridge.topic]]`, for logs and `bridge test`.
    pub index: usize,
    /// Which way messages travel.
    pub direction: Direction,
    /// Highest QoS used on the far side (and requested on subscriptions).
    pub qos: u8,
    /// Keep the RETAIN flag of forwarded messages.
    pub retain: bool,
    /// Local topic = `local_prefix` + suffix.
    pub local_prefix: String,
    /// Remote topic = `remote_prefix` + the same suffix.
    pub remote_prefix: String,
    /// Filter the suffix must match (empty: the prefixes are whole topics).
    pub pattern: String,
}

impl Rule {
    /// The rule for `[[bridge.topic]]` number `index`.
    pub fn from_config(index: usize, c: &TopicRuleConfig) -> Rule {
        Rule {
            index,
            direction: c.direction,
            qos: c.qos,
            retain: c.retain,
            local_prefix: c.local_prefix.clone(),
            remote_prefix: c.remote_prefix.clone(),
            pattern: c.pattern.clone(),
        }
    }

    /// Whether messages travel from the local broker to the cloud.
    pub fn is_out(&self) -> bool {
        matches!(self.direction, Direction::Out | Direction::Both)
    }

    /// Whether messages travel from the cloud to the local broker.
    pub fn is_in(&self) -> bool {
        matches!(self.direction, Direction::In | Direction::Both)
    }

    /// The local filter: what the bridge subscribes to locally for `out`, and what
    /// `in` messages land on.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The remote filter: what the bridge subscribes to upstream for `in`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The remote topic of local `topic`, if this rule covers it (any direction).
    pub fn local_to_remote(&self, topic: &str) -> Option<String> {
        map(
            topic,
            &self.local_prefix,
            &self.remote_prefix,
            &self.pattern,
        )
    }

    /// The local topic of remote `topic`, if this rule covers it (any direction).
    pub fn remote_to_local(&self, topic: &str) -> Option<String> {
        map(
            topic,
            &self.remote_prefix,
            &self.local_prefix,
            &self.pattern,
        )
    }
}

fn map(topic: &str, from_prefix: &str, to_prefix: &str, pattern: &str) -> Option<String> {
    let suffix = topic.strip_prefix(from_prefix)?;
    let covered = if pattern.is_empty() {
        suffix.is_empty()
    } else {
        covers(from_prefix, pattern, topic, suffix)
    };
    covered.then(|| {
        let mut mapped = String::with_capacity(to_prefix.len() + suffix.len());
        mapped.push_str(to_prefix);
        mapped.push_str(suffix);
        mapped
    })
}

/// Whether filter `prefix + pattern` matches `topic` (= `prefix + suffix`), without
/// building the filter for every message. A prefix holds no wildcards (`config`), so
/// when it is empty or ends a level its levels are the topic's own, and what is left
/// is the pattern against the suffix; there the `$` rule does not apply (it concerns
/// the first level only, which the prefix holds). Other prefixes (a level continued
/// by the pattern) take the general path.
fn covers(prefix: &str, pattern: &str, topic: &str, suffix: &str) -> bool {
    if prefix.is_empty() {
        matches(pattern, topic)
    } else if prefix.ends_with('/') {
        crate::topic::levels_match(pattern, suffix)
    } else {
        matches(&format!("{prefix}{pattern}"), topic)
    }
}

/// The first `out` rule covering local `topic` and the remote topic it maps to.
pub fn route_out<'a>(rules: &'a [Rule], topic: &str) -> Option<(&'a Rule, String)> {
    rules
        .iter()
        .filter(|r| r.is_out())
        .find_map(|r| r.local_to_remote(topic).map(|remote| (r, remote)))
}

/// The first `in` rule covering remote `topic` and the local topic it maps to.
pub fn route_in<'a>(rules: &'a [Rule], topic: &str) -> Option<(&'a Rule, String)> {
    rules
        .iter()
        .filter(|r| r.is_in())
        .find_map(|r| r.remote_to_local(topic).map(|local| (r, local)))
}

/// Whether some topic matches both filters `a` and `b` (valid plain filters). A
/// leading wildcard never matches a `$` level, as in [`matches`].
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let mut left = a.split('/');
    let mut right = b.split('/');
    let mut first = true;
    loop {
        let (l, r) = (left.next(), right.next());
        let at_start = std::mem::replace(&mut first, false);
        if at_start {
            let dollar = |x: Option<&str>| x.is_some_and(|x| x.starts_with('$'));
            let wild = |x: Option<&str>| matches!(x, Some("+") | Some("#"));
            if (wild(l) && dollar(r)) || (wild(r) && dollar(l)) {
                return false;
            }
        }
        match (l, r) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(direction: Direction, pattern: &str, local: &str, remote: &str) -> Rule {
        Rule {
            index: 0,
            direction,
            qos: 1,
            retain: true,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
            pattern: pattern.into(),
        }
    }

    #[test]
    fn out_swaps_the_local_prefix_for_the_remote_one() {
        let r = rule(Direction::Out, "sensors/#", "", "site/gw1/");
        assert_eq!(r.local_filter(), "sensors/#");
        assert_eq!(r.remote_filter(), "site/gw1/sensors/#");
        assert_eq!(
            r.local_to_remote("sensors/t1/temp").as_deref(),
            Some("site/gw1/sensors/t1/temp")
        );
        assert_eq!(r.local_to_remote("other/t1"), None);
        let r = rule(Direction::Out, "+/temp", "plant/", "cloud/gw/");
        assert_eq!(
            r.local_to_remote("plant/a/temp").as_deref(),
            Some("cloud/gw/a/temp")
        );
        assert_eq!(r.local_to_remote("plant/a/b/temp"), None);
        assert_eq!(r.local_to_remote("plantx/a/temp"), None);
    }

    #[test]
    fn in_swaps_the_remote_prefix_for_the_local_one() {
        let r = rule(Direction::In, "cmd/#", "local/", "site/gw1/");
        assert_eq!(
            r.remote_to_local("site/gw1/cmd/reboot").as_deref(),
            Some("local/cmd/reboot")
        );
        assert_eq!(r.remote_to_local("site/gw2/cmd/reboot"), None);
    }

    #[test]
    fn an_empty_pattern_maps_whole_topics() {
        let r = rule(Direction::Both, "", "local/alarm", "site/gw1/alarm");
        assert_eq!(r.local_filter(), "local/alarm");
        assert_eq!(
            r.local_to_remote("local/alarm").as_deref(),
            Some("site/gw1/alarm")
        );
        assert_eq!(r.local_to_remote("local/alarm/x"), None);
        assert_eq!(
            r.remote_to_local("site/gw1/alarm").as_deref(),
            Some("local/alarm")
        );
    }

    #[test]
    fn routing_takes_the_first_rule_of_the_right_direction() {
        let rules = vec![
            rule(Direction::In, "#", "", "in/"),
            Rule {
                index: 1,
                ..rule(Direction::Out, "a/#", "", "first/")
            },
            Rule {
                index: 2,
                ..rule(Direction::Both, "#", "", "second/")
            },
        ];
        let (r, remote) = route_out(&rules, "a/b").expect("covered");
        assert_eq!((r.index, remote.as_str()), (1, "first/a/b"));
        let (r, remote) = route_out(&rules, "c").expect("covered");
        assert_eq!((r.index, remote.as_str()), (2, "second/c"));
        let (r, local) = route_in(&rules, "in/x").expect("covered");
        assert_eq!((r.index, local.as_str()), (0, "x"));
        assert!(route_in(&rules, "nowhere/x").is_none());
    }

    #[test]
    fn leading_wildcards_do_not_reach_dollar_topics() {
        let r = rule(Direction::Out, "#", "", "up/");
        assert_eq!(r.local_to_remote("$SYS/broker/uptime"), None);
        assert!(!filters_overlap("#", "$SYS/#"));
        assert!(!filters_overlap("+/x", "$SYS/x"));
        assert!(filters_overlap("$SYS/#", "$SYS/+/uptime"));
    }

    #[test]
    fn overlap_is_symmetric_and_level_exact() {
        for (a, b, want) in [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "+/b/#", true),
            ("a/b", "a/c", false),
            ("#", "x/y", true),
            ("cmd/#", "sensors/#", false),
        ] {
            assert_eq!(filters_overlap(a, b), want, "{a} vs {b}");
            assert_eq!(filters_overlap(b, a), want, "{b} vs {a}");
        }
    }

    fn level() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,4}"
    }

    fn prefix() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 0..3).prop_map(|levels| {
            levels
                .into_iter()
                .map(|l| format!("{l}/"))
                .collect::<String>()
        })
    }

    proptest! {
        /// local → remote → local is the identity for every topic a `both` rule covers,
        /// and the remote topic is covered by the remote filter.
        #[test]
        fn local_remote_local_round_trips(
            local in prefix(),
            remote in prefix(),
            levels in prop::collection::vec(level(), 1..5),
            wild in 0usize..3,
        ) {
            let topic_suffix = levels.join("/");
            // A pattern that covers the suffix: literal, `+` in the first level, or `#`.
            let pattern = match wild {
                0 => topic_suffix.clone(),
                1 => std::iter::once("+".to_string())
                    .chain(levels.iter().skip(1).cloned())
                    .collect::<Vec<_>>()
                    .join("/"),
                _ => "#".to_string(),
            };
            let r = rule(Direction::Both, &pattern, &local, &remote);
            let topic = format!("{local}{topic_suffix}");
            let up = r.local_to_remote(&topic).expect("the rule covers its own topic");
            prop_assert_eq!(&up, &format!("{remote}{topic_suffix}"));
            prop_assert!(matches(&r.remote_filter(), &up));
            prop_assert_eq!(r.remote_to_local(&up), Some(topic.clone()));
        }

        /// The rule's match without building `prefix + pattern` per message agrees with
        /// matching that filter: prefixes ending a level or not, wildcards anywhere,
        /// empty levels and `$` levels in the topic.
        #[test]
        fn covering_without_the_joined_filter_agrees_with_matching_it(
            prefix_levels in prop::collection::vec("[ab$]{0,2}", 0..3),
            ends_level in any::<bool>(),
            pattern_levels in prop::collection::vec("[ab+#$]{0,1}", 1..4),
            topic_levels in prop::collection::vec("[ab$]{0,2}", 0..4),
        ) {
            let mut prefix = prefix_levels.join("/");
            if ends_level && !prefix.is_empty() {
                prefix.push('/');
            }
            let pattern = pattern_levels.join("/");
            let topic = format!("{prefix}{}", topic_levels.join("/"));
            let suffix = &topic[prefix.len()..];
            prop_assert_eq!(
                covers(&prefix, &pattern, &topic, suffix),
                matches(&format!("{prefix}{pattern}"), &topic),
                "prefix {:?} pattern {:?} topic {:?}", prefix, pattern, topic
            );
        }

        /// A topic outside the local prefix never maps.
        #[test]
        fn topics_outside_the_prefix_never_map(
            local in prefix().prop_filter("non-empty", |p| !p.is_empty()),
            other in level(),
        ) {
            let r = rule(Direction::Out, "#", &local, "up/");
            let topic = format!("zz{other}/x");
            prop_assume!(!topic.starts_with(&local));
            prop_assert_eq!(r.local_to_remote(&topic), None);
        }

        /// Overlap agrees with matching: a topic matched by both filters means overlap.
        #[test]
        fn overlap_agrees_with_a_common_topic(
            levels in prop::collection::vec("[ab]", 1..4),
            mask_a in 0u8..16,
            mask_b in 0u8..16,
        ) {
            let topic = levels.join("/");
            let filter = |mask: u8| levels
                .iter()
                .enumerate()
                .map(|(i, l)| if mask & (1 << i) != 0 { "+".to_string() } else { l.clone() })
                .collect::<Vec<_>>()
                .join("/");
            let (a, b) = (filter(mask_a), filter(mask_b));
            prop_assert!(matches(&a, &topic) && matches(&b, &topic));
            prop_assert!(filters_overlap(&a, &b));
        }
    }
}
