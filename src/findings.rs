//! Validation findings of the component sections (`[[bridge]]`, `[[modbus]]`): each
//! problem or warning with its key path, so `tollgate check` lists every one at once.
//! A leaf: the sections' validators use it, `config` collects what they return.

use std::path::Path;
use std::time::Duration;

use crate::duration;

/// One validation problem or warning, with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Key path such as `bridge[0].topic[1].pattern` or `modbus[0].device[1].name`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Problems (refuse the file) and warnings (accepted, logged and printed by `check`).
#[derive(Debug, Default)]
pub struct Findings {
    /// Errors.
    pub problems: Vec<Finding>,
    /// Accepted but worth saying.
    pub warnings: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Finding {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            self.error(
                key,
                format!(
                    "{} is out of range: use {} to {}",
                    duration::format(value),
                    duration::format(min),
                    duration::format(max)
                ),
            );
        }
    }

    pub fn readable(&mut self, key: &str, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                self.error(
                    key,
                    format!("{} is a directory, not a file", path.display()),
                );
                false
            }
            Ok(_) => match std::fs::File::open(path) {
                Ok(_) => true,
                Err(e) => {
                    self.error(key, format!("{} cannot be read: {e}", path.display()));
                    false
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.error(key, format!("{} does not exist", path.display()));
                false
            }
            Err(e) => {
                self.error(key, format!("{} cannot be read: {e}", path.display()));
                false
            }
        }
    }
}
