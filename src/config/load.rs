//! Loading: read the file (or the embedded default), check TOML syntax with line and
//! column, layer `TOLLGATE_*` environment overrides on top with the `config` crate,
//! deserialize section by section so one bad section does not hide problems in the
//! next, resolve relative paths against the file's directory, pick a writable state
//! directory for the embedded default, then validate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{FileFormat, Map, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::validate::validate;
use super::{
    AclConfig, AuthConfig, BrokerSettings, Config, ConfigError, ConfigProblem, ListenerConfig,
    LogConfig, ShutdownConfig, DEFAULT_DATA_DIR,
};

/// The annotated default configuration, compiled into the binary.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/tollgate.toml");

/// Top-level keys the file may contain.
const SECTIONS: &[&str] = &[
    "broker",
    "persistence",
    "listener",
    "auth",
    "acl",
    "shutdown",
    "log",
    "bridge",
    "modbus",
    "serial",
    "gpio",
    "metrics",
];

/// Where a configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file given with `-c`.
    File(PathBuf),
    /// `config/tollgate.toml`, compiled in (`tollgate run` without `-c`).
    Embedded,
}

impl ConfigSource {
    /// How problems name this source: the file path, or `<embedded default config>`.
    pub fn label(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => "<embedded default config>".to_string(),
        }
    }

    /// Directory relative paths are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        match self {
            ConfigSource::File(path) => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if parent.is_absolute() {
                    parent.to_path_buf()
                } else {
                    cwd.join(parent)
                }
            }
            ConfigSource::Embedded => cwd,
        }
    }
}

/// A configuration that passed validation, with what should be logged once logging runs.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// Accepted but risky settings (anonymous on a public address, development PKI, ...).
    pub warnings: Vec<String>,
    /// Informational decisions taken while loading (e.g. which state directory).
    pub notices: Vec<String>,
}

/// Load and validate `source` with the process environment.
pub fn load(source: &ConfigSource) -> Result<LoadedConfig, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_with_env(source, &env)
}

/// Load and validate `source` with an explicit environment (tests, reload).
pub fn load_with_env(
    source: &ConfigSource,
    env: &HashMap<String, String>,
) -> Result<LoadedConfig, ConfigError> {
    let label = source.label();
    let text = read_source(source)?;
    let problem = |key: &str, message: String| ConfigProblem {
        file: label.clone(),
        key: key.to_string(),
        message,
    };
    check_syntax(&text).map_err(|message| ConfigError::Invalid(vec![problem("", message)]))?;

    let overrides = env_overrides(env);
    let mut builder =
        config::Config::builder().add_source(config::File::from_str(&text, FileFormat::Toml));
    let mut problems = Vec::new();
    for o in &overrides {
        match builder
            .clone()
            .set_override(o.key.as_str(), o.value.as_str())
        {
            Ok(b) => builder = b,
            Err(e) => problems.push(problem(
                &o.key,
                format!("environment variable {} cannot be applied: {e}", o.var),
            )),
        }
    }
    let table: Map<String, Value> = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Invalid(vec![problem("", e.to_string())]))?;

    let env_note = |key: &str| {
        overrides
            .iter()
            .find(|o| !key.is_empty() && (key_within(key, &o.key) || key_within(&o.key, key)))
            .map(|o| format!(" (set by environment variable {})", o.var))
            .unwrap_or_default()
    };

    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    for key in keys {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(problem(
                key,
                format!(
                    "unknown key{} (known sections: {})",
                    env_note(key),
                    SECTIONS.join(", ")
                ),
            ));
        }
    }

    let mut report = |key: &str, message: String| {
        let note = env_note(key);
        problems.push(problem(key, format!("{message}{note}")));
    };

    let mut broker: BrokerSettings = section(&table, "broker", &mut report);
    broker.persistence = section(&table, "persistence", &mut report);
    let auth: AuthConfig = section(&table, "auth", &mut report);
    let acl: AclConfig = section(&table, "acl", &mut report);
    let shutdown: ShutdownConfig = section(&table, "shutdown", &mut report);
    let log: LogConfig = section(&table, "log", &mut report);
    let listeners = array_section::<ListenerConfig>(&table, "listener", &mut report)
        .into_iter()
        .map(|(index, mut listener)| {
            listener.index = index;
            listener
        })
        .collect();
    let bridges = array_section::<crate::bridge::BridgeConfig>(&table, "bridge", &mut report)
        .into_iter()
        .map(|(_, bridge)| bridge)
        .collect();
    let modbus = array_section::<crate::modbus::ModbusConfig>(&table, "modbus", &mut report)
        .into_iter()
        .map(|(_, bus)| bus)
        .collect();

    let serial = array_section::<crate::serial::SerialConfig>(&table, "serial", &mut report)
        .into_iter()
        .map(|(_, line)| line)
        .collect();

    let gpio: crate::gpio::GpioConfig = section(&table, "gpio", &mut report);
    let metrics: crate::edge::metrics::MetricsConfig = section(&table, "metrics", &mut report);

    let mut config = Config {
        broker,
        listeners,
        auth,
        acl,
        shutdown,
        log,
        bridges,
        modbus,
        serial,
        gpio,
        metrics,
        source: source.clone(),
    };
    resolve_paths(&mut config, &source.base_dir());

    let mut notices = Vec::new();
    let data_dir_overridden = overrides.iter().any(|o| o.key == "broker.data_dir");
    if *source == ConfigSource::Embedded
        && !data_dir_overridden
        && config.broker.data_dir == Path::new(DEFAULT_DATA_DIR)
    {
        let (dir, why) = fallback_data_dir(env, is_writable);
        config.broker.data_dir = dir;
        notices.push(why);
    }

    let mut warnings = stray_environment(env);
    validate(&config, &mut problems, &mut warnings);
    for p in &mut problems {
        if !p.message.contains("environment variable") {
            p.message.push_str(&env_note(&p.key));
        }
    }
    // File order: sections as documented, listeners by position; stable otherwise.
    problems.sort_by_key(|p| problem_rank(&p.key));
    if problems.is_empty() {
        Ok(LoadedConfig {
            config,
            warnings,
            notices,
        })
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The configuration text of `source`.
fn read_source(source: &ConfigSource) -> Result<String, ConfigError> {
    match source {
        ConfigSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })
        }
        ConfigSource::Embedded => Ok(DEFAULT_CONFIG_TOML.to_string()),
    }
}

/// A TOML syntax error, with its line and column.
fn check_syntax(text: &str) -> Result<(), String> {
    let Err(e) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let location = e
        .span()
        .map(|span| line_column(text, span.start))
        .map(|(line, column)| format!("line {line}, column {column}: "))
        .unwrap_or_default();
    Err(format!(
        "TOML syntax error at {location}{}",
        e.message().trim().replace('\n', "; ")
    ))
}

/// An array of tables (`[[listener]]`, `[[bridge]]`): each entry that deserializes,
/// with its index; every problem of every entry is reported with its key path.
fn array_section<T: DeserializeOwned>(
    table: &Map<String, Value>,
    key: &str,
    report: &mut impl FnMut(&str, String),
) -> Vec<(usize, T)> {
    match table.get(key).cloned().map(Value::into_array) {
        None => Vec::new(),
        Some(Err(_)) => {
            report(
                key,
                format!("must be an array of tables: write each {key} as [[{key}]]"),
            );
            Vec::new()
        }
        Some(Ok(values)) => values
            .into_iter()
            .enumerate()
            .filter_map(|(index, value)| {
                deserialize_all::<T>(value, &format!("{key}[{index}]"), report)
                    .map(|entry| (index, entry))
            })
            .collect(),
    }
}

/// `TOLLGATE_*` variables that are not overrides (no `__`): a warning each.
fn stray_environment(env: &HashMap<String, String>) -> Vec<String> {
    let mut stray: Vec<&String> = env
        .keys()
        .filter(|k| k.starts_with("TOLLGATE_") && !k.contains("__"))
        .collect();
    stray.sort();
    stray
        .into_iter()
        .map(|var| format!(
            "environment variable {var} is not a configuration override (those look like TOLLGATE_SECTION__KEY, e.g. TOLLGATE_BROKER__MAX_CONNECTIONS); ignored"
        ))
        .collect()
}

/// Sort key placing a problem where its key sits in a documented file.
fn problem_rank(key: &str) -> (usize, usize) {
    let head = key.split(['.', '[']).next().unwrap_or("");
    let section = SECTIONS
        .iter()
        .position(|s| *s == head)
        .unwrap_or(SECTIONS.len());
    let index = key
        .strip_prefix("listener[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (section, index)
}

/// One `TOLLGATE_*` variable turned into a config key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvOverride {
    var: String,
    key: String,
    value: String,
}

/// `TOLLGATE_BROKER__MAX_CONNECTIONS=5` → `broker.max_connections = "5"`;
/// `TOLLGATE_LISTENER__0__BIND` → `listener[0].bind` (numeric segments index arrays).
fn env_overrides(env: &HashMap<String, String>) -> Vec<EnvOverride> {
    let mut out: Vec<EnvOverride> = env
        .iter()
        .filter_map(|(var, value)| {
            let rest = var.strip_prefix("TOLLGATE_")?;
            // Every key lives in a section, so an override always has a `__`; other
            // TOLLGATE_* variables (scripts' own) are not ours and only get a warning.
            if !rest.contains("__") {
                return None;
            }
            let mut key = String::new();
            for segment in rest.split("__") {
                let segment = segment.to_ascii_lowercase();
                if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
                    key.push_str(&format!("[{segment}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(&segment);
                }
            }
            Some(EnvOverride {
                var: var.clone(),
                key,
                value: value.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

fn section<T: DeserializeOwned + Default>(
    table: &Map<String, Value>,
    key: &str,
    report: &mut impl FnMut(&str, String),
) -> T {
    match table.get(key) {
        None => T::default(),
        Some(value) => deserialize_all(value.clone(), key, report).unwrap_or_default(),
    }
}

/// Deserialize `value` as `T`. On an error, report it, remove the offending key and
/// try again, so every bad key of a section is reported in one run (serde alone stops
/// at the first). Returns `None` when the section cannot be made to deserialize.
fn deserialize_all<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
    report: &mut impl FnMut(&str, String),
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..64 {
        let e = match value.clone().try_deserialize::<T>() {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let (key, message) = describe(&e);
        let mut path = dotted(&key.unwrap_or_default());
        if let Some(field) = unknown_field(&message) {
            path = join_key(&path, field);
        }
        if removed.contains(&path) {
            // A required key we removed because it was wrong: already reported.
            return None;
        }
        report(&join_key(prefix, &path), message);
        removed.push(path.clone());
        if path.is_empty() || !remove_path(&mut value, &path) {
            return None;
        }
    }
    None
}

/// The `config` crate writes a key below an array element as `topic[1]direction`;
/// the key paths tollgate prints (and removes) are `topic[1].direction`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '.' && c != '[' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

fn join_key(prefix: &str, key: &str) -> String {
    if key.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{prefix}{key}")
    } else {
        format!("{prefix}.{key}")
    }
}

/// Remove `a.b[2].c` from a config value; false when the path does not exist.
fn remove_path(value: &mut Value, path: &str) -> bool {
    enum Step {
        Key(String),
        Index(usize),
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            steps.push(Step::Key(name.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else {
                return false;
            };
            let Ok(index) = inner[..end].parse() else {
                return false;
            };
            steps.push(Step::Index(index));
            rest = &inner[end + 1..];
        }
    }
    let Some(last) = steps.pop() else {
        return false;
    };
    let mut current = value;
    for step in steps {
        current = match (step, &mut current.kind) {
            (Step::Key(k), ValueKind::Table(t)) => match t.get_mut(&k) {
                Some(v) => v,
                None => return false,
            },
            (Step::Index(i), ValueKind::Array(a)) => match a.get_mut(i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, &mut current.kind) {
        (Step::Key(k), ValueKind::Table(t)) => t.remove(&k).is_some(),
        (Step::Index(i), ValueKind::Array(a)) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

/// The key path and the message of a `config` crate error, without the crate's own
/// "for key ..." suffix (we print the path ourselves, prefixed with the section).
fn describe(e: &config::ConfigError) -> (Option<String>, String) {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.clone(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At { error, key, .. } => {
            let (inner_key, message) = describe(error);
            (key.clone().or(inner_key), message)
        }
        config::ConfigError::NotFound(key) => (Some(key.clone()), "missing".to_string()),
        config::ConfigError::Message(m) => (None, m.clone()),
        other => (None, other.to_string()),
    }
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    resolve(&mut config.broker.data_dir);
    for l in &mut config.listeners {
        for p in [&mut l.cert, &mut l.key, &mut l.client_ca, &mut l.crl]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
    }
    if let Some(p) = &mut config.auth.password_file {
        resolve(p);
    }
    if let Some(jwt) = &mut config.auth.jwt {
        jwt.keys.iter_mut().for_each(resolve);
    }
    if let Some(p) = &mut config.acl.file {
        resolve(p);
    }
    for b in &mut config.bridges {
        b.resolve_paths(base);
    }
}

/// State directory for the embedded default: `/var/lib/tollgate` when writable, else
/// `$STATE_DIRECTORY` (systemd), `$XDG_STATE_HOME/tollgate`, `$HOME/.local/state/tollgate`.
/// Returns the choice and a sentence saying why.
pub(crate) fn fallback_data_dir(
    env: &HashMap<String, String>,
    writable: impl Fn(&Path) -> bool,
) -> (PathBuf, String) {
    let default = PathBuf::from(DEFAULT_DATA_DIR);
    if writable(&default) {
        return (
            default,
            format!("Using state directory {DEFAULT_DATA_DIR}."),
        );
    }
    let non_empty = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
    let (dir, from) = if let Some(dir) = non_empty("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        let first = dir.split(':').next().unwrap_or(&dir).to_string();
        (PathBuf::from(first), "$STATE_DIRECTORY")
    } else if let Some(dir) = non_empty("XDG_STATE_HOME") {
        (
            PathBuf::from(dir).join("tollgate"),
            "$XDG_STATE_HOME/tollgate",
        )
    } else if let Some(home) = non_empty("HOME") {
        (
            PathBuf::from(home).join(".local/state/tollgate"),
            "$HOME/.local/state/tollgate",
        )
    } else {
        (
            std::env::temp_dir().join("tollgate"),
            "the temporary directory (no $HOME)",
        )
    };
    let why = format!(
        "{DEFAULT_DATA_DIR} is not writable by this user; using state directory {} from {from}.",
        dir.display()
    );
    (dir, why)
}

/// Whether this process could create files in `dir` (or create `dir` itself). Only a
/// probe file is written, and removed at once.
fn is_writable(dir: &Path) -> bool {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return false,
        }
    }
    // Unique per call: two loads at once in one process (tests run in parallel threads)
    // must not find each other's probe and take the directory for unwritable.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = existing.join(format!(".tollgate-write-probe-{}-{n}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// Whether `key` is `prefix` or a key below it (`listener[1].bind` is within `listener[1]`).
fn key_within(key: &str, prefix: &str) -> bool {
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn writability_probes_at_once_in_one_process_do_not_collide() {
        // The probe file was named after the process only: a second load running at the
        // same moment (parallel tests) found it, got AlreadyExists and picked another
        // state directory, so two loads of one config differed.
        let dir = tempfile::tempdir().expect("tempdir");
        let failures = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..300 {
                        if !is_writable(dir.path()) {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(
            failures.into_inner(),
            0,
            "a writable directory read as unwritable"
        );
    }

    #[test]
    fn env_vars_become_dotted_keys_with_array_indices() {
        let o = env_overrides(&env(&[
            ("TOLLGATE_BROKER__MAX_CONNECTIONS", "5"),
            ("TOLLGATE_LISTENER__1__BIND", "127.0.0.1:1"),
            ("PATH", "/bin"),
            ("TOLLGATE_BIN", "/usr/bin/tollgate"),
        ]));
        let keys: Vec<&str> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["broker.max_connections", "listener[1].bind"]);
    }

    #[test]
    fn keys_below_array_elements_are_dotted() {
        assert_eq!(dotted("topic[1]direction"), "topic[1].direction");
        assert_eq!(dotted("topic[1].direction"), "topic[1].direction");
        assert_eq!(dotted("a[0][1]b"), "a[0][1].b");
        assert_eq!(dotted("name"), "name");
    }

    #[test]
    fn state_directory_falls_back_in_documented_order() {
        let never = |_: &Path| false;
        let (d, why) = fallback_data_dir(
            &env(&[("STATE_DIRECTORY", "/run/s:/x"), ("HOME", "/h")]),
            never,
        );
        assert_eq!(d, PathBuf::from("/run/s"));
        assert!(why.contains("$STATE_DIRECTORY"));
        let (d, _) = fallback_data_dir(&env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")]), never);
        assert_eq!(d, PathBuf::from("/x/tollgate"));
        let (d, _) = fallback_data_dir(&env(&[("HOME", "/h")]), never);
        assert_eq!(d, PathBuf::from("/h/.local/state/tollgate"));
        let (d, _) = fallback_data_dir(&env(&[("HOME", "/h")]), |_| true);
        assert_eq!(d, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_column("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_column("abc", 0), (1, 1));
    }

    #[test]
    fn inline_acl_rules_use_the_acl_modules_type_and_name_the_valid_access_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        let listener = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n";
        std::fs::write(
            &path,
            format!(
                "{listener}[[acl.rule]]\nuser = \"u\"\naccess = \"readwrite\"\ntopic = \"a/#\"\n"
            ),
        )
        .expect("write");
        let loaded = load_with_env(&ConfigSource::File(path.clone()), &env(&[])).expect("valid");
        let rule: &crate::acl::InlineRule = &loaded.config.acl.rule[0];
        assert_eq!(rule.access, crate::acl::AccessSpec::ReadWrite);
        assert!(loaded.config.acl.is_configured());

        std::fs::write(
            &path,
            format!("{listener}[[acl.rule]]\naccess = \"sideways\"\ntopic = \"a\"\n"),
        )
        .expect("write");
        let problems = load_with_env(&ConfigSource::File(path), &env(&[]))
            .expect_err("bad access word")
            .problems()
            .join("\n");
        assert!(problems.contains("acl"), "{problems}");
        assert!(
            problems.contains("`read`, `write`, `readwrite`, `deny`"),
            "{problems}"
        );
    }
}
