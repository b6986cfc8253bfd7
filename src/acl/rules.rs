//! The ACL rule model and the mosquitto `acl_file` parser. Owns turning text
//! (files and inline TOML rules) into validated [`Rule`]s; it never decides
//! access itself and never accepts a rule it cannot match exactly.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::AclError;

/// Rules deeper than this are refused: matching recurses once per rule level.
pub const MAX_RULE_LEVELS: usize = 1000;

/// Longest rule filter accepted, in bytes (the MQTT topic limit).
pub const MAX_RULE_LEN: usize = 65_535;

/// The access word of a rule (`read`, `write`, `readwrite`, `deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessSpec {
    /// Receive messages and subscribe.
    Read,
    /// Publish.
    Write,
    /// Both; the mosquitto default when a `topic` line names no access word.
    ReadWrite,
    /// Nothing: matching topics are refused whatever else grants them.
    Deny,
}

impl AccessSpec {
    /// The word as written in an acl_file.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessSpec::Read => "read",
            AccessSpec::Write => "write",
            AccessSpec::ReadWrite => "readwrite",
            AccessSpec::Deny => "deny",
        }
    }

    fn from_word(word: &str) -> Option<AccessSpec> {
        match word {
            "read" => Some(AccessSpec::Read),
            "write" => Some(AccessSpec::Write),
            "readwrite" => Some(AccessSpec::ReadWrite),
            "deny" => Some(AccessSpec::Deny),
            _ => None,
        }
    }

    /// Whether this rule grants reading (and subscribing).
    pub fn grants_read(self) -> bool {
        matches!(self, AccessSpec::Read | AccessSpec::ReadWrite)
    }

    /// Whether this rule grants publishing.
    pub fn grants_write(self) -> bool {
        matches!(self, AccessSpec::Write | AccessSpec::ReadWrite)
    }
}

impl<'de> Deserialize<'de> for AccessSpec {
    /// Through a plain string, so a wrong word gets a message listing the choices
    /// whatever the source (TOML directly, or the `config` crate's values).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        AccessSpec::from_word(&word).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown access `{word}`, expected one of `read`, `write`, `readwrite`, `deny`"
            ))
        })
    }
}

impl fmt::Display for AccessSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule written inline in the config, `[[acl.rule]]`. Same meaning as an
/// acl_file line: no `user` and `pattern = false` means an anonymous rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineRule {
    /// User the rule belongs to; `None` for anonymous rules and patterns.
    #[serde(default)]
    pub user: Option<String>,
    /// A `pattern` rule (`%u`/`%c` substituted, applies to every identity).
    #[serde(default)]
    pub pattern: bool,
    /// What the rule allows or denies (required: inline rules have no implicit readwrite).
    pub access: AccessSpec,
    /// Topic filter, `+`/`#` wildcards allowed.
    pub topic: String,
}

/// The `[acl]` table of the config: a mosquitto acl_file and/or inline rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Path of a mosquitto-syntax acl_file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Inline rules, merged after the file's rules.
    #[serde(default)]
    pub rule: Vec<InlineRule>,
}

impl AclConfig {
    /// Whether any ACL is configured (then anything unlisted is denied).
    pub fn is_configured(&self) -> bool {
        self.file.is_some() || !self.rule.is_empty()
    }
}

/// Where a rule was written, so decisions and errors can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Line (1-based) of an acl_file.
    File { path: Arc<str>, line: usize },
    /// Index (0-based) into `[[acl.rule]]`.
    Inline { index: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::Inline { index } => write!(f, "acl.rule[{index}]"),
        }
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Clients without credentials (rules before any `user` line).
    Anonymous,
    /// One user (certificate identity, CONNECT username or internal name).
    User(String),
    /// Every identity, `%u`/`%c` substituted.
    Pattern,
}

/// Part of a level of a pattern rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplatePart {
    /// Literal text.
    Text(Box<str>),
    /// `%u`: the username.
    User,
    /// `%c`: the client id.
    Client,
}

/// A pattern level containing `%u` and/or `%c` (whole level or inside it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Template {
    /// The level split into literal text and placeholders, in order.
    pub parts: Box<[TemplatePart]>,
}

/// How a template level relates to a concrete level for one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateMatch {
    /// The substituted level differs.
    No,
    /// The substituted level equals it.
    Exact,
    /// A placeholder cannot be filled safely (missing, empty, or containing
    /// `+ # /` or NUL): the level counts as `+`, and only for deny rules.
    DenyWildcard,
}

/// The identity values a template is substituted with; `None` = unfillable.
#[derive(Debug, Clone, Copy)]
pub struct Substitution<'a> {
    /// `%u`, if present and safe.
    pub user: Option<&'a str>,
    /// `%c`, if present and safe.
    pub client: Option<&'a str>,
}

impl Template {
    /// Whether the template's text starts with `$` (may match `$` topics at the first level).
    pub fn starts_with_dollar(&self) -> bool {
        matches!(self.parts.first(), Some(TemplatePart::Text(t)) if t.starts_with('$'))
    }

    /// Compare with a concrete level without allocating.
    pub fn matches(&self, level: &str, subst: &Substitution<'_>) -> TemplateMatch {
        if self.has_unfillable(subst) {
            return TemplateMatch::DenyWildcard;
        }
        let mut rest = level;
        for part in self.parts.iter() {
            let text = match part {
                TemplatePart::Text(t) => &**t,
                TemplatePart::User => subst.user.unwrap_or_default(),
                TemplatePart::Client => subst.client.unwrap_or_default(),
            };
            match rest.strip_prefix(text) {
                Some(r) => rest = r,
                None => return TemplateMatch::No,
            }
        }
        if rest.is_empty() {
            TemplateMatch::Exact
        } else {
            TemplateMatch::No
        }
    }

    fn has_unfillable(&self, subst: &Substitution<'_>) -> bool {
        self.parts.iter().any(|p| match p {
            TemplatePart::Text(_) => false,
            TemplatePart::User => subst.user.is_none(),
            TemplatePart::Client => subst.client.is_none(),
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in self.parts.iter() {
            match part {
                TemplatePart::Text(t) => f.write_str(t)?,
                TemplatePart::User => f.write_str("%u")?,
                TemplatePart::Client => f.write_str("%c")?,
            }
        }
        Ok(())
    }
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleLevel {
    /// Exact text (case-sensitive; may be empty).
    Literal(Box<str>),
    /// `+`: any single level.
    Plus,
    /// `#`: this level and everything below, including the parent itself (last level only).
    Hash,
    /// Pattern level with `%u`/`%c`.
    Template(Template),
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was written.
    pub origin: Origin,
    /// Who it applies to.
    pub scope: Scope,
    /// What it allows or denies.
    pub access: AccessSpec,
    /// The filter as written.
    pub filter: String,
    /// `origin: text`, shown in decisions, audit events and `acl explain`.
    pub label: String,
}

impl Rule {
    fn new(origin: Origin, scope: Scope, access: AccessSpec, filter: String) -> Rule {
        let kind = if scope == Scope::Pattern {
            "pattern"
        } else {
            "topic"
        };
        let label = match &scope {
            Scope::User(user) => format!("{origin}: {kind} {access} {filter} (user {user})"),
            Scope::Anonymous => format!("{origin}: {kind} {access} {filter} (anonymous)"),
            Scope::Pattern => format!("{origin}: {kind} {access} {filter}"),
        };
        Rule {
            origin,
            scope,
            access,
            filter,
            label,
        }
    }

    /// The filter split into levels (parsed again: rules keep only their text
    /// once compiled, so 100,000 rules stay small).
    pub fn levels(&self) -> Vec<RuleLevel> {
        parse_filter(&self.filter, self.scope == Scope::Pattern)
            .expect("invariant: rule filters are validated when loaded")
    }
}

/// One problem found while reading rules: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclProblem {
    /// `file:line` or `acl.rule[N]`.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for AclProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Parsed rules in source order (file lines first, then inline rules) plus warnings.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Every rule; its index is its precedence among equals (first written wins the label).
    pub rules: Vec<Rule>,
    /// `rules[i]` split into levels, consumed when compiling.
    pub levels: Vec<Vec<RuleLevel>>,
    /// Things that load but are probably not what the author meant.
    pub warnings: Vec<String>,
}

/// Split and validate a rule filter. `pattern` enables `%u`/`%c`.
pub fn parse_filter(filter: &str, pattern: bool) -> Result<Vec<RuleLevel>, String> {
    if filter.is_empty() {
        return Err("empty topic; write a topic filter after the access word".into());
    }
    if filter.len() > MAX_RULE_LEN {
        return Err(format!(
            "topic is {} bytes, longer than the MQTT limit of {MAX_RULE_LEN}",
            filter.len()
        ));
    }
    if filter.contains('\0') {
        return Err("topic contains a NUL character".into());
    }
    let count = filter.split('/').count();
    if count > MAX_RULE_LEVELS {
        return Err(format!(
            "topic has {count} levels; at most {MAX_RULE_LEVELS} are supported"
        ));
    }
    let mut levels = Vec::with_capacity(count);
    for (i, level) in filter.split('/').enumerate() {
        let last = i + 1 == count;
        if level == "#" {
            if !last {
                return Err(format!("`#` must be the last level in `{filter}`"));
            }
            levels.push(RuleLevel::Hash);
        } else if level == "+" {
            levels.push(RuleLevel::Plus);
        } else if level.contains('#') || level.contains('+') {
            return Err(format!(
                "wildcard inside level `{level}` of `{filter}`: `+` and `#` must occupy a whole level"
            ));
        } else if pattern && (level.contains("%u") || level.contains("%c")) {
            levels.push(RuleLevel::Template(parse_template(level)));
        } else {
            levels.push(RuleLevel::Literal(level.into()));
        }
    }
    Ok(levels)
}

fn parse_template(level: &str) -> Template {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = level;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("%u") {
            if !text.is_empty() {
                parts.push(TemplatePart::Text(std::mem::take(&mut text).into()));
            }
            parts.push(TemplatePart::User);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("%c") {
            if !text.is_empty() {
                parts.push(TemplatePart::Text(std::mem::take(&mut text).into()));
            }
            parts.push(TemplatePart::Client);
            rest = r;
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                text.push(c);
            }
            rest = chars.as_str();
        }
    }
    if !text.is_empty() {
        parts.push(TemplatePart::Text(text.into()));
    }
    Template {
        parts: parts.into_boxed_slice(),
    }
}

/// Parse mosquitto acl_file text. `source` names the file in locations.
/// Appends rules and warnings; returns every problem found (not just the first).
pub fn parse_acl_text(source: &str, data: &[u8], out: &mut RuleSet) -> Vec<AclProblem> {
    let mut problems = Vec::new();
    let mut user: Option<String> = None;
    let source_name: Arc<str> = Arc::from(source);
    for (index, raw) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        let location = || format!("{source}:{line_no}");
        let line = match std::str::from_utf8(raw) {
            Ok(l) => l,
            Err(_) => {
                problems.push(AclProblem {
                    location: location(),
                    message: "line is not valid UTF-8; save the file as UTF-8".into(),
                });
                continue;
            }
        };
        // Editors on Windows start UTF-8 files with a byte order mark.
        let line = if index == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        let line = line.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_word(line);
        match keyword {
            "user" => {
                if rest.is_empty() {
                    problems.push(AclProblem {
                        location: location(),
                        message: "`user` without a name; write `user <name>`".into(),
                    });
                    // Rules below must not fall into the previous block or the anonymous one.
                    user = Some(String::new());
                } else {
                    user = Some(rest.to_string());
                }
            }
            "topic" | "pattern" => {
                let pattern = keyword == "pattern";
                let (access, filter) = match split_word(rest) {
                    ("", _) => {
                        problems.push(AclProblem {
                            location: location(),
                            message: format!("`{keyword}` without a topic; write `{keyword} [read|write|readwrite|deny] <topic>`"),
                        });
                        continue;
                    }
                    (word, after) => match AccessSpec::from_word(word) {
                        Some(access) => (access, after),
                        None => {
                            if let Some(w) = AccessSpec::from_word(&word.to_ascii_lowercase()) {
                                out.warnings.push(format!(
                                    "{}: `{word}` is not an access word (they are lower case), so this line grants readwrite on the topic `{rest}`; did you mean `{keyword} {w} ...`?",
                                    location()
                                ));
                            }
                            (AccessSpec::ReadWrite, rest)
                        }
                    },
                };
                if filter.is_empty() {
                    problems.push(AclProblem {
                        location: location(),
                        message: format!("`{keyword} {access}` without a topic; write `{keyword} {access} <topic>`"),
                    });
                    continue;
                }
                let levels = match parse_filter(filter, pattern) {
                    Ok(levels) => levels,
                    Err(message) => {
                        problems.push(AclProblem { location: location(), message });
                        continue;
                    }
                };
                if filter.starts_with("$share/") {
                    out.warnings.push(format!(
                        "{}: rules are checked against the filter inside `$share/<group>/`, so this rule matches nothing useful; write the inner filter",
                        location()
                    ));
                }
                let scope = if pattern {
                    if let Some(u) = &user {
                        out.warnings.push(format!(
                            "{}: `pattern` rules apply to every client, not only to user `{u}` above them",
                            location()
                        ));
                    }
                    Scope::Pattern
                } else {
                    if filter.contains("%u") || filter.contains("%c") {
                        out.warnings.push(format!(
                            "{}: `%u`/`%c` are only substituted in `pattern` lines; this `topic` line matches them literally",
                            location()
                        ));
                    }
                    match &user {
                        Some(u) if u.is_empty() => continue,
                        Some(u) => Scope::User(u.clone()),
                        None => Scope::Anonymous,
                    }
                };
                let origin = Origin::File {
                    path: source_name.clone(),
                    line: line_no,
                };
                out.rules.push(Rule::new(origin, scope, access, filter.to_string()));
                out.levels.push(levels);
            }
            other => problems.push(AclProblem {
                location: location(),
                message: format!("unknown keyword `{other}`; lines start with `user`, `topic`, `pattern` or `#` (comment)"),
            }),
        }
    }
    problems
}

/// Validate inline `[[acl.rule]]` entries and append them.
pub fn add_inline_rules(inline: &[InlineRule], out: &mut RuleSet) -> Vec<AclProblem> {
    let mut problems = Vec::new();
    for (index, rule) in inline.iter().enumerate() {
        let origin = Origin::Inline { index };
        let location = origin.to_string();
        let scope = match (&rule.user, rule.pattern) {
            (Some(_), true) => {
                problems.push(AclProblem {
                    location,
                    message: "`pattern = true` rules apply to every identity; remove `user`".into(),
                });
                continue;
            }
            (Some(u), false) if u.is_empty() => {
                problems.push(AclProblem {
                    location,
                    message: "`user` is empty; name the user or remove the key".into(),
                });
                continue;
            }
            (Some(u), false) => Scope::User(u.clone()),
            (None, true) => Scope::Pattern,
            (None, false) => {
                out.warnings.push(format!(
                    "{location}: no `user` and not a pattern, so this rule applies to anonymous clients only"
                ));
                Scope::Anonymous
            }
        };
        match parse_filter(&rule.topic, rule.pattern) {
            Ok(levels) => {
                out.rules
                    .push(Rule::new(origin, scope, rule.access, rule.topic.clone()));
                out.levels.push(levels);
            }
            Err(message) => problems.push(AclProblem { location, message }),
        }
    }
    problems
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

/// Parse a whole rule source into a `RuleSet`, or every problem at once.
pub fn parse_all(file: Option<(&str, &[u8])>, inline: &[InlineRule]) -> Result<RuleSet, AclError> {
    let mut set = RuleSet::default();
    let mut problems = Vec::new();
    if let Some((name, data)) = file {
        problems.extend(parse_acl_text(name, data, &mut set));
    }
    problems.extend(add_inline_rules(inline, &mut set));
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(AclError::Invalid { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RuleSet, Vec<AclProblem>) {
        let mut set = RuleSet::default();
        let problems = parse_acl_text("acl", text.as_bytes(), &mut set);
        (set, problems)
    }

    #[test]
    fn topic_without_access_word_is_readwrite_and_keeps_spaces() {
        let (set, problems) = parse("user bob\ntopic my room/temp \n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(set.rules[0].access, AccessSpec::ReadWrite);
        assert_eq!(set.rules[0].filter, "my room/temp");
        assert_eq!(set.rules[0].scope, Scope::User("bob".into()));
    }

    #[test]
    fn rules_before_any_user_line_are_anonymous() {
        let (set, _) = parse("  topic read public/#\n# c\n\nuser a\ntopic write x\n");
        assert_eq!(set.rules[0].scope, Scope::Anonymous);
        assert_eq!(set.rules[1].scope, Scope::User("a".into()));
        assert_eq!(
            set.rules[0].origin,
            Origin::File {
                path: "acl".into(),
                line: 1
            }
        );
        assert_eq!(
            set.rules[1].origin,
            Origin::File {
                path: "acl".into(),
                line: 5
            }
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let (set, problems) = parse("\u{feff}user a\ntopic read x\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(set.rules[0].scope, Scope::User("a".into()));
    }

    #[test]
    fn user_names_may_contain_spaces() {
        let (set, _) = parse("user line 7 plc\ntopic read a\n");
        assert_eq!(set.rules[0].scope, Scope::User("line 7 plc".into()));
    }

    #[test]
    fn reports_every_bad_line_with_its_number() {
        let (_, problems) =
            parse("user\ntopic read\nfoo bar\ntopic read a/#/b\ntopic read a+/b\ntopic ok\n");
        let lines: Vec<_> = problems.iter().map(|p| p.location.clone()).collect();
        assert_eq!(lines, ["acl:1", "acl:2", "acl:3", "acl:4", "acl:5"]);
    }

    #[test]
    fn pattern_placeholders_are_templates_anywhere_in_a_level() {
        let levels = parse_filter("devices/%u/dev-%c/#", true).expect("valid");
        assert!(matches!(levels[1], RuleLevel::Template(_)));
        let RuleLevel::Template(t) = &levels[2] else {
            panic!("template expected")
        };
        assert_eq!(t.to_string(), "dev-%c");
        let s = Substitution {
            user: Some("u"),
            client: Some("c1"),
        };
        assert_eq!(t.matches("dev-c1", &s), TemplateMatch::Exact);
        assert_eq!(t.matches("dev-c2", &s), TemplateMatch::No);
        assert_eq!(t.matches("dev-c1x", &s), TemplateMatch::No);
        let missing = Substitution {
            user: Some("u"),
            client: None,
        };
        assert_eq!(t.matches("anything", &missing), TemplateMatch::DenyWildcard);
    }

    #[test]
    fn placeholders_in_topic_lines_are_literal_and_warned() {
        let (set, _) = parse("user a\ntopic read x/%u\n");
        assert_eq!(set.levels[0][1], RuleLevel::Literal("%u".into()));
        assert_eq!(set.rules[0].levels(), set.levels[0]);
        assert_eq!(set.warnings.len(), 1);
    }

    #[test]
    fn upper_case_access_word_is_a_topic_and_warned() {
        let (set, _) = parse("user a\ntopic READ x\n");
        assert_eq!(set.rules[0].access, AccessSpec::ReadWrite);
        assert_eq!(set.rules[0].filter, "READ x");
        assert!(set.warnings[0].contains("lower case"));
    }

    #[test]
    fn inline_rules_validate_and_locate_problems() {
        let inline = vec![
            InlineRule {
                user: Some("a".into()),
                pattern: true,
                access: AccessSpec::Read,
                topic: "x".into(),
            },
            InlineRule {
                user: None,
                pattern: false,
                access: AccessSpec::Read,
                topic: "a/#/b".into(),
            },
            InlineRule {
                user: Some("a".into()),
                pattern: false,
                access: AccessSpec::Write,
                topic: "ok".into(),
            },
        ];
        let mut set = RuleSet::default();
        let problems = add_inline_rules(&inline, &mut set);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].location, "acl.rule[0]");
        assert_eq!(problems[1].location, "acl.rule[1]");
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].label, "acl.rule[2]: topic write ok (user a)");
    }

    #[test]
    fn inline_rule_toml_rejects_unknown_keys_and_bad_access() {
        let ok: AclConfig = toml::from_str(
            "file = \"/etc/acl\"\n[[rule]]\nuser = \"s\"\naccess = \"readwrite\"\ntopic = \"a/#\"\n",
        )
        .expect("valid toml");
        assert_eq!(ok.rule[0].access, AccessSpec::ReadWrite);
        assert!(
            toml::from_str::<AclConfig>("[[rule]]\naccess = \"all\"\ntopic = \"a\"\n").is_err()
        );
        assert!(toml::from_str::<AclConfig>(
            "[[rule]]\naccess = \"read\"\ntopic = \"a\"\nusr = \"x\"\n"
        )
        .is_err());
    }
}
