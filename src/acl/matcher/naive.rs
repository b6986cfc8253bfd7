//! The rule-by-rule reference matching behind `acl explain` and the linear decision
//! (`Acl::matching_rules`, `Acl::decide_linear`): one rule against one topic or filter,
//! level by level, with `%u`/`%c` substitution. Slow by design; the tries decide in
//! production and the tests hold the two equal.

use super::super::rules::{RuleLevel, Substitution, TemplateMatch};

/// One rule level against one concrete level. `Some(deny_only)` on a match.
fn naive_level(
    rule: &RuleLevel,
    level: &str,
    first: bool,
    subst: &Substitution<'_>,
) -> Option<bool> {
    let dollar = first && level.starts_with('$');
    match rule {
        RuleLevel::Literal(text) => (&**text == level).then_some(false),
        RuleLevel::Plus => (!dollar).then_some(false),
        RuleLevel::Hash => (!dollar).then_some(false),
        RuleLevel::Template(t) => {
            if dollar && !t.starts_with_dollar() {
                return None;
            }
            match t.matches(level, subst) {
                TemplateMatch::No => None,
                TemplateMatch::Exact => Some(false),
                TemplateMatch::DenyWildcard => Some(true),
            }
        }
    }
}

pub(super) fn naive_matches(
    rule: &[RuleLevel],
    topic: &[&str],
    subst: &Substitution<'_>,
) -> Option<bool> {
    let mut deny_only = false;
    for (i, level) in rule.iter().enumerate() {
        if *level == RuleLevel::Hash {
            let dollar = i == 0 && topic.first().is_some_and(|t| t.starts_with('$'));
            return (!dollar).then_some(deny_only);
        }
        deny_only |= naive_level(level, topic.get(i)?, i == 0, subst)?;
    }
    (rule.len() == topic.len()).then_some(deny_only)
}

pub(super) fn naive_covers(
    rule: &[RuleLevel],
    filter: &[&str],
    subst: &Substitution<'_>,
) -> Option<bool> {
    let mut deny_only = false;
    for (i, level) in rule.iter().enumerate() {
        if *level == RuleLevel::Hash {
            let dollar = i == 0 && filter.first().is_some_and(|f| f.starts_with('$'));
            return (!dollar).then_some(deny_only);
        }
        let wanted = *filter.get(i)?;
        match wanted {
            "#" => {
                // Only the root `+/#` (or a deny-wildcard placeholder then `#`) covers `#` without being `#`.
                if i != 0 || rule.len() != 2 || rule[1] != RuleLevel::Hash {
                    return None;
                }
                return match level {
                    RuleLevel::Plus => Some(deny_only),
                    RuleLevel::Template(t)
                        if t.matches("#", subst) == TemplateMatch::DenyWildcard =>
                    {
                        Some(true)
                    }
                    _ => None,
                };
            }
            "+" => match level {
                RuleLevel::Plus => {}
                RuleLevel::Template(t) if t.matches("+", subst) == TemplateMatch::DenyWildcard => {
                    deny_only = true
                }
                _ => return None,
            },
            concrete => deny_only |= naive_level(level, concrete, i == 0, subst)?,
        }
    }
    (rule.len() == filter.len()).then_some(deny_only)
}
