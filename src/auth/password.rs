//! Password files: reads mosquitto password files unchanged (`$7$` PBKDF2-HMAC-SHA512,
//! `$6$` salted SHA-512) and argon2id PHC lines, verifies passwords in constant time,
//! and edits/writes files for `tollgate passwd` (atomic replace, mode 0600).
//! It must never log, store or echo a password, and never report a problem without
//! the file and line it was found on.
//!
//! Formats (all hashes and salts are standard base64, as mosquitto writes them):
//! - `user:$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 over the password with
//!   `<iterations>` rounds and a 64-byte output (mosquitto_passwd 2.0 default, 101
//!   rounds, 12-byte salt; longer salts are accepted).
//! - `user:$6$<salt>$<hash>`: SHA-512(password || salt), one round (mosquitto 1.x, and
//!   `mosquitto_passwd -H sha512` in 2.0; see mosquitto `src/password_mosq.c`,
//!   `pw__hash`, which feeds the password then the salt to one SHA-512 digest). This is
//!   *not* glibc sha512-crypt, which shares the `$6$` prefix.
//! - `user:$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>`: argon2id PHC string, the
//!   default `tollgate passwd` writes.
//!
//! Mosquitto hashes `strlen(password)` bytes, so a password with an embedded NUL byte is
//! truncated there; tollgate hashes every byte, which differs only for such passwords.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash as PhcHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Iteration count `mosquitto_passwd` 2.0 writes for `$7$` (its `PW_DEFAULT_ITERATIONS`).
pub const MOSQUITTO_DEFAULT_ITERATIONS: u32 = 101;
/// Salt length `mosquitto_passwd` 2.0 writes and the minimum this reader accepts.
pub const MOSQUITTO_SALT_LEN: usize = 12;
/// Length of the `$6$` and `$7$` hash (a SHA-512 sized output).
const SHA512_LEN: usize = 64;

/// Standard base64 that accepts padded (as mosquitto writes) and unpadded input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a password file could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read or written.
    #[error("password file {path}: {action} failed: {source}; check that it exists and that tollgate may access it")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// What was attempted (read, write, rename ...).
        action: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// One or more lines are malformed; every problem is listed.
    #[error("{}", ProblemList { path, problems })]
    Invalid {
        /// File concerned.
        path: PathBuf,
        /// Every problem found, in line order.
        problems: Vec<LineProblem>,
    },
    /// A user name that cannot be stored in a password file.
    #[error("invalid user name {0:?}: it must be non-empty, contain no ':' or control characters, and not start with '#' or whitespace")]
    InvalidUsername(String),
    /// Hashing a new password failed (should not happen with valid parameters).
    #[error("could not hash the new password: {0}")]
    Hashing(String),
}

/// One malformed line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to do about it.
    pub message: String,
}

struct ProblemList<'a> {
    path: &'a Path,
    problems: &'a [LineProblem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "password file {} has {} invalid line(s); fix them (or regenerate with `tollgate passwd`) and reload:",
            self.path.display(),
            self.problems.len()
        )?;
        for p in self.problems {
            write!(f, "\n  {}:{}: {}", self.path.display(), p.line, p.message)?;
        }
        Ok(())
    }
}

/// A stored password hash, parsed and validated.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredHash {
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// PBKDF2 rounds.
        iterations: u32,
        /// Raw salt bytes.
        salt: Vec<u8>,
        /// Raw 64-byte derived key.
        hash: Vec<u8>,
    },
    /// Mosquitto `$6$`: SHA-512(password || salt).
    Sha512 {
        /// Raw salt bytes.
        salt: Vec<u8>,
        /// Raw 64-byte digest.
        hash: Vec<u8>,
    },
    /// argon2id PHC string (validated when parsed).
    Argon2id(String),
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hash material stays out of Debug output: it is an offline-cracking target.
        match self {
            StoredHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "Pbkdf2Sha512 {{ iterations: {iterations}, .. }}")
            }
            StoredHash::Sha512 { .. } => f.write_str("Sha512 { .. }"),
            StoredHash::Argon2id(_) => f.write_str("Argon2id(..)"),
        }
    }
}

/// Which scheme `tollgate passwd` writes for a new or changed password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// argon2id with the given parameters (default: the argon2 crate's OWASP defaults).
    Argon2id {
        /// Memory in KiB.
        m_cost: u32,
        /// Passes.
        t_cost: u32,
        /// Lanes.
        p_cost: u32,
    },
    /// Mosquitto-compatible `$7$` with this many PBKDF2 rounds and a 12-byte salt.
    MosquittoPbkdf2 {
        /// PBKDF2 rounds (mosquitto default 101).
        iterations: u32,
    },
}

impl HashScheme {
    /// argon2id with the argon2 crate defaults (m=19456 KiB, t=2, p=1).
    pub fn argon2id_default() -> Self {
        HashScheme::Argon2id {
            m_cost: argon2::Params::DEFAULT_M_COST,
            t_cost: argon2::Params::DEFAULT_T_COST,
            p_cost: argon2::Params::DEFAULT_P_COST,
        }
    }

    /// `$7$` exactly as mosquitto_passwd 2.0 writes it.
    pub fn mosquitto_default() -> Self {
        HashScheme::MosquittoPbkdf2 {
            iterations: MOSQUITTO_DEFAULT_ITERATIONS,
        }
    }
}

impl StoredHash {
    /// Parses the part after `user:`. The error says what is wrong (no line info).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iter), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(
                    "`$7$` entry must be `$7$<iterations>$<base64 salt>$<base64 hash>`".into(),
                );
            };
            let iterations: u32 = iter
                .parse()
                .map_err(|_| format!("`$7$` iteration count {iter:?} is not a number"))?;
            if iterations == 0 {
                return Err("`$7$` iteration count must be at least 1".into());
            }
            let salt = decode_salt(salt)?;
            let hash = decode_hash(hash)?;
            return Ok(StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            });
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            let mut parts = rest.split('$');
            let (Some(salt), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err("`$6$` entry must be `$6$<base64 salt>$<base64 hash>` (mosquitto format; glibc `$6$rounds=` crypt strings are not supported)".into());
            };
            let salt = decode_salt(salt)?;
            let hash = decode_hash(hash)?;
            return Ok(StoredHash::Sha512 { salt, hash });
        }
        if text.starts_with("$argon2") {
            let phc =
                PhcHash::new(text).map_err(|e| format!("argon2 PHC string does not parse: {e}"))?;
            if phc.algorithm.as_str() != "argon2id" {
                return Err(format!(
                    "algorithm {} is not supported; use argon2id (`tollgate passwd`)",
                    phc.algorithm
                ));
            }
            argon2::Params::try_from(&phc)
                .map_err(|e| format!("argon2id parameters are invalid: {e}"))?;
            if phc.salt.is_none() || phc.hash.is_none() {
                return Err("argon2id PHC string lacks a salt or a hash".into());
            }
            return Ok(StoredHash::Argon2id(text.to_string()));
        }
        if text.starts_with('$') {
            let scheme = text.split('$').nth(1).unwrap_or_default();
            return Err(format!(
                "unknown hash scheme `${scheme}$`; supported: `$7$`, `$6$`, `$argon2id$`"
            ));
        }
        Err("password is not hashed (plain text); hash the file with `mosquitto_passwd -U` or re-enter the user with `tollgate passwd`".into())
    }

    /// Hashes `password` freshly with `scheme` and a random salt.
    pub fn create(password: &[u8], scheme: HashScheme) -> Result<Self, PasswordFileError> {
        match scheme {
            HashScheme::Argon2id {
                m_cost,
                t_cost,
                p_cost,
            } => {
                let params = argon2::Params::new(m_cost, t_cost, p_cost, None)
                    .map_err(|e| PasswordFileError::Hashing(e.to_string()))?;
                let argon =
                    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let salt = SaltString::generate(&mut OsRng);
                let phc = argon
                    .hash_password(password, &salt)
                    .map_err(|e| PasswordFileError::Hashing(e.to_string()))?;
                Ok(StoredHash::Argon2id(phc.to_string()))
            }
            HashScheme::MosquittoPbkdf2 { iterations } => {
                if iterations == 0 {
                    return Err(PasswordFileError::Hashing(
                        "PBKDF2 iteration count must be at least 1".into(),
                    ));
                }
                let mut salt = vec![0u8; MOSQUITTO_SALT_LEN];
                rand::thread_rng().fill_bytes(&mut salt);
                let mut hash = vec![0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
                Ok(StoredHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                })
            }
        }
    }

    /// The text stored after `user:` in the file.
    pub fn to_line_text(&self) -> String {
        match self {
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
            StoredHash::Sha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            StoredHash::Argon2id(s) => s.clone(),
        }
    }

    /// Whether `password` matches; the final comparison is constant-time.
    pub fn matches(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.as_slice().ct_eq(hash.as_slice()))
            }
            StoredHash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let out = digest.finalize();
                bool::from(out.as_slice().ct_eq(hash.as_slice()))
            }
            StoredHash::Argon2id(s) => match PhcHash::new(s) {
                // argon2's verifier compares the outputs in constant time (password_hash::Output).
                Ok(phc) => Argon2::default().verify_password(password, &phc).is_ok(),
                Err(_) => false,
            },
        }
    }

    /// A hash with the same scheme and cost but random salt and output, used to spend
    /// comparable work for unknown users.
    fn dummy_like(&self) -> Self {
        let mut rng = rand::thread_rng();
        match self {
            StoredHash::Pbkdf2Sha512 {
                iterations, salt, ..
            } => {
                let mut s = vec![0u8; salt.len()];
                let mut h = vec![0u8; SHA512_LEN];
                rng.fill_bytes(&mut s);
                rng.fill_bytes(&mut h);
                StoredHash::Pbkdf2Sha512 {
                    iterations: *iterations,
                    salt: s,
                    hash: h,
                }
            }
            StoredHash::Sha512 { salt, .. } => {
                let mut s = vec![0u8; salt.len()];
                let mut h = vec![0u8; SHA512_LEN];
                rng.fill_bytes(&mut s);
                rng.fill_bytes(&mut h);
                StoredHash::Sha512 { salt: s, hash: h }
            }
            // `text` was validated when parsed, so building its dummy cannot fail in practice;
            // the fallback only keeps the scheme.
            StoredHash::Argon2id(text) => dummy_argon2(Some(text))
                .or_else(|| dummy_argon2(None))
                .unwrap_or_else(|| self.clone()),
        }
    }
}

/// An argon2id PHC string with the parameters of `like` (or the defaults) and random
/// salt and output; nothing verifies against it in practice.
fn dummy_argon2(like: Option<&str>) -> Option<StoredHash> {
    let mut rng = rand::thread_rng();
    let (params, out_len) = match like {
        Some(text) => {
            let phc = PhcHash::new(text).ok()?;
            let params = argon2::Params::try_from(&phc).ok()?;
            let len = phc.hash.map(|h| h.len()).unwrap_or(32);
            (params, len)
        }
        None => (argon2::Params::default(), 32),
    };
    let salt = SaltString::generate(&mut OsRng);
    let mut out = vec![0u8; out_len];
    rng.fill_bytes(&mut out);
    let output = argon2::password_hash::Output::new(&out).ok()?;
    let phc = PhcHash {
        algorithm: argon2::Algorithm::Argon2id.into(),
        version: Some(argon2::Version::V0x13.into()),
        params: (&params).try_into().ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Some(StoredHash::Argon2id(phc.serialize().to_string()))
}

fn decode_salt(text: &str) -> Result<Vec<u8>, String> {
    let salt = B64
        .decode(text)
        .map_err(|e| format!("salt is not valid base64: {e}"))?;
    if salt.len() < MOSQUITTO_SALT_LEN {
        return Err(format!(
            "salt is {} bytes; at least {MOSQUITTO_SALT_LEN} are required",
            salt.len()
        ));
    }
    Ok(salt)
}

fn decode_hash(text: &str) -> Result<Vec<u8>, String> {
    let hash = B64
        .decode(text)
        .map_err(|e| format!("hash is not valid base64: {e}"))?;
    if hash.len() != SHA512_LEN {
        return Err(format!(
            "hash is {} bytes; a SHA-512 sized hash of {SHA512_LEN} bytes is required",
            hash.len()
        ));
    }
    Ok(hash)
}

/// Whether `name` can be stored as a user of a password file and read back: non-empty,
/// no ':' or control characters, and not starting with '#' or whitespace (such a line
/// would read back as a comment or with the name trimmed, in mosquitto as here).
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(':')
        && !name.chars().any(char::is_control)
        && !name.starts_with('#')
        && !name.starts_with(char::is_whitespace)
}

/// Outcome of checking a user's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The user exists and the password matches.
    Accepted,
    /// The user exists and the password does not match.
    WrongPassword,
    /// No such user (a dummy hash was still computed).
    UnknownUser,
}

#[derive(Debug, Clone)]
enum Line {
    /// Comment or blank line, written back unchanged.
    Verbatim(String),
    /// A user entry.
    User { username: String, hash: StoredHash },
}

/// A parsed password file: the entries in file order, comments kept for rewriting.
#[derive(Debug)]
pub struct PasswordFile {
    lines: Vec<Line>,
    /// username -> index into `lines`.
    index: HashMap<String, usize>,
    /// Hash of the same kind and cost as the file's first entry, for unknown users.
    dummy: StoredHash,
    /// Number of hashes computed by `verify` (real and dummy), for tests and metrics.
    hash_evaluations: AtomicU64,
}

impl Default for PasswordFile {
    fn default() -> Self {
        PasswordFile::from_lines(Vec::new())
    }
}

impl PasswordFile {
    /// An empty file (for `tollgate passwd -c`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses `path`; every bad line is reported at once.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PasswordFileError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| PasswordFileError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?;
        let file = Self::parse(path, &data)?;
        let legacy = file
            .lines
            .iter()
            .filter(|l| {
                matches!(
                    l,
                    Line::User {
                        hash: StoredHash::Sha512 { .. },
                        ..
                    }
                )
            })
            .count();
        if legacy > 0 {
            tracing::warn!(
                path = %path.display(),
                users = legacy,
                "Password file has $6$ entries (one SHA-512 round, fast to crack offline); re-enter those users with `tollgate passwd`."
            );
        }
        Ok(file)
    }

    /// Parses file contents; `path` only labels the problems.
    pub fn parse(path: impl AsRef<Path>, data: &[u8]) -> Result<Self, PasswordFileError> {
        let mut lines = Vec::new();
        let mut problems = Vec::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut chunks: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        // A trailing newline yields one empty chunk that is not a line.
        if chunks.last().is_some_and(|c| c.is_empty()) {
            chunks.pop();
        }
        for (i, raw) in chunks.into_iter().enumerate() {
            let number = i + 1;
            let Ok(text) = std::str::from_utf8(raw) else {
                problems.push(LineProblem {
                    line: number,
                    message: "line is not valid UTF-8".into(),
                });
                continue;
            };
            let text = text.trim_end_matches('\r');
            let trimmed = text.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Verbatim(text.to_string()));
                continue;
            }
            let Some((username, hash_text)) = trimmed.split_once(':') else {
                problems.push(LineProblem {
                    line: number,
                    message: "expected `user:hash` (no ':' found)".into(),
                });
                continue;
            };
            if !valid_username(username) {
                problems.push(LineProblem {
                    line: number,
                    message: format!(
                        "user name {username:?} is empty or contains control characters"
                    ),
                });
                continue;
            }
            let hash = match StoredHash::parse(hash_text) {
                Ok(hash) => hash,
                Err(message) => {
                    problems.push(LineProblem {
                        line: number,
                        message: format!("user {username:?}: {message}"),
                    });
                    continue;
                }
            };
            if let Some(first) = first_seen.get(username) {
                problems.push(LineProblem {
                    line: number,
                    message: format!(
                        "user {username:?} is defined twice (first on line {first}); keep one entry"
                    ),
                });
                continue;
            }
            first_seen.insert(username.to_string(), number);
            lines.push(Line::User {
                username: username.to_string(),
                hash,
            });
        }
        if !problems.is_empty() {
            return Err(PasswordFileError::Invalid {
                path: path.as_ref().to_path_buf(),
                problems,
            });
        }
        Ok(Self::from_lines(lines))
    }

    fn from_lines(lines: Vec<Line>) -> Self {
        let mut file = PasswordFile {
            lines,
            index: HashMap::new(),
            dummy: StoredHash::Sha512 {
                salt: Vec::new(),
                hash: Vec::new(),
            },
            hash_evaluations: AtomicU64::new(0),
        };
        file.reindex();
        file
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, line) in self.lines.iter().enumerate() {
            if let Line::User { username, .. } = line {
                self.index.insert(username.clone(), i);
            }
        }
        let first = self.lines.iter().find_map(|l| match l {
            Line::User { hash, .. } => Some(hash),
            _ => None,
        });
        self.dummy = match first {
            Some(hash) => hash.dummy_like(),
            // No users: every lookup is unknown; the scheme tollgate writes sets the cost.
            None => dummy_argon2(None).unwrap_or_else(|| StoredHash::Pbkdf2Sha512 {
                iterations: MOSQUITTO_DEFAULT_ITERATIONS,
                salt: vec![0; MOSQUITTO_SALT_LEN],
                hash: vec![0; SHA512_LEN],
            }),
        };
    }

    /// Checks `password` for `user`. Unknown users cost a hash of the same scheme and
    /// cost as the file's first entry, so timing does not tell which users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> Verification {
        self.hash_evaluations.fetch_add(1, Ordering::Relaxed);
        match self.hash_of(user) {
            Some(hash) => {
                if hash.matches(password) {
                    Verification::Accepted
                } else {
                    Verification::WrongPassword
                }
            }
            None => {
                let _ = std::hint::black_box(self.dummy.matches(password));
                Verification::UnknownUser
            }
        }
    }

    /// Number of hashes `verify` has computed (real and dummy) on this file.
    pub fn hash_evaluations(&self) -> u64 {
        self.hash_evaluations.load(Ordering::Relaxed)
    }

    /// The stored hash of `user`, if present.
    pub fn hash_of(&self, user: &str) -> Option<&StoredHash> {
        let i = *self.index.get(user)?;
        match &self.lines[i] {
            Line::User { hash, .. } => Some(hash),
            Line::Verbatim(_) => None,
        }
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.index.contains_key(user)
    }

    /// User names in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::User { username, .. } => Some(username.as_str()),
            Line::Verbatim(_) => None,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds `user` or replaces its password (in place, keeping the file order).
    pub fn upsert(
        &mut self,
        user: &str,
        password: &[u8],
        scheme: HashScheme,
    ) -> Result<(), PasswordFileError> {
        if !valid_username(user) {
            return Err(PasswordFileError::InvalidUsername(user.to_string()));
        }
        let hash = StoredHash::create(password, scheme)?;
        self.upsert_hash(user, hash)
    }

    /// Adds `user` or replaces its stored hash.
    pub fn upsert_hash(&mut self, user: &str, hash: StoredHash) -> Result<(), PasswordFileError> {
        if !valid_username(user) {
            return Err(PasswordFileError::InvalidUsername(user.to_string()));
        }
        let entry = Line::User {
            username: user.to_string(),
            hash,
        };
        match self.index.get(user) {
            Some(&i) => self.lines[i] = entry,
            None => self.lines.push(entry),
        }
        self.reindex();
        Ok(())
    }

    /// Removes `user`; returns whether it was present.
    pub fn delete(&mut self, user: &str) -> bool {
        let Some(&i) = self.index.get(user) else {
            return false;
        };
        self.lines.remove(i);
        self.reindex();
        true
    }

    /// The file contents as they would be written.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Verbatim(text) => out.push_str(text),
                Line::User { username, hash } => {
                    out.push_str(username);
                    out.push(':');
                    out.push_str(&hash.to_line_text());
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file in the same directory, fsynced, then
    /// renamed over `path`. A new file gets mode 0600. An existing file keeps its owner,
    /// group and permission bits minus any access for others (so a `root:tollgate 0640`
    /// file stays readable by the service after an edit as root). A symlink is followed
    /// and its target replaced, so the link survives.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), PasswordFileError> {
        let requested = path.as_ref();
        let io = |action: &'static str| {
            let path = requested.to_path_buf();
            move |source| PasswordFileError::Io {
                path,
                action,
                source,
            }
        };
        let is_link = std::fs::symlink_metadata(requested)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let path = if is_link {
            std::fs::canonicalize(requested).map_err(io("resolve symlink"))?
        } else {
            requested.to_path_buf()
        };
        let existing = std::fs::metadata(&path).ok();
        crate::fsutil::write_atomic(&path, self.to_text().as_bytes(), 0o600, existing.as_ref())
            .map_err(io("replace"))
    }
}

/// Fuzz entry point: parses arbitrary bytes as a password file, verifies a fixed password
/// against every entry with a cheap scheme, and checks that writing the file back and
/// parsing it again is stable. Panics only on a bug (that is what the fuzzer looks for).
pub fn fuzz_password_line(data: &[u8]) {
    if let Ok(file) = PasswordFile::parse("fuzz", data) {
        let users: Vec<String> = file.users().map(str::to_string).collect();
        for user in users {
            let cheap = match file.hash_of(&user) {
                Some(StoredHash::Sha512 { .. }) => true,
                Some(StoredHash::Pbkdf2Sha512 { iterations, .. }) => *iterations <= 1000,
                _ => false,
            };
            if cheap {
                let _ = file.verify(&user, b"fuzz");
            }
        }
        // What tollgate writes must read back to the same file.
        let text = file.to_text();
        match PasswordFile::parse("fuzz-rewritten", text.as_bytes()) {
            Ok(again) => assert_eq!(again.to_text(), text, "rewrite is not stable"),
            Err(e) => panic!("a parsed file was written back unparseable: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_ending_in_several_carriage_returns_rewrite_unchanged() {
        // Found by the password_file fuzz target: "\r\r" kept one CR as text.
        for input in [&b"\r\r"[..], b"# note\r\r\n", b"\r\r\r\n\r"] {
            fuzz_password_line(input);
        }
    }

    #[test]
    fn sha512_vector_from_definition_matches() {
        // Generated by `mosquitto_passwd -H sha512 -b f bob hunter2` (mosquitto 2.0.11) and
        // cross-checked with Python: base64(sha512(b"hunter2" + salt)).
        let line = "$6$UyWL+WAp4J1nfjuq$ctJnSb45hYQ0d/lZKKYjKiH5XTg/HzYpYP5g8As0hAaWIaXE3rCBZB1C3jgZ6gwPzjBslfxAEOD4ozXIYOj4Xg==";
        let hash = StoredHash::parse(line).expect("vector parses");
        assert!(hash.matches(b"hunter2"));
        assert!(!hash.matches(b"hunter3"));
        assert_eq!(hash.to_line_text(), line);
    }

    #[test]
    fn pbkdf2_vector_matches() {
        let line = "$7$101$IPxFzJQV3c3MmiOH$t4n+k3RiJp87jrUuDAiEbL0rL6kGfYq4ADKl4TnABF0r0Is26wGhOXIWt0WAaH9LT4l59vM/EcuWmPbpnwGMXQ==";
        let hash = StoredHash::parse(line).expect("vector parses");
        assert!(hash.matches(b"secret"));
        assert!(!hash.matches(b"Secret"));
        assert_eq!(hash.to_line_text(), line);
    }

    #[test]
    fn refuses_short_salt_and_wrong_hash_length() {
        let short_salt = format!("$6${}${}", B64.encode([1u8; 8]), B64.encode([0u8; 64]));
        assert!(StoredHash::parse(&short_salt).unwrap_err().contains("salt"));
        let short_hash = format!("$6${}${}", B64.encode([1u8; 12]), B64.encode([0u8; 32]));
        assert!(StoredHash::parse(&short_hash).unwrap_err().contains("hash"));
    }

    #[test]
    fn dummy_hash_keeps_scheme_and_cost() {
        let real = StoredHash::create(b"pw", HashScheme::mosquitto_default()).expect("hash");
        match real.dummy_like() {
            StoredHash::Pbkdf2Sha512 {
                iterations, salt, ..
            } => {
                assert_eq!(iterations, MOSQUITTO_DEFAULT_ITERATIONS);
                assert_eq!(salt.len(), MOSQUITTO_SALT_LEN);
            }
            other => panic!("unexpected dummy {other:?}"),
        }
        let argon = StoredHash::create(
            b"pw",
            HashScheme::Argon2id {
                m_cost: 64,
                t_cost: 1,
                p_cost: 1,
            },
        )
        .expect("hash");
        let StoredHash::Argon2id(dummy) = argon.dummy_like() else {
            panic!("argon2 dummy expected");
        };
        assert!(dummy.contains("m=64,t=1,p=1"), "{dummy}");
        assert!(StoredHash::parse(&dummy).is_ok());
    }
}
