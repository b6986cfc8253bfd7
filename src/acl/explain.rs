//! `tollgate acl explain`: answer "may this identity do this on that topic, and
//! which rule says so" from the same rules the gateway loads. Owns the clap
//! types and the report; it never changes any file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use super::{Access, Acl, AclConfig, AclDecision, AclError, Authorizer, RuleMatch};
use crate::auth::{AuthMethod, Identity};

/// `tollgate acl ...`
#[derive(Debug, Clone, Subcommand)]
pub enum AclCommand {
    /// Print whether an identity may read, write or subscribe to a topic, and the rule that decided.
    Explain(ExplainArgs),
}

/// Arguments of `tollgate acl explain`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("rules").required(true).args(["config", "acl_file"])))]
#[command(group(ArgGroup::new("who").required(true).args(["user", "anonymous"])))]
pub struct ExplainArgs {
    /// tollgate config file; its `[acl]` file and inline rules are used.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A mosquitto acl_file, used directly.
    #[arg(long = "acl-file", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,
    /// Username (CONNECT username, certificate identity or internal name such as `adapter:modbus1`).
    #[arg(long, value_name = "U")]
    pub user: Option<String>,
    /// Check as an anonymous client (anonymous rules only).
    #[arg(long)]
    pub anonymous: bool,
    /// Client id, for `%c` patterns.
    #[arg(long = "client-id", value_name = "C")]
    pub client_id: Option<String>,
    /// Topic (read, write) or filter (subscribe).
    #[arg(long, value_name = "T")]
    pub topic: String,
    /// What is being done.
    #[arg(long, value_enum)]
    pub access: AccessArg,
}

/// `--access` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    /// Receive a message published on the topic.
    Read,
    /// Publish to the topic.
    Write,
    /// Subscribe to the filter.
    Subscribe,
}

impl From<AccessArg> for Access {
    fn from(arg: AccessArg) -> Access {
        match arg {
            AccessArg::Read => Access::Read,
            AccessArg::Write => Access::Write,
            AccessArg::Subscribe => Access::Subscribe,
        }
    }
}

/// The full answer of `acl explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// What the gateway would decide.
    pub decision: AclDecision,
    /// Labels of every rule that applies (deny-only ones marked), in file order.
    pub matching: Vec<String>,
    /// Hints: unfillable placeholders, ignored anonymous username, load warnings.
    pub notes: Vec<String>,
}

/// Explain one check against a loaded ACL.
pub fn explain(acl: &Acl, identity: &Identity, access: Access, topic: &str) -> Explanation {
    let decision = acl.check(identity, access, topic);
    let matching = acl
        .matching_rules(identity, access, topic)
        .into_iter()
        .map(|RuleMatch { rule, deny_only }| {
            let label = &acl.rule(rule).label;
            if deny_only {
                format!("{label}  [placeholder not fillable for this identity: counts as `+`, deny only]")
            } else {
                label.clone()
            }
        })
        .collect();
    let mut notes: Vec<String> = acl
        .warnings()
        .iter()
        .map(|w| format!("warning: {w}"))
        .collect();
    if identity.client_id.is_empty() {
        notes.push("no --client-id given: `%c` patterns cannot grant anything".into());
    }
    if access == Access::Subscribe && !topic.contains(['+', '#']) {
        notes.push(
            "subscribe checks a filter; deliveries on each topic are re-checked with --access read"
                .into(),
        );
    }
    Explanation {
        decision,
        matching,
        notes,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, rule) = match &self.decision {
            AclDecision::Allow { rule } => ("ALLOW", rule),
            AclDecision::Deny { rule } => ("DENY", rule),
        };
        writeln!(f, "decision: {word}")?;
        match rule {
            Some(rule) => writeln!(f, "rule:     {rule}")?,
            None => writeln!(
                f,
                "rule:     none matched (default deny once ACLs are configured)"
            )?,
        }
        if !self.matching.is_empty() {
            writeln!(f, "matching rules:")?;
            for label in &self.matching {
                writeln!(f, "  {label}")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

/// Run `tollgate acl ...`: load the rules, print the explanation. `acl_config_from`
/// gives the `[acl]` section of a tollgate config file (`None`: no ACL configured); the
/// CLI passes the gateway's own loader, so this module never depends on `config`.
pub fn run(
    cmd: AclCommand,
    acl_config_from: impl FnOnce(&Path) -> Result<Option<AclConfig>, AclError>,
) -> Result<(), AclError> {
    let AclCommand::Explain(args) = cmd;
    let acl = match (&args.acl_file, &args.config) {
        (Some(file), None) => Acl::load(Some(file), &[])?,
        (None, Some(config)) => match acl_config_from(config)? {
            Some(section) => Acl::load(section.file.as_deref(), &section.rule)?,
            None => {
                println!("decision: ALLOW\nrule:     none: {} configures no [acl] file or rules, so ACLs are off and every access is allowed", config.display());
                return Ok(());
            }
        },
        _ => {
            return Err(AclError::Usage(
                "give exactly one of --config/-c or --acl-file".into(),
            ))
        }
    };
    let identity = identity_from(&args)?;
    let who = match &identity.username {
        Some(u) => format!("user `{u}`"),
        None => "anonymous client".to_string(),
    };
    println!("identity: {who}, client id `{}`", identity.client_id);
    println!("check:    {:?} `{}`", Access::from(args.access), args.topic);
    print!(
        "{}",
        explain(&acl, &identity, args.access.into(), &args.topic)
    );
    Ok(())
}

fn identity_from(args: &ExplainArgs) -> Result<Identity, AclError> {
    let client_id = args.client_id.clone().unwrap_or_default();
    match (&args.user, args.anonymous) {
        (Some(user), false) => Ok(Identity {
            username: Some(user.clone()),
            client_id,
            via: AuthMethod::Password,
            listener: Arc::from("acl-explain"),
            jwt: None,
        }),
        (None, true) => Ok(Identity {
            username: None,
            client_id,
            via: AuthMethod::Anonymous,
            listener: Arc::from("acl-explain"),
            jwt: None,
        }),
        _ => Err(AclError::Usage(
            "give exactly one of --user or --anonymous".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AclCommand,
    }

    #[test]
    fn explain_requires_a_rule_source_and_an_identity() {
        assert!(Cli::try_parse_from([
            "t", "explain", "--user", "u", "--topic", "a", "--access", "read"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "t",
            "explain",
            "--acl-file",
            "f",
            "--topic",
            "a",
            "--access",
            "read"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "t",
            "explain",
            "--acl-file",
            "f",
            "-c",
            "g",
            "--user",
            "u",
            "--topic",
            "a",
            "--access",
            "read"
        ])
        .is_err());
        let ok = Cli::try_parse_from([
            "t",
            "explain",
            "-c",
            "g",
            "--user",
            "u",
            "--client-id",
            "c",
            "--topic",
            "a/b",
            "--access",
            "subscribe",
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn explanation_names_the_deciding_rule_and_all_matches() {
        let acl =
            Acl::parse("acl", "user u\ntopic read a/#\ntopic deny a/secret\n", &[]).expect("valid");
        let id = Identity {
            username: Some("u".into()),
            client_id: "c".into(),
            via: AuthMethod::Password,
            listener: "t".into(),
            jwt: None,
        };
        let e = explain(&acl, &id, Access::Read, "a/secret");
        let text = e.to_string();
        assert!(text.contains("decision: DENY"), "{text}");
        assert!(
            text.contains("rule:     acl:3: topic deny a/secret (user u)"),
            "{text}"
        );
        assert!(text.contains("acl:2: topic read a/# (user u)"), "{text}");
    }
}
