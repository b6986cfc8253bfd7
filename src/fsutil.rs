//! Crash-safe file replacement for the files tollgate writes itself (password files,
//! PKI keys and certificates, index files): write a new file beside the target, sync it,
//! rename it over the target, sync the directory. A reader sees the old file or the new
//! one, never a mix. It must never leave a temporary file behind or loosen permissions.

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

#[cfg(test)]
mod tests {
    use super::*;

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
