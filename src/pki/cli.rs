//! `tollgate pki ...`: the command-line face of the PKI (the lead mounts [`PkiCommand`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use rcgen::RevocationReason;

use super::{
    dev_server_names, init_ca, issue_device, issue_server, list, revoke, write_crl, Issued,
    KeyAlgorithm, PkiError, CA_CERT,
};

/// `tollgate pki [--dir DIR] <action>`.
#[derive(Debug, Clone, Args)]
pub struct PkiCommand {
    /// PKI directory (created 0700; keys are written 0600).
    #[arg(long, global = true, default_value = "/etc/tollgate/pki")]
    pub dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: PkiAction,
}

/// The PKI actions.
#[derive(Debug, Clone, Subcommand)]
pub enum PkiAction {
    /// Create the certificate authority (ca.crt, ca.key).
    Init {
        /// CA common name.
        #[arg(long, default_value = "tollgate CA")]
        cn: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// RSA-2048 instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a server certificate (NAME.crt, NAME.key; NAME from --name, default "server").
    Server {
        /// DNS names (repeat or comma-separate); default: localhost and this host's name.
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// IP addresses (repeat or comma-separate); default: 127.0.0.1 and ::1 when no --dns.
        #[arg(long, value_delimiter = ',')]
        ip: Vec<IpAddr>,
        /// Base file name.
        #[arg(long, default_value = "server")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// RSA-2048 instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
        /// Replace an existing certificate with the same name.
        #[arg(long)]
        force: bool,
    },
    /// Issue a device (client) certificate with CN=NAME (devices/NAME.crt, devices/NAME.key).
    Device {
        /// Device name; becomes the CN and so the MQTT username with `identity = "cn"`.
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// RSA-2048 instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
        /// Replace an existing certificate with the same name (revoke the old one first).
        #[arg(long)]
        force: bool,
    },
    /// Revoke every certificate issued under NAME and rewrite ca.crl.
    Revoke {
        /// Device or server name.
        name: String,
        /// Reason recorded in the CRL.
        #[arg(long, value_enum, default_value_t = RevokeReason::Unspecified)]
        reason: RevokeReason,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 365)]
        crl_days: u32,
    },
    /// (Re)write ca.crl, signed by the CA, listing every revoked certificate.
    Crl {
        /// Days until the CRL's nextUpdate (Mosquitto refuses every client after it; tollgate does not).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// List every issued certificate with serial, expiry and revocation state.
    List,
}

/// RFC 5280 revocation reasons offered on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RevokeReason {
    /// No reason given.
    Unspecified,
    /// The private key leaked.
    KeyCompromise,
    /// The device changed owner or site.
    AffiliationChanged,
    /// Replaced by a new certificate.
    Superseded,
    /// The device was decommissioned.
    CessationOfOperation,
    /// Its rights were withdrawn.
    PrivilegeWithdrawn,
}

impl RevokeReason {
    /// Kebab-case name, as stored in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Unspecified => "unspecified",
            RevokeReason::KeyCompromise => "key-compromise",
            RevokeReason::AffiliationChanged => "affiliation-changed",
            RevokeReason::Superseded => "superseded",
            RevokeReason::CessationOfOperation => "cessation-of-operation",
            RevokeReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    pub(crate) fn from_str_lossy(s: &str) -> Self {
        <Self as ValueEnum>::from_str(s, false).unwrap_or(RevokeReason::Unspecified)
    }

    pub(crate) fn rcgen(self) -> RevocationReason {
        match self {
            RevokeReason::Unspecified => RevocationReason::Unspecified,
            RevokeReason::KeyCompromise => RevocationReason::KeyCompromise,
            RevokeReason::AffiliationChanged => RevocationReason::AffiliationChanged,
            RevokeReason::Superseded => RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => RevocationReason::CessationOfOperation,
            RevokeReason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

fn alg(rsa: bool) -> KeyAlgorithm {
    if rsa {
        KeyAlgorithm::Rsa2048
    } else {
        KeyAlgorithm::EcdsaP256
    }
}

fn print_issued(what: &str, issued: &Issued) {
    println!(
        "{what} {} (serial {}, expires in {} days)",
        issued.entry.subject,
        issued.entry.serial,
        days_left(issued.entry.not_after)
    );
    println!("  certificate: {}", issued.cert.display());
    println!("  private key: {} (mode 0600)", issued.key.display());
}

fn days_left(not_after: i64) -> i64 {
    (not_after - time::OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86_400)
}

/// Runs a `tollgate pki` command, printing what it did on stdout.
pub fn run(cmd: PkiCommand) -> Result<(), PkiError> {
    let dir = cmd.dir.as_path();
    match cmd.action {
        PkiAction::Init {
            cn,
            days,
            rsa,
            force,
        } => {
            let issued = init_ca(dir, &cn, days, alg(rsa), force)?;
            print_issued("Created CA", &issued);
            if let Some(old) = &issued.replaced {
                println!(
                    "The previous CA, its index and CRL were moved to {}.",
                    old.display()
                );
            }
            println!(
                "Give {} to every client (mosquitto_pub --cafile); keep ca.key offline if you can.",
                issued.cert.display()
            );
        }
        PkiAction::Server {
            mut dns,
            mut ip,
            name,
            days,
            rsa,
            force,
        } => {
            if dns.is_empty() && ip.is_empty() {
                (dns, ip) = dev_server_names();
            }
            let issued = issue_server(dir, &name, &dns, &ip, days, alg(rsa), force)?;
            print_issued("Issued server certificate", &issued);
            println!(
                "Listener config: cert = \"{}\"  key = \"{}\"",
                issued.cert.display(),
                issued.key.display()
            );
        }
        PkiAction::Device {
            name,
            days,
            rsa,
            force,
        } => {
            let issued = issue_device(dir, &name, days, alg(rsa), force)?;
            print_issued("Issued device certificate", &issued);
            print_client_hint(dir, &issued);
        }
        PkiAction::Revoke {
            name,
            reason,
            crl_days,
        } => {
            let revoked = revoke(dir, &name, reason)?;
            for entry in &revoked {
                println!(
                    "Revoked {} (serial {}, reason {}).",
                    entry.subject,
                    entry.serial,
                    reason.as_str()
                );
            }
            let crl = write_crl(dir, crl_days)?;
            println!(
                "Wrote {}; point `crl` at it and reload tollgate (systemctl reload tollgate).",
                crl.display()
            );
        }
        PkiAction::Crl { days } => {
            let crl = write_crl(dir, days)?;
            println!("Wrote {} (next update in {days} days).", crl.display());
        }
        PkiAction::List => {
            println!(
                "{:<8} {:<20} {:<34} {:<33} {:<20} {:>9}  REVOKED",
                "KIND", "NAME", "SUBJECT", "SERIAL", "NOT AFTER (UTC)", "DAYS LEFT"
            );
            for e in list(dir)? {
                let not_after = time::OffsetDateTime::from_unix_timestamp(e.not_after)
                    .map(|t| {
                        format!(
                            "{:04}-{:02}-{:02} {:02}:{:02}",
                            t.year(),
                            u8::from(t.month()),
                            t.day(),
                            t.hour(),
                            t.minute()
                        )
                    })
                    .unwrap_or_else(|_| e.not_after.to_string());
                let revoked = match &e.revoked {
                    Some(r) => format!("yes ({})", r.reason),
                    None => "no".to_string(),
                };
                println!(
                    "{:<8} {:<20} {:<34} {:<33} {:<20} {:>9}  {}",
                    e.kind.as_str(),
                    e.name,
                    e.subject,
                    e.serial,
                    not_after,
                    days_left(e.not_after),
                    revoked
                );
            }
        }
    }
    Ok(())
}

fn print_client_hint(dir: &Path, issued: &Issued) {
    println!(
        "Test: mosquitto_pub -h <gateway> -p 8883 --cafile {} --cert {} --key {} -t test -m hello",
        dir.join(CA_CERT).display(),
        issued.cert.display(),
        issued.key.display()
    );
}
