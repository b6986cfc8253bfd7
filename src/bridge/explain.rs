//! `tollgate bridge test`: which bridge and which rule would carry a topic, the topic
//! it becomes on the far side, the QoS after the rule's cap, and the ACL decision for
//! `bridge:<name>`, computed from the configuration alone (nothing is connected, no
//! file is written). The gateway forwards a local message out only if an `out` rule
//! maps it, the ACL lets `bridge:<name>` subscribe to the rule's local filter and read
//! the topic; a remote message comes in only if an `in` rule maps it and the ACL lets
//! `bridge:<name>` write the local topic. Owns the clap types and the report; the CLI
//! loads the configuration.

use std::fmt::{self, Write as _};

use clap::{Args, Subcommand, ValueEnum};

use super::config::BridgeConfig;
use super::rules::{route_in, route_out, Rule};
use crate::acl::{self, Access, Acl, AclDecision, Authorizer};
use crate::auth::Identity;

/// `tollgate bridge ...`
#[derive(Debug, Clone, Subcommand)]
pub enum BridgeCommand {
    /// Show which bridge and rule would forward TOPIC, the topic it maps to, the QoS
    /// and the ACL decision, without connecting anything. Exit 0: forwarded by at
    /// least one bridge; 1: not forwarded (no rule, disabled, or the ACL denies);
    /// 2: the configuration cannot be used.
    Test(TestArgs),
}

/// Arguments of `tollgate bridge test`.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// tollgate config file (loaded exactly as `run` loads it).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// `out`: TOPIC is a local topic going up to the cloud; `in`: TOPIC is a remote
    /// topic coming down from the cloud.
    #[arg(long, value_enum, default_value_t = Way::Out)]
    pub direction: Way,
    /// QoS the message is published with (the rule's `qos` caps it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// The topic (local for `--direction out`, remote for `--direction in`).
    #[arg(value_name = "TOPIC")]
    pub topic: String,
}

/// `--direction` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Way {
    /// Local topic → cloud.
    Out,
    /// Cloud topic → local broker.
    In,
}

/// What one bridge would do with the topic.
#[derive(Debug, Clone)]
pub struct BridgeAnswer {
    /// The bridge's name.
    pub name: String,
    /// `bridge[i]`.
    pub key: String,
    /// Whether this bridge forwards the message.
    pub forwarded: bool,
    /// The lines of the report, already worded.
    pub lines: Vec<String>,
}

/// The whole answer of `bridge test`.
#[derive(Debug, Clone)]
pub struct TestReport {
    /// The question, as one line.
    pub question: String,
    /// One answer per configured bridge, in file order.
    pub bridges: Vec<BridgeAnswer>,
}

impl TestReport {
    /// Whether at least one bridge forwards the message.
    pub fn forwarded(&self) -> bool {
        self.bridges.iter().any(|b| b.forwarded)
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.question)?;
        if self.bridges.is_empty() {
            writeln!(f, "no [[bridge]] is configured")?;
        }
        for b in &self.bridges {
            writeln!(f, "bridge {:?} ({}):", b.name, b.key)?;
            for line in &b.lines {
                writeln!(f, "  {line}")?;
            }
        }
        let verdict = if self.forwarded() {
            "FORWARDED"
        } else {
            "NOT FORWARDED"
        };
        writeln!(f, "result: {verdict}")
    }
}

/// Answer `bridge test` for `topic` against `bridges` and the ACL (`None`: no ACL
/// configured, everything allowed, as in the gateway).
pub fn test(
    bridges: &[BridgeConfig],
    acl: Option<&Acl>,
    way: Way,
    qos: u8,
    topic: &str,
) -> TestReport {
    let question = match way {
        Way::Out => format!("local topic `{topic}` (QoS {qos}) going out to the cloud"),
        Way::In => format!("remote topic `{topic}` (QoS {qos}) coming in from the cloud"),
    };
    let bridges = bridges
        .iter()
        .enumerate()
        .map(|(i, b)| answer(i, b, acl, way, qos, topic))
        .collect();
    TestReport { question, bridges }
}

fn answer(
    index: usize,
    b: &BridgeConfig,
    acl: Option<&Acl>,
    way: Way,
    qos: u8,
    topic: &str,
) -> BridgeAnswer {
    let key = format!("bridge[{index}]");
    let mut lines = Vec::new();
    let rules = b.rules();
    let routed = match way {
        Way::Out => route_out(&rules, topic),
        Way::In => route_in(&rules, topic),
    };
    let Some((rule, mapped)) = routed else {
        let which = match way {
            Way::Out => "out",
            Way::In => "in",
        };
        lines.push(format!(
            "rule:   none: no `{which}` or `both` rule of this bridge covers the topic"
        ));
        return BridgeAnswer {
            name: b.name.clone(),
            key,
            forwarded: false,
            lines,
        };
    };
    lines.push(format!(
        "rule:   {key}.topic[{}]: {}",
        rule.index,
        describe(rule)
    ));
    lines.push(match way {
        Way::Out => format!("remote: {mapped}"),
        Way::In => format!("local:  {mapped}"),
    });
    lines.push(qos_line(way, qos, rule.qos));
    let identity = Identity::internal(&b.identity());
    let mut allowed = true;
    let checks: Vec<(Access, String)> = match way {
        // The bridge subscribes to the rule's local filter, then every delivery is
        // re-checked against read (a deny inside the granted subtree still holds).
        Way::Out => vec![
            (Access::Subscribe, rule.local_filter()),
            (Access::Read, topic.to_string()),
        ],
        Way::In => vec![(Access::Write, mapped.clone())],
    };
    for (access, on) in checks {
        let decision = decide(acl, &identity, access, &on);
        allowed &= decision.is_allowed();
        lines.push(acl_line(&identity, access, &on, &decision, acl.is_some()));
    }
    if !b.enabled {
        lines.push("state:  disabled (enabled = false): this bridge does not run".into());
    }
    let forwarded = allowed && b.enabled;
    lines.push(format!(
        "=>      {}",
        if forwarded {
            "forwarded"
        } else {
            "not forwarded"
        }
    ));
    BridgeAnswer {
        name: b.name.clone(),
        key,
        forwarded,
        lines,
    }
}

/// The gateway's decision: `$SYS` protection for writes, then the ACL.
fn decide(acl: Option<&Acl>, identity: &Identity, access: Access, topic: &str) -> AclDecision {
    match (access, acl) {
        (Access::Write, Some(acl)) => acl::write_denial(acl, identity, topic),
        (Access::Write, None) => acl::write_denial(&acl::AllowAll, identity, topic),
        (_, Some(acl)) => acl.check(identity, access, topic),
        (_, None) => AclDecision::Allow { rule: None },
    }
}

fn describe(rule: &Rule) -> String {
    let direction = match rule.direction {
        super::config::Direction::Out => "out",
        super::config::Direction::In => "in",
        super::config::Direction::Both => "both",
    };
    let mut s = format!(
        "pattern {:?}, direction {direction}, qos {}, local_prefix {:?}, remote_prefix {:?}",
        rule.pattern, rule.qos, rule.local_prefix, rule.remote_prefix
    );
    if !rule.retain {
        let _ = write!(s, ", retain = false (RETAIN cleared)");
    }
    s
}

fn qos_line(way: Way, published: u8, cap: u8) -> String {
    let effective = published.min(cap);
    let mut s = format!("qos:    {published} -> {effective}");
    if effective < published {
        let _ = write!(s, " (DOWNGRADE by the rule's qos = {cap})");
    }
    match (way, effective) {
        (Way::Out, 0) => s.push_str(": best effort, not journaled, lost if the cloud is down"),
        (Way::Out, _) => s.push_str(": journaled on disk until the cloud acknowledges it"),
        (Way::In, 0) => s.push_str(": published locally at most once"),
        (Way::In, _) => s.push_str(": acknowledged to the cloud after it was published locally"),
    }
    s
}

fn acl_line(
    identity: &Identity,
    access: Access,
    topic: &str,
    decision: &AclDecision,
    configured: bool,
) -> String {
    let who = identity.username.as_deref().unwrap_or_default();
    let verb = match access {
        Access::Read => "read",
        Access::Write => "write",
        Access::Subscribe => "subscribe",
    };
    let (word, rule) = match decision {
        AclDecision::Allow { rule } => ("ALLOW", rule),
        AclDecision::Deny { rule } => ("DENY", rule),
    };
    let why = match (rule, configured) {
        (Some(rule), _) => rule.clone(),
        (None, true) => "no rule matched (default deny once ACLs are configured)".into(),
        (None, false) => "no ACL configured: everything is allowed".into(),
    };
    format!("acl:    {word} {verb} `{topic}` for {who}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::{Direction, TopicRuleConfig};

    fn bridge(rules: Vec<TopicRuleConfig>) -> BridgeConfig {
        let text = r#"
            name = "cloud"
            address = ["127.0.0.1:8883"]
            client_id = "gw1"
            ca = "/nonexistent/ca.crt"
        "#;
        let mut b: BridgeConfig = toml::from_str(text).expect("bridge config");
        b.topic = rules;
        b
    }

    fn rule(pattern: &str, direction: Direction, qos: u8, remote: &str) -> TopicRuleConfig {
        TopicRuleConfig {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: String::new(),
            remote_prefix: remote.into(),
            retain: true,
            rate: None,
        }
    }

    #[test]
    fn out_names_rule_remote_topic_downgrade_and_the_deciding_acl_line() {
        let b = bridge(vec![
            rule("cmd/#", Direction::In, 1, "site/"),
            rule("sensors/#", Direction::Out, 0, "site/"),
        ]);
        let acl = Acl::parse(
            "acl",
            "user bridge:cloud\ntopic read sensors/#\ntopic deny sensors/secret\n",
            &[],
        )
        .expect("acl");
        let r = test(
            std::slice::from_ref(&b),
            Some(&acl),
            Way::Out,
            1,
            "sensors/t1",
        );
        let text = r.to_string();
        assert!(r.forwarded(), "{text}");
        assert!(text.contains("rule:   bridge[0].topic[1]"), "{text}");
        assert!(text.contains("remote: site/sensors/t1"), "{text}");
        assert!(text.contains("qos:    1 -> 0 (DOWNGRADE"), "{text}");
        assert!(
            text.contains("ALLOW read `sensors/t1` for bridge:cloud: acl:2"),
            "{text}"
        );

        let r = test(&[b], Some(&acl), Way::Out, 1, "sensors/secret");
        let text = r.to_string();
        assert!(!r.forwarded(), "{text}");
        assert!(text.contains("DENY read `sensors/secret`"), "{text}");
        assert!(text.contains("acl:3: topic deny sensors/secret"), "{text}");
    }

    #[test]
    fn in_checks_write_on_the_local_topic_and_sys_is_never_writable() {
        let b = bridge(vec![TopicRuleConfig {
            local_prefix: "$SYS/".into(),
            ..rule("x/#", Direction::In, 1, "down/")
        }]);
        let r = test(&[b], None, Way::In, 1, "down/x/1");
        let text = r.to_string();
        assert!(!r.forwarded(), "{text}");
        assert!(text.contains("local:  $SYS/x/1"), "{text}");
        assert!(text.contains("DENY write `$SYS/x/1`"), "{text}");
    }

    #[test]
    fn no_rule_and_disabled_bridges_do_not_forward() {
        let mut b = bridge(vec![rule("sensors/#", Direction::Out, 1, "")]);
        let r = test(std::slice::from_ref(&b), None, Way::In, 1, "sensors/a");
        assert!(!r.forwarded());
        assert!(r.to_string().contains("rule:   none"), "{r}");
        b.enabled = false;
        let r = test(&[b], None, Way::Out, 1, "sensors/a");
        assert!(!r.forwarded());
        assert!(r.to_string().contains("disabled"), "{r}");
    }
}
