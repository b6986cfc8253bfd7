//! The compiled matcher: rules in tries (one per user, one for anonymous
//! clients, one for patterns), walked once per check. Owns the decision
//! algorithm; it must never allocate on the check path nor let a wildcard rule
//! match a `$` topic. Rule depth comes from the acl_file and topic depth from
//! clients, so no walk here (insert, match, cover, drop) recurses.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;

use super::rules::{
    parse_all, AccessSpec, InlineRule, Rule, RuleLevel, RuleSet, Scope, Substitution, Template,
    TemplateMatch,
};
use super::{Access, AclDecision, AclError, Authorizer};
use crate::auth::{AuthMethod, Identity};
use crate::topic::walk::WalkStack;

use naive::{naive_covers, naive_matches};

const NONE: u32 = u32::MAX;

/// Index of a rule in [`Acl::rules`]; lower means written earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u32);

/// Size of a loaded ACL, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclStats {
    /// All rules.
    pub rules: usize,
    /// Users with a block of their own.
    pub users: usize,
    /// Rules for anonymous clients.
    pub anonymous_rules: usize,
    /// `pattern` rules.
    pub pattern_rules: usize,
}

/// An allocation-free decision: allowed or not, and the rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether access is allowed.
    pub allowed: bool,
    /// The deciding rule; `None` for the default deny (nothing matched, or an invalid topic).
    pub rule: Option<RuleId>,
}

impl Verdict {
    const DEFAULT_DENY: Verdict = Verdict {
        allowed: false,
        rule: None,
    };
}

/// The earliest matching deny, read and write rule seen during a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hits {
    deny: u32,
    read: u32,
    write: u32,
}

impl Hits {
    const EMPTY: Hits = Hits {
        deny: NONE,
        read: NONE,
        write: NONE,
    };

    fn add(&mut self, id: u32, access: AccessSpec) {
        match access {
            AccessSpec::Deny => self.deny = self.deny.min(id),
            AccessSpec::Read => self.read = self.read.min(id),
            AccessSpec::Write => self.write = self.write.min(id),
            AccessSpec::ReadWrite => {
                self.read = self.read.min(id);
                self.write = self.write.min(id);
            }
        }
    }

    #[inline]
    fn merge(&mut self, other: &Hits, deny_only: bool) {
        self.deny = self.deny.min(other.deny);
        if !deny_only {
            self.read = self.read.min(other.read);
            self.write = self.write.min(other.write);
        }
    }

    fn verdict(&self, access: Access) -> Verdict {
        if self.deny != NONE {
            return Verdict {
                allowed: false,
                rule: Some(RuleId(self.deny)),
            };
        }
        let grant = match access {
            Access::Read | Access::Subscribe => self.read,
            Access::Write => self.write,
        };
        if grant != NONE {
            Verdict {
                allowed: true,
                rule: Some(RuleId(grant)),
            }
        } else {
            Verdict::DEFAULT_DENY
        }
    }
}

/// FxHash: keys come from the operator's rules, never from clients, so a keyed
/// (DoS-resistant) hash buys nothing here and costs a third of a check.
#[derive(Debug, Default, Clone, Copy)]
struct FxBuild;

struct FxHasher(u64);

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Fx alone leaves the low bits (the bucket index) depending on a few
        // bytes only: keys like `sensor_15205` would pile into a few buckets.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// Literal children of a trie node: a short list scanned in order (most nodes
/// have one or two children, and comparing a few short strings beats hashing),
/// a hash map once there are many.
#[derive(Debug)]
enum Children {
    Few(Vec<(Arc<str>, Node)>),
    Many(HashMap<Arc<str>, Node, FxBuild>),
}

const FEW_CHILDREN: usize = 8;

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    #[inline]
    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Children::Few(list) => list
                .iter()
                .find(|(key, _)| &**key == level)
                .map(|(_, node)| node),
            Children::Many(map) => map.get(level),
        }
    }

    fn entry(&mut self, key: &str, interner: &mut Interner) -> &mut Node {
        if let Children::Few(list) = self {
            if list.len() >= FEW_CHILDREN && !list.iter().any(|(k, _)| &**k == key) {
                let map: HashMap<_, _, _> = std::mem::take(list).into_iter().collect();
                *self = Children::Many(map);
            }
        }
        match self {
            Children::Few(list) => {
                let pos = match list.iter().position(|(k, _)| &**k == key) {
                    Some(pos) => pos,
                    None => {
                        list.reserve_exact(1);
                        list.push((interner.intern(key), Node::default()));
                        list.len() - 1
                    }
                };
                &mut list[pos].1
            }
            Children::Many(map) => {
                if !map.contains_key(key) {
                    map.insert(interner.intern(key), Node::default());
                }
                map.get_mut(key).expect("invariant: inserted just above")
            }
        }
    }
}

/// Shares level strings (`sensors`, `commands`, ...) between the tries of thousands of users.
#[derive(Default)]
struct Interner(HashMap<Arc<str>, (), FxBuild>);

impl Interner {
    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some((key, _)) = self.0.get_key_value(text) {
            return key.clone();
        }
        let key: Arc<str> = Arc::from(text);
        self.0.insert(key.clone(), ());
        key
    }
}

/// One trie level. `here` holds rules ending at this node, `hash` rules ending
/// in `#` right below it (which also match this node's own topic).
#[derive(Default)]
struct Node {
    literal: Children,
    plus: Option<Box<Node>>,
    templates: Vec<(Template, Node)>,
    here: Hits,
    hash: Hits,
}

impl Default for Hits {
    fn default() -> Self {
        Hits::EMPTY
    }
}

/// A node still to visit in a check, with the topic or filter left below it
/// (`None` once every level is consumed).
#[derive(Clone, Copy)]
struct Visit<'a> {
    node: &'a Node,
    rem: Option<&'a str>,
    /// At the root of a subscribe check (where `+/#` covers `#`).
    at_root: bool,
    /// At the root with a topic starting with `$`: wildcards and placeholders never match.
    dollar_root: bool,
    /// Only deny rules count below here.
    deny_only: bool,
}

impl<'a> Visit<'a> {
    #[inline]
    fn below(node: &'a Node, rem: Option<&'a str>, deny_only: bool) -> Visit<'a> {
        Visit {
            node,
            rem,
            at_root: false,
            dollar_root: false,
            deny_only,
        }
    }
}

/// Pending visits held without allocating: a check only branches where a literal,
/// `+` and placeholder rules share a level; each inline slot costs a store per check.
const INLINE_VISITS: usize = 4;

impl Node {
    fn has_children(&self) -> bool {
        let literal = match &self.literal {
            Children::Few(list) => !list.is_empty(),
            Children::Many(map) => !map.is_empty(),
        };
        literal || self.plus.is_some() || !self.templates.is_empty()
    }

    /// Move every child into `out`, leaving this node without children.
    fn take_children(&mut self, out: &mut Vec<Node>) {
        match std::mem::take(&mut self.literal) {
            Children::Few(list) => out.extend(list.into_iter().map(|(_, node)| node)),
            Children::Many(map) => out.extend(map.into_values()),
        }
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
        out.extend(
            std::mem::take(&mut self.templates)
                .into_iter()
                .map(|(_, node)| node),
        );
    }

    fn insert(
        &mut self,
        levels: &[RuleLevel],
        id: u32,
        access: AccessSpec,
        interner: &mut Interner,
    ) {
        let mut node = self;
        for level in levels {
            node = match level {
                RuleLevel::Hash => {
                    node.hash.add(id, access);
                    return;
                }
                RuleLevel::Literal(text) => node.literal.entry(text, interner),
                RuleLevel::Plus => node.plus.get_or_insert_with(Box::default),
                RuleLevel::Template(t) => {
                    let pos = match node
                        .templates
                        .iter()
                        .position(|(existing, _)| existing == t)
                    {
                        Some(pos) => pos,
                        None => {
                            node.templates.push((t.clone(), Node::default()));
                            node.templates.len() - 1
                        }
                    };
                    &mut node.templates[pos].1
                }
            };
        }
        node.here.add(id, access);
    }

    /// Collect rules matching the concrete topic `rem`. `dollar_root`: at the
    /// root with a topic starting with `$`, where wildcards and placeholders never match.
    fn match_topic(
        &self,
        rem: Option<&str>,
        dollar_root: bool,
        subst: &Substitution<'_>,
        deny_only: bool,
        acc: &mut Hits,
    ) {
        let mut stack: WalkStack<Visit<'_>, INLINE_VISITS> = WalkStack::with(Visit {
            node: self,
            rem,
            at_root: true,
            dollar_root,
            deny_only,
        });
        while let Some(Visit {
            node,
            rem,
            dollar_root,
            deny_only,
            ..
        }) = stack.pop()
        {
            if !dollar_root {
                acc.merge(&node.hash, deny_only);
            }
            let Some(rem) = rem else {
                acc.merge(&node.here, deny_only);
                continue;
            };
            let (level, next) = split_level(rem);
            if let Some(child) = node.literal.get(level) {
                stack.push(Visit::below(child, next, deny_only));
            }
            if !dollar_root {
                if let Some(plus) = &node.plus {
                    stack.push(Visit::below(plus, next, deny_only));
                }
            }
            for (template, child) in &node.templates {
                if dollar_root && !template.starts_with_dollar() {
                    continue;
                }
                match template.matches(level, subst) {
                    TemplateMatch::No => {}
                    TemplateMatch::Exact => stack.push(Visit::below(child, next, deny_only)),
                    TemplateMatch::DenyWildcard => stack.push(Visit::below(child, next, true)),
                }
            }
        }
    }

    /// Collect rules whose filter covers the subscription filter `rem` (every
    /// topic the filter can match is matched by the rule).
    fn cover_filter(
        &self,
        rem: Option<&str>,
        at_root: bool,
        dollar_root: bool,
        subst: &Substitution<'_>,
        deny_only: bool,
        acc: &mut Hits,
    ) {
        let mut stack: WalkStack<Visit<'_>, INLINE_VISITS> = WalkStack::with(Visit {
            node: self,
            rem,
            at_root,
            dollar_root,
            deny_only,
        });
        while let Some(Visit {
            node,
            rem,
            at_root,
            dollar_root,
            deny_only,
        }) = stack.pop()
        {
            if !dollar_root {
                acc.merge(&node.hash, deny_only);
            }
            let Some(rem) = rem else {
                acc.merge(&node.here, deny_only);
                continue;
            };
            let (level, next) = split_level(rem);
            match level {
                "#" => {
                    // `#` is only covered by a `#` here, which was merged above. At the root
                    // `+/#` covers it too: no topic has zero levels.
                    if at_root {
                        if let Some(plus) = &node.plus {
                            acc.merge(&plus.hash, deny_only);
                        }
                        for (template, child) in &node.templates {
                            if template.matches(level, subst) == TemplateMatch::DenyWildcard {
                                acc.merge(&child.hash, true);
                            }
                        }
                    }
                }
                "+" => {
                    if let Some(plus) = &node.plus {
                        stack.push(Visit::below(plus, next, deny_only));
                    }
                    for (template, child) in &node.templates {
                        if template.matches(level, subst) == TemplateMatch::DenyWildcard {
                            stack.push(Visit::below(child, next, true));
                        }
                    }
                }
                _ => {
                    if let Some(child) = node.literal.get(level) {
                        stack.push(Visit::below(child, next, deny_only));
                    }
                    if !dollar_root {
                        if let Some(plus) = &node.plus {
                            stack.push(Visit::below(plus, next, deny_only));
                        }
                    }
                    for (template, child) in &node.templates {
                        if dollar_root && !template.starts_with_dollar() {
                            continue;
                        }
                        match template.matches(level, subst) {
                            TemplateMatch::No => {}
                            TemplateMatch::Exact => {
                                stack.push(Visit::below(child, next, deny_only))
                            }
                            TemplateMatch::DenyWildcard => {
                                stack.push(Visit::below(child, next, true))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Drops the subtree node by node from an explicit stack: the derived drop would
/// recurse once per level of the deepest rule.
impl Drop for Node {
    fn drop(&mut self) {
        if !self.has_children() {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
        }
    }
}

/// Not derived: a derived `Debug` would recurse once per level.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = match &self.literal {
            Children::Few(list) => list.len(),
            Children::Many(map) => map.len(),
        };
        f.debug_struct("Node")
            .field("literal", &literal)
            .field("plus", &self.plus.is_some())
            .field("templates", &self.templates.len())
            .field("here", &self.here)
            .field("hash", &self.hash)
            .finish()
    }
}

#[inline]
fn split_level(rem: &str) -> (&str, Option<&str>) {
    match rem.split_once('/') {
        Some((level, next)) => (level, Some(next)),
        None => (rem, None),
    }
}

/// A concrete topic a client may publish to or receive: no wildcards, no NUL.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 65_535
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// A subscription filter: `+` and `#` only as whole levels, `#` last.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if !last => return false,
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Strip `$share/<group>/`; `None` when the shared-subscription syntax is broken.
pub(crate) fn strip_shared(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        None => Some(filter),
        Some(rest) => {
            let (group, inner) = rest.split_once('/')?;
            // A second `$share/` inside means the broker already stripped one: refuse
            // rather than check a filter other than the one subscribed.
            if group.is_empty()
                || group.contains(['+', '#'])
                || inner.is_empty()
                || inner.starts_with("$share/")
            {
                None
            } else {
                Some(inner)
            }
        }
    }
}

/// A value may be substituted for `%u`/`%c` only when it is one plain level.
fn safe_value(value: &str) -> bool {
    !value.is_empty() && !value.bytes().any(|b| matches!(b, b'+' | b'#' | b'/' | 0))
}

fn dangerous_value(value: &str) -> bool {
    value.bytes().any(|b| matches!(b, b'+' | b'#' | b'/' | 0))
}

/// How one identity is matched: which rule set and what `%u`/`%c` become.
pub(crate) struct IdentityView<'a> {
    /// `None`: anonymous rules. `Some(name)`: that user's block.
    pub user: Option<&'a str>,
    pub subst: Substitution<'a>,
    /// False when a username or client id contains `+ # /` or NUL: pattern rules then only deny.
    pub patterns_grant: bool,
}

impl<'a> IdentityView<'a> {
    pub fn of(identity: &'a Identity) -> IdentityView<'a> {
        // An anonymous client's username is unauthenticated: never use it.
        let user = match identity.via {
            AuthMethod::Anonymous => None,
            _ => identity.username.as_deref(),
        };
        let dangerous = user.is_some_and(dangerous_value) || dangerous_value(&identity.client_id);
        IdentityView {
            user,
            subst: Substitution {
                user: user.filter(|u| safe_value(u)),
                client: Some(identity.client_id.as_str()).filter(|c| safe_value(c)),
            },
            patterns_grant: !dangerous,
        }
    }
}

/// Compiled ACL: every rule of an acl_file plus inline rules, ready to check.
#[derive(Debug)]
pub struct Acl {
    rules: Vec<Rule>,
    anonymous: Node,
    users: HashMap<Box<str>, Node, FxBuild>,
    patterns: Node,
    warnings: Vec<String>,
}

impl Acl {
    /// Read the acl_file (if any), merge the inline rules after it, validate
    /// everything and compile. Every problem is reported at once.
    pub fn load(file: Option<&Path>, inline: &[InlineRule]) -> Result<Acl, AclError> {
        let data = match file {
            Some(path) => Some((
                path.display().to_string(),
                fs::read(path).map_err(|source| AclError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
            )),
            None => None,
        };
        let set = parse_all(
            data.as_ref()
                .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
            inline,
        )?;
        Ok(Acl::compile(set))
    }

    /// Parse acl_file text named `source` (used in locations) plus inline rules.
    pub fn parse(source: &str, text: &str, inline: &[InlineRule]) -> Result<Acl, AclError> {
        Ok(Acl::compile(parse_all(
            Some((source, text.as_bytes())),
            inline,
        )?))
    }

    /// Build only from inline rules.
    pub fn from_inline(inline: &[InlineRule]) -> Result<Acl, AclError> {
        Ok(Acl::compile(parse_all(None, inline)?))
    }

    pub(crate) fn compile(set: RuleSet) -> Acl {
        let RuleSet {
            rules,
            levels,
            mut warnings,
        } = set;
        let mut acl = Acl {
            rules: Vec::new(),
            anonymous: Node::default(),
            users: HashMap::with_hasher(FxBuild),
            patterns: Node::default(),
            warnings: Vec::new(),
        };
        let mut interner = Interner::default();
        for (index, (rule, levels)) in rules.iter().zip(levels).enumerate() {
            let id = u32::try_from(index).expect("invariant: fewer than 4 billion ACL rules");
            let trie = match &rule.scope {
                Scope::Anonymous => &mut acl.anonymous,
                Scope::User(name) => acl.users.entry(name.as_str().into()).or_default(),
                Scope::Pattern => &mut acl.patterns,
            };
            trie.insert(&levels, id, rule.access, &mut interner);
        }
        if rules.is_empty() {
            warnings.push("no ACL rules: every publish, subscribe and delivery is denied".into());
        }
        acl.rules = rules;
        warnings.extend(acl.shadowed_grant_warnings());
        acl.warnings = warnings;
        acl
    }

    /// Deny rules that cover grants of the same block make those grants dead:
    /// the seeds' trailing `topic deny #` (which mosquitto scopes to the last user) is the classic case.
    fn shadowed_grant_warnings(&self) -> Vec<String> {
        let mut shadowed: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        let no_subst = Substitution {
            user: None,
            client: None,
        };
        for rule in &self.rules {
            if rule.access == AccessSpec::Deny {
                continue;
            }
            let trie = match &rule.scope {
                Scope::Anonymous => &self.anonymous,
                Scope::User(name) => match self.users.get(name.as_str()) {
                    Some(trie) => trie,
                    None => continue,
                },
                Scope::Pattern => continue,
            };
            let mut hits = Hits::EMPTY;
            let dollar = first_level_is_dollar(&rule.filter);
            trie.cover_filter(
                Some(&rule.filter),
                true,
                dollar,
                &no_subst,
                false,
                &mut hits,
            );
            if hits.deny != NONE {
                shadowed
                    .entry(hits.deny)
                    .or_default()
                    .push(rule.origin.to_string());
            }
        }
        shadowed
            .into_iter()
            .map(|(deny, grants)| {
                let rule = &self.rules[deny as usize];
                let who = match &rule.scope {
                    Scope::User(u) => format!("user `{u}`"),
                    _ => "anonymous clients".to_string(),
                };
                let mut msg = format!(
                    "{}: `topic deny {}` overrides the grants for {who} at {} (deny rules win; mosquitto scopes every `topic` line to the `user` line above it)",
                    rule.origin,
                    rule.filter,
                    grants.join(", ")
                );
                if rule.filter == "#" && matches!(rule.scope, Scope::User(_)) {
                    msg.push_str(
                        "; anything unlisted is already denied, so delete this line, or move it above the first `user` line if it was meant for anonymous clients",
                    );
                }
                msg
            })
            .collect()
    }

    /// Counts for the load/reload log line.
    pub fn stats(&self) -> AclStats {
        let count = |f: fn(&Scope) -> bool| self.rules.iter().filter(|r| f(&r.scope)).count();
        AclStats {
            rules: self.rules.len(),
            users: self.users.len(),
            anonymous_rules: count(|s| *s == Scope::Anonymous),
            pattern_rules: count(|s| *s == Scope::Pattern),
        }
    }

    /// Every rule in source order; a [`RuleId`] indexes this slice.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule a verdict names.
    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[id.0 as usize]
    }

    /// Things that load but are probably not what the author meant; log them at startup and reload.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Decide without allocating: O(topic depth) trie walks, independent of the number of rules.
    pub fn decide(&self, identity: &Identity, access: Access, topic: &str) -> Verdict {
        let view = IdentityView::of(identity);
        let own = match view.user {
            None => Some(&self.anonymous),
            Some(user) => self.users.get(user),
        };
        let mut hits = Hits::EMPTY;
        match access {
            Access::Read | Access::Write => {
                if !valid_topic(topic) {
                    return Verdict::DEFAULT_DENY;
                }
                let dollar = topic.starts_with('$');
                if let Some(own) = own {
                    own.match_topic(Some(topic), dollar, &view.subst, false, &mut hits);
                }
                self.patterns.match_topic(
                    Some(topic),
                    dollar,
                    &view.subst,
                    !view.patterns_grant,
                    &mut hits,
                );
            }
            Access::Subscribe => {
                let Some(filter) = strip_shared(topic) else {
                    return Verdict::DEFAULT_DENY;
                };
                if !valid_filter(filter) {
                    return Verdict::DEFAULT_DENY;
                }
                let dollar = first_level_is_dollar(filter);
                if let Some(own) = own {
                    own.cover_filter(Some(filter), true, dollar, &view.subst, false, &mut hits);
                }
                self.patterns.cover_filter(
                    Some(filter),
                    true,
                    dollar,
                    &view.subst,
                    !view.patterns_grant,
                    &mut hits,
                );
            }
        }
        hits.verdict(access)
    }

    /// The label of the deciding rule, as put in an [`AclDecision`].
    pub fn describe(&self, verdict: Verdict) -> AclDecision {
        let rule = verdict.rule.map(|id| self.rule(id).label.clone());
        if verdict.allowed {
            AclDecision::Allow { rule }
        } else {
            AclDecision::Deny { rule }
        }
    }
}

/// How one rule relates to a check, found by the linear reference matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    /// The rule.
    pub rule: RuleId,
    /// The rule only counts as a denial here (unfillable placeholder, or an
    /// identity whose values are unsafe for patterns).
    pub deny_only: bool,
}

impl Acl {
    /// Every rule that applies to this check, in source order, found by a
    /// linear scan written independently of the tries. O(rules): for
    /// `acl explain` and tests, never for the hot path.
    pub fn matching_rules(
        &self,
        identity: &Identity,
        access: Access,
        topic: &str,
    ) -> Vec<RuleMatch> {
        let view = IdentityView::of(identity);
        let target = match access {
            Access::Read | Access::Write if valid_topic(topic) => topic,
            Access::Subscribe => match strip_shared(topic) {
                Some(filter) if valid_filter(filter) => filter,
                _ => return Vec::new(),
            },
            _ => return Vec::new(),
        };
        let parts: Vec<&str> = target.split('/').collect();
        let mut out = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let applies = match &rule.scope {
                Scope::Anonymous => view.user.is_none(),
                Scope::User(name) => view.user == Some(name.as_str()),
                Scope::Pattern => true,
            };
            if !applies {
                continue;
            }
            let levels = rule.levels();
            let found = match access {
                Access::Subscribe => naive_covers(&levels, &parts, &view.subst),
                _ => naive_matches(&levels, &parts, &view.subst),
            };
            if let Some(mut deny_only) = found {
                if rule.scope == Scope::Pattern && !view.patterns_grant {
                    deny_only = true;
                }
                if deny_only && rule.access != AccessSpec::Deny {
                    continue;
                }
                let id = RuleId(
                    u32::try_from(index).expect("invariant: fewer than 4 billion ACL rules"),
                );
                out.push(RuleMatch {
                    rule: id,
                    deny_only,
                });
            }
        }
        out
    }

    /// The decision computed from [`Acl::matching_rules`]; must always equal [`Acl::decide`].
    pub fn decide_linear(&self, identity: &Identity, access: Access, topic: &str) -> Verdict {
        let mut hits = Hits::EMPTY;
        for m in self.matching_rules(identity, access, topic) {
            let rule = self.rule(m.rule);
            if !m.deny_only || rule.access == AccessSpec::Deny {
                hits.add(m.rule.0, rule.access);
            }
        }
        hits.verdict(access)
    }
}

/// A filter whose first level is a literal starting with `$` (wildcard rules never cover it).
fn first_level_is_dollar(filter: &str) -> bool {
    filter.starts_with('$')
}

impl Authorizer for Acl {
    fn check(&self, identity: &Identity, access: Access, topic: &str) -> AclDecision {
        self.describe(self.decide(identity, access, topic))
    }

    fn allows(&self, identity: &Identity, access: Access, topic: &str) -> bool {
        self.decide(identity, access, topic).allowed
    }
}

mod naive;
#[cfg(test)]
mod tests;
