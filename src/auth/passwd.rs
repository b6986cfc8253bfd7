//! `tollgate passwd`: adds, changes or deletes a user in a password file, with the same
//! flags as `mosquitto_passwd` (`-b`, `-c`, `-D`). Writes argon2id by default and
//! mosquitto `$7$` with `--mosquitto`. It must never print or log a password, and never
//! rewrite a file it could not parse (that would drop the lines it did not understand).

use std::path::PathBuf;

use super::password::{valid_username, HashScheme, PasswordFile, PasswordFileError};

/// Arguments of `tollgate passwd` (mosquitto_passwd compatible where they overlap).
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Add, change or delete a user in a password file (mosquitto_passwd compatible)")]
pub struct PasswdCommand {
    /// Password file to edit.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// User name to add, change or delete.
    #[arg(value_name = "USER")]
    pub user: String,
    /// Password (only with -b; without -b it is prompted for twice).
    #[arg(value_name = "PASSWORD", requires = "batch")]
    pub password: Option<String>,
    /// Batch mode: take the password from the command line (visible in the process list and shell history).
    #[arg(short = 'b', requires = "password", conflicts_with = "delete")]
    pub batch: bool,
    /// Create a new file, overwriting an existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    pub create: bool,
    /// Delete the user instead of setting a password.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Write mosquitto `$7$` (PBKDF2-SHA512, 101 rounds) instead of argon2id, so mosquitto can read the file too.
    #[arg(long)]
    pub mosquitto: bool,
}

/// Why `tollgate passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// Reading, parsing or writing the file failed.
    #[error(transparent)]
    File(#[from] PasswordFileError),
    /// The file does not exist and `-c` was not given.
    #[error("password file {0} does not exist; use -c to create it")]
    Missing(PathBuf),
    /// `-D` for a user that is not in the file.
    #[error("user {user:?} is not in {file}; nothing deleted")]
    UserNotFound {
        /// The user asked for.
        user: String,
        /// The file searched.
        file: PathBuf,
    },
    /// The user name cannot be stored.
    #[error("invalid user name {0:?}: it must be non-empty, contain no ':' or control characters, and not start with '#' or whitespace")]
    InvalidUsername(String),
    /// An empty password would never be accepted by the gateway.
    #[error("empty passwords are not allowed; tollgate refuses them at CONNECT")]
    EmptyPassword,
    /// The two prompted passwords differ.
    #[error("passwords do not match; nothing changed")]
    Mismatch,
    /// The terminal prompt failed.
    #[error(
        "could not read the password from the terminal: {0}; use -b to pass it as an argument"
    )]
    Prompt(#[source] std::io::Error),
}

/// Runs `tollgate passwd`.
pub fn run_passwd(cmd: PasswdCommand) -> Result<(), PasswdError> {
    if !valid_username(&cmd.user) {
        return Err(PasswdError::InvalidUsername(cmd.user));
    }
    let mut file = if cmd.create {
        PasswordFile::new()
    } else if !cmd.file.exists() {
        return Err(PasswdError::Missing(cmd.file));
    } else {
        PasswordFile::load(&cmd.file)?
    };
    if cmd.delete {
        if !file.delete(&cmd.user) {
            return Err(PasswdError::UserNotFound {
                user: cmd.user,
                file: cmd.file,
            });
        }
        file.write(&cmd.file)?;
        return Ok(());
    }
    let password = match cmd.password {
        Some(p) if cmd.batch => p,
        _ => prompt_twice()?,
    };
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let scheme = if cmd.mosquitto {
        HashScheme::mosquitto_default()
    } else {
        HashScheme::argon2id_default()
    };
    file.upsert(&cmd.user, password.as_bytes(), scheme)?;
    file.write(&cmd.file)?;
    Ok(())
}

fn prompt_twice() -> Result<String, PasswdError> {
    let first = rpassword::prompt_password("Password: ").map_err(PasswdError::Prompt)?;
    let second = rpassword::prompt_password("Reenter password: ").map_err(PasswdError::Prompt)?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}
