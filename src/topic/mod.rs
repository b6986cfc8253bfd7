//! Topic names and filters: validation, wildcard matching, filter-within-filter
//! coverage (for ACL subscribe checks) and shared-subscription parsing.
//!
//! This module owns the MQTT topic rules (MQTT 3.1.1 §4.7, MQTT 5 §4.7 and §4.8.2)
//! and nothing else: it never allocates on the matching path, never panics on any
//! input, and never decides authorization (that is `acl`'s job, built on
//! [`filter_covers`] and [`matches()`]).
//!
//! Strings are checked like Mosquitto does: valid UTF-8, no U+0000, and none of the
//! code points MQTT 5 §1.5.4 says SHOULD NOT appear (C0/C1 control characters and
//! Unicode non-characters), so a topic accepted here is accepted by every peer.

pub(crate) mod walk;

/// Longest topic name or filter MQTT can carry (a two-byte length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription filter (`$share/<group>/<filter>`).
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name, topic filter or shared-subscription filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum TopicError {
    /// Zero-length topic name or filter.
    #[error("topic is empty; a topic name or filter needs at least one character")]
    Empty,
    /// Longer than the protocol's two-byte length prefix allows.
    #[error("topic is {len} bytes long; MQTT allows at most 65535 bytes")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// Bytes that are not UTF-8.
    #[error("topic is not valid UTF-8 (first invalid byte at offset {offset}); MQTT topics must be UTF-8")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The NUL character, which MQTT forbids in every string.
    #[error("topic contains the NUL character U+0000 at byte {offset}, which MQTT forbids")]
    Nul {
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// A control character or Unicode non-character (MQTT 5 §1.5.4).
    #[error("topic contains the disallowed code point U+{code_point:04X} at byte {offset} (control character or non-character)")]
    DisallowedCodePoint {
        /// The offending code point.
        code_point: u32,
        /// Byte offset where it starts.
        offset: usize,
    },
    /// `+` or `#` in a topic name (only filters may contain wildcards).
    #[error("topic name `{0}` contains a wildcard (`+` or `#`); wildcards are only allowed in subscription filters")]
    WildcardInName(String),
    /// `#` not standing alone as the last level.
    #[error("topic filter `{0}`: `#` must be the whole last level (like `a/#` or `#`)")]
    MisplacedMultiLevelWildcard(String),
    /// `+` sharing a level with other characters.
    #[error("topic filter `{0}`: `+` must be a whole level (like `a/+/b`)")]
    MisplacedSingleLevelWildcard(String),
    /// `$share/...` without a group name or without a filter.
    #[error("shared subscription `{0}` is malformed; expected `$share/<group>/<filter>` with a non-empty group and filter")]
    SharedMalformed(String),
    /// Share name containing `+` or `#`.
    #[error("shared subscription `{0}`: the group name must not contain `+` or `#`")]
    SharedGroupInvalid(String),
    /// More levels than the broker accepts (each level costs a trie node).
    #[error(
        "topic has {levels} levels; this broker allows at most {max} (broker.max_topic_levels)"
    )]
    TooManyLevels {
        /// Levels in the topic (`/` separators + 1).
        levels: usize,
        /// The configured limit.
        max: usize,
    },
}

/// A parsed `$share/<group>/<filter>` subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name: members of the same group share the messages.
    pub group: &'a str,
    /// The topic filter the group subscribes to (validated).
    pub filter: &'a str,
}

/// Number of levels of a topic name or filter: its `/` separators + 1 (`""` and
/// `"a"` have one level, `"/"` has two). A byte scan; allocation-free.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Refuses a topic name or filter with more than `max` levels ([`level_count`]).
/// Pass the inner filter of a `$share/<group>/<filter>` (see [`parse_shared`]).
pub fn check_levels(topic: &str, max: usize) -> Result<(), TopicError> {
    let levels = level_count(topic);
    if levels > max {
        return Err(TopicError::TooManyLevels { levels, max });
    }
    Ok(())
}

/// Checks a topic name (as used in PUBLISH): non-empty, at most 65535 bytes, no
/// wildcards, no NUL and no disallowed code points.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_string(topic)?;
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName(topic.to_owned()));
    }
    Ok(())
}

/// Checks a topic filter (as used in SUBSCRIBE/UNSUBSCRIBE): non-empty, at most
/// 65535 bytes, no NUL or disallowed code points, `+` only as whole levels, `#`
/// only as the whole last level, and `$share/<group>/<filter>` well formed.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.starts_with(SHARED_PREFIX) {
        return parse_shared(filter).map(|_| ());
    }
    validate_plain_filter(filter)
}

/// Validates a filter that is not (or no longer) wrapped in `$share/<group>/`.
fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    check_string(filter)?;
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard(filter.to_owned()));
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard(filter.to_owned()));
        }
    }
    Ok(())
}

/// Turns raw topic bytes from the wire into a `&str`, refusing invalid UTF-8, NUL,
/// overlong topics and the code points MQTT 5 §1.5.4 names. Does not check
/// wildcards (use [`validate_topic_name`] / [`validate_topic_filter`] for that).
pub fn topic_from_bytes(raw: &[u8]) -> Result<&str, TopicError> {
    let s = std::str::from_utf8(raw).map_err(|e| TopicError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    check_string(s)?;
    Ok(s)
}

/// Length and code point checks shared by names and filters.
fn check_string(s: &str) -> Result<(), TopicError> {
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    check_code_points(s)
}

/// Refuses U+0000, C0/C1 control characters and Unicode non-characters, like
/// Mosquitto's `mosquitto_validate_utf8` (MQTT 5 §1.5.4).
pub(crate) fn check_code_points(s: &str) -> Result<(), TopicError> {
    // Fast path: printable ASCII is by far the common case.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    for (offset, c) in s.char_indices() {
        let cp = c as u32;
        if cp == 0 {
            return Err(TopicError::Nul { offset });
        }
        let control = cp < 0x20 || (0x7f..=0x9f).contains(&cp);
        let non_character = (0xfdd0..=0xfdef).contains(&cp) || (cp & 0xfffe) == 0xfffe;
        if control || non_character {
            return Err(TopicError::DisallowedCodePoint {
                code_point: cp,
                offset,
            });
        }
    }
    Ok(())
}

/// Whether `filter` matches the topic name `topic` under MQTT rules: `+` matches
/// exactly one level (possibly empty), `#` matches the parent level and any number
/// of levels below it, and a filter starting with a wildcard never matches a topic
/// starting with `$` (MQTT 4.7.2). `filter` must be valid ([`validate_topic_filter`],
/// done at SUBSCRIBE); `$share/` filters must be unwrapped with [`parse_shared`]
/// first, they are treated literally here. Allocation-free.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    levels_match(filter, topic)
}

/// [`matches`] level by level, without its `$` rule: for a filter and topic that are
/// the rest of a longer pair whose first levels already matched (the bridge's prefix
/// mapping).
pub fn levels_match(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some(f), Some(t)) => {
                if f != "+" && f != t {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by filter `inner` is also matched by filter `outer`
/// (used to grant a SUBSCRIBE only inside a read grant): `sensors/#` covers
/// `sensors/+/temp`, `+/x` does not cover `#`, `#` does not cover `$SYS/#`.
/// Both arguments must be valid plain filters (no `$share/`); anything invalid is
/// answered with `false`, so an ACL built on this fails closed.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    if validate_plain_filter(outer).is_err() || validate_plain_filter(inner).is_err() {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    let mut first = true;
    loop {
        let (o, i) = (outer_levels.next(), inner_levels.next());
        // A leading wildcard in `outer` never matches `$` topics, which a literal
        // `$...` first level in `inner` can match.
        if first && matches!(o, Some("+") | Some("#")) && i.is_some_and(|i| i.starts_with('$')) {
            return false;
        }
        let at_start = std::mem::replace(&mut first, false);
        match (o, i) {
            (Some("#"), _) => return true,
            (Some("+"), Some(i)) => {
                if i == "#" {
                    // A whole topic has at least one level, so a leading `+/#` is `#`;
                    // deeper down `a/#` also matches `a`, which `a/+/#` does not.
                    return at_start && outer_levels.next() == Some("#");
                }
            }
            (Some(o), Some(i)) => {
                if o != i || i == "+" || i == "#" {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits `$share/<group>/<filter>` into its group and filter. Returns `Ok(None)`
/// for filters that are not shared subscriptions, and an error for a shared
/// subscription without a group, without a filter, with `+`/`#` in the group, with
/// an invalid inner filter, or with a nested `$share/`.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    check_string(filter)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::SharedMalformed(filter.to_owned()));
    };
    if group.is_empty() || inner.is_empty() || inner.starts_with(SHARED_PREFIX) {
        return Err(TopicError::SharedMalformed(filter.to_owned()));
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::SharedGroupInvalid(filter.to_owned()));
    }
    validate_plain_filter(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::walk::on_small_stack;
    use super::*;

    #[test]
    fn accepts_plain_topic_names() {
        for t in [
            "a",
            "a/b",
            "/",
            "/a",
            "a/",
            "$SYS/broker/uptime",
            "sport/tennis/player1",
            "ünïcödé/😀",
            "a b",
        ] {
            assert_eq!(validate_topic_name(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn refuses_bad_topic_names() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic_name("a/+"),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(
            validate_topic_name("a/#"),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(
            validate_topic_name("a+b"),
            Err(TopicError::WildcardInName(_))
        ));
        assert_eq!(
            validate_topic_name("a\0b"),
            Err(TopicError::Nul { offset: 1 })
        );
        assert_eq!(
            validate_topic_name("a\u{1}"),
            Err(TopicError::DisallowedCodePoint {
                code_point: 1,
                offset: 1
            })
        );
        assert!(matches!(
            validate_topic_name("a\u{9f}"),
            Err(TopicError::DisallowedCodePoint { .. })
        ));
        assert!(matches!(
            validate_topic_name("a\u{fffe}"),
            Err(TopicError::DisallowedCodePoint { .. })
        ));
        assert!(matches!(
            validate_topic_name("a\u{fdd0}"),
            Err(TopicError::DisallowedCodePoint { .. })
        ));
        let long = "a".repeat(65_536);
        assert_eq!(
            validate_topic_name(&long),
            Err(TopicError::TooLong { len: 65_536 })
        );
        assert_eq!(validate_topic_name(&long[..65_535]), Ok(()));
    }

    #[test]
    fn accepts_valid_filters() {
        for f in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/+",
            "+/",
            "sport/tennis/#",
            "$SYS/#",
            "a//b",
            "$share/g/a/#",
            "$share/g/#",
            "$share",
        ] {
            assert_eq!(validate_topic_filter(f), Ok(()), "{f}");
        }
    }

    #[test]
    fn refuses_misplaced_wildcards() {
        for f in ["a/#/b", "a#", "#/a", "a/b#", "##"] {
            assert!(
                matches!(
                    validate_topic_filter(f),
                    Err(TopicError::MisplacedMultiLevelWildcard(_))
                ),
                "{f}"
            );
        }
        for f in ["a+", "+a/b", "a/b+/c", "++"] {
            assert!(
                matches!(
                    validate_topic_filter(f),
                    Err(TopicError::MisplacedSingleLevelWildcard(_))
                ),
                "{f}"
            );
        }
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_filter("a/\0"),
            Err(TopicError::Nul { offset: 2 })
        );
    }

    #[test]
    fn topic_from_bytes_checks_utf8_and_nul() {
        assert_eq!(topic_from_bytes(b"a/b"), Ok("a/b"));
        assert_eq!(
            topic_from_bytes(b"a\xffb"),
            Err(TopicError::NotUtf8 { offset: 1 })
        );
        // An encoded UTF-16 surrogate (U+D800) is invalid UTF-8.
        assert!(matches!(
            topic_from_bytes(b"\xed\xa0\x80"),
            Err(TopicError::NotUtf8 { .. })
        ));
        // Overlong encoding of NUL ("modified UTF-8") is invalid UTF-8 too.
        assert!(matches!(
            topic_from_bytes(b"\xc0\x80"),
            Err(TopicError::NotUtf8 { .. })
        ));
        assert_eq!(
            topic_from_bytes(b"ab\0"),
            Err(TopicError::Nul { offset: 2 })
        );
        assert_eq!(topic_from_bytes(b""), Ok(""));
    }

    #[test]
    fn matches_spec_examples() {
        // MQTT 3.1.1 §4.7.1.2 and §4.7.1.3.
        let table: &[(&str, &str, bool)] = &[
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+", "sport", true),
            ("+", "/sport", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("A", "a", false),
        ];
        for (filter, topic, expected) in table {
            assert_eq!(matches(filter, topic), *expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        assert!(matches("a/#", "a/$b"));
        assert!(matches("+/$b", "a/$b"));
    }

    #[test]
    fn filter_covers_table() {
        let table: &[(&str, &str, bool)] = &[
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/+/temp", "sensors/a/temp", true),
            ("sensors/+/temp", "sensors/+/temp", true),
            ("sensors/a/temp", "sensors/+/temp", false),
            ("+/x", "#", false),
            ("#", "+/x", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("#", "$SYS/broker", false),
            ("+/#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("$SYS/#", "+/broker", false),
            ("a/+", "a/#", false),
            ("a/#", "a/+", true),
            ("+/+", "a/#", false),
            ("+/#", "#", true),
            ("+/#", "+", true),
            ("+/+/#", "#", false),
            ("+/#", "a/#", true),
            ("a/+/#", "a/#", false),
            ("a/b/+", "a/b/#", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a", "a/b", false),
            ("a/b", "a", false),
            ("+", "+", true),
            ("+", "a", true),
            ("+", "$a", false),
            ("a/#", "a/b/c/d", true),
            // Invalid filters never cover or get covered.
            ("a/#/b", "a/#/b", false),
            ("#", "a+", false),
            ("$share/g/#", "a", false),
        ];
        for (outer, inner, expected) in table {
            assert_eq!(
                filter_covers(outer, inner),
                *expected,
                "{outer} covers {inner}"
            );
        }
    }

    #[test]
    fn level_count_counts_separators_plus_one() {
        assert_eq!(level_count(""), 1);
        assert_eq!(level_count("a"), 1);
        assert_eq!(level_count("/"), 2);
        assert_eq!(level_count("a/b/c"), 3);
        assert_eq!(level_count("a//"), 3);
        assert_eq!(level_count("ü/😀/#"), 3);
        assert_eq!(level_count(&"/".repeat(65_000)), 65_001);
    }

    #[test]
    fn check_levels_refuses_only_above_the_limit() {
        assert_eq!(check_levels("a/b/c", 3), Ok(()));
        assert_eq!(check_levels("a", 1), Ok(()));
        let err = check_levels("a/b/c/d", 3).expect_err("4 levels > 3");
        assert_eq!(err, TopicError::TooManyLevels { levels: 4, max: 3 });
        assert_eq!(
            err.to_string(),
            "topic has 4 levels; this broker allows at most 3 (broker.max_topic_levels)"
        );
        assert_eq!(
            check_levels(&"/".repeat(64), 64),
            Err(TopicError::TooManyLevels {
                levels: 65,
                max: 64
            })
        );
    }

    #[test]
    fn matching_and_validation_handle_the_deepest_topics_on_a_small_stack() {
        let deep_name = "a/".repeat(32_000) + "a";
        let deep_filter = "+/".repeat(32_000) + "#";
        let slashes = "/".repeat(65_000);
        on_small_stack(move || {
            assert_eq!(validate_topic_name(&deep_name), Ok(()));
            assert_eq!(validate_topic_filter(&deep_filter), Ok(()));
            assert_eq!(validate_topic_filter(&slashes), Ok(()));
            assert!(matches(&deep_filter, &deep_name));
            assert!(matches(&slashes, &slashes));
            assert!(filter_covers(&deep_filter, &deep_name));
            assert!(filter_covers("#", &slashes));
            assert!(!filter_covers(&slashes, &deep_filter));
        });
    }

    #[test]
    fn parses_shared_subscriptions() {
        assert_eq!(
            parse_shared("$share/g/a/+/c"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+/c"
            }))
        );
        assert_eq!(
            parse_shared("$share/group1/#"),
            Ok(Some(SharedFilter {
                group: "group1",
                filter: "#"
            }))
        );
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        for bad in [
            "$share/g",
            "$share//f",
            "$share/g/",
            "$share/",
            "$share/g/$share/h/x",
        ] {
            assert!(
                matches!(parse_shared(bad), Err(TopicError::SharedMalformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_shared("$share/g+/a"),
            Err(TopicError::SharedGroupInvalid(_))
        ));
        assert!(matches!(
            parse_shared("$share/#/a"),
            Err(TopicError::SharedGroupInvalid(_))
        ));
        assert!(matches!(
            parse_shared("$share/g/a/#/b"),
            Err(TopicError::MisplacedMultiLevelWildcard(_))
        ));
        assert!(matches!(
            validate_topic_filter("$share/g"),
            Err(TopicError::SharedMalformed(_))
        ));
    }
}
