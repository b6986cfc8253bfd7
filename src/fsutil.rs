//! Crash-safe file replacement for the files tollgate writes itself (password files,
//! PKI keys and certificates, index files): write a new file beside the target, sync it,
//! rename it over the target, sync the directory. A reader sees the old file or the new
//! one, never a mix. It must never leave a temporary file behind or loosen permissions.
//!
//! Also the one permission rule for secret files tollgate reads (TLS private keys, and
//! as a warning password files), PostgreSQL's: the owner may read and write; the group
//! may read only when it is root or the service's own group (so `root:tollgate 0640`
//! works); nobody else may do anything.

use std::fs::{Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replace `path` with `contents`. The new file gets `mode`; with `keep` (the metadata of
/// the file being replaced) it keeps that file's owner where permitted and its owner/group
/// bits, never with access for others.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    keep: Option<&Metadata>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A fresh, unpredictable name opened with create_new: never an existing file or link.
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        let mode = match keep {
            Some(meta) => {
                // Ownership can only be kept when permitted (root, or same owner).
                let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
                (meta.permissions().mode() & 0o660) | (mode & 0o700)
            }
            None => mode,
        };
        // The umask may have narrowed the mode at creation; set exactly what was asked.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename durable; syncing a directory is not supported everywhere.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How a secret file is more exposed than the rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretExposure {
    /// Others (not owner, not group) have some access (`mode & 0o007`).
    Others,
    /// The group may write or execute it (`mode & 0o030`): more than reading.
    GroupWrite,
    /// The group may read it, but the group is neither root nor the service's own.
    ForeignGroup {
        /// The file's group.
        file_group: u32,
        /// The process's effective group, if it could be read.
        service_group: Option<u32>,
    },
}

impl SecretExposure {
    /// What is wrong and the commands that fix it, for `path`.
    pub fn describe(&self, path: &Path) -> String {
        let path = path.display();
        match self {
            SecretExposure::Others => format!(
                "is accessible by others; run `chmod 600 {path}` (or `chmod 640 {path}` to let root's or this service's group read it)"
            ),
            SecretExposure::GroupWrite => format!(
                "is writable by its group; run `chmod 600 {path}`, or `chmod 640 {path}` to leave the group read access only"
            ),
            SecretExposure::ForeignGroup {
                file_group,
                service_group,
            } => {
                let (group, own) = match service_group {
                    Some(gid) if *gid != 0 => (gid.to_string(), format!("gid {gid}")),
                    Some(_) => ("root".to_string(), "root".to_string()),
                    None => ("root".to_string(), "unknown".to_string()),
                };
                format!(
                    "is readable by group {file_group}, which is neither root nor this service's group ({own}); run `chgrp {group} {path}` to keep `chmod 640`, or `chmod 600 {path}`"
                )
            }
        }
    }
}

/// Check permission bits `mode` and group `file_group` of a secret file against the
/// rule, for a service running with effective group `service_group`.
pub fn secret_exposure(
    mode: u32,
    file_group: u32,
    service_group: Option<u32>,
) -> Option<SecretExposure> {
    if mode & 0o007 != 0 {
        Some(SecretExposure::Others)
    } else if mode & 0o030 != 0 {
        Some(SecretExposure::GroupWrite)
    } else if mode & 0o040 != 0 && file_group != 0 && Some(file_group) != service_group {
        Some(SecretExposure::ForeignGroup {
            file_group,
            service_group,
        })
    } else {
        None
    }
}

/// [`secret_exposure`] for a file's metadata and this process's effective group.
pub fn secret_file_exposure(meta: &Metadata) -> Option<SecretExposure> {
    secret_exposure(
        meta.permissions().mode() & 0o7777,
        meta.gid(),
        effective_gid(),
    )
}

/// This process's effective group id, from `/proc/self/status` (std has no getegid
/// and the crate forbids unsafe code). `None` without procfs: then only root's group
/// counts as trusted.
pub fn effective_gid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_gid(&status)
}

/// The second field (effective) of the `Gid:` line: real, effective, saved, filesystem.
fn parse_effective_gid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Gid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rule_owner_only_or_group_read_for_root_or_own_group() {
        let own = Some(1000);
        assert_eq!(secret_exposure(0o600, 1000, own), None);
        assert_eq!(secret_exposure(0o400, 4242, own), None);
        assert_eq!(secret_exposure(0o640, 0, own), None, "root's group");
        assert_eq!(secret_exposure(0o640, 1000, own), None, "own group");
        assert_eq!(secret_exposure(0o440, 1000, own), None);
        assert_eq!(
            secret_exposure(0o640, 12345, own),
            Some(SecretExposure::ForeignGroup {
                file_group: 12345,
                service_group: own
            })
        );
        assert_eq!(
            secret_exposure(0o640, 1000, None),
            Some(SecretExposure::ForeignGroup {
                file_group: 1000,
                service_group: None
            }),
            "unknown own group: only root's group is trusted"
        );
        assert_eq!(
            secret_exposure(0o660, 0, own),
            Some(SecretExposure::GroupWrite)
        );
        for mode in [0o644, 0o604, 0o601, 0o602, 0o666] {
            assert_eq!(
                secret_exposure(mode, 0, own),
                Some(SecretExposure::Others),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn effective_gid_is_the_second_field_of_the_gid_line() {
        let status = "Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t100\t200\t300\t400\nGroups:\t\n";
        assert_eq!(parse_effective_gid(status), Some(200));
        assert_eq!(parse_effective_gid("Name:\tx\n"), None);
        // This process's own group is what a file it creates gets (no setgid directory).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"").expect("write");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(effective_gid(), Some(meta.gid()));
    }

    #[test]
    fn exposure_messages_name_the_file_and_the_fix() {
        let path = Path::new("/etc/tollgate/server.key");
        let text = SecretExposure::Others.describe(path);
        assert!(
            text.contains("chmod 600 /etc/tollgate/server.key"),
            "{text}"
        );
        assert!(text.contains("chmod 640"), "{text}");
        let text = SecretExposure::ForeignGroup {
            file_group: 12345,
            service_group: Some(998),
        }
        .describe(path);
        assert!(
            text.contains("group 12345")
                && text.contains("chgrp 998 /etc/tollgate/server.key")
                && text.contains("chmod 600 /etc/tollgate/server.key"),
            "{text}"
        );
    }

    #[test]
    fn replaces_the_file_with_the_requested_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::fs::write(&path, b"old").expect("write");
        write_atomic(&path, b"new", 0o600, None).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn keeps_group_read_of_the_replaced_file_but_never_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("passwd");
        std::fs::write(&path, b"old").expect("write");
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        let meta = std::fs::metadata(&path).expect("meta");
        write_atomic(&path, b"new", 0o600, Some(&meta)).expect("replace");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
