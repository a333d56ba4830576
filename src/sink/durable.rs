//! Durable, private files: how the spool and the dead letters reach the disk.
//!
//! Both hold executed commands and their context, so they are the sidecar user's alone: files
//! 0600 and their directories 0700, set explicitly rather than left to the process umask (a
//! unit without `UMask=` would otherwise make them world-readable). Writes are atomic: a temp
//! file, fsync, rename; the caller fsyncs the directory once per batch so the renames survive
//! a power cut.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) as 0700, and tightens an existing one we own that
/// others can read. A directory we cannot tighten (someone else's) is used as it is, with a
/// warning: the files in it are 0600 anyway.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(e) = fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
    {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), error = %e,
            "cannot make the directory private (0700); its files are still created 0600");
    }
    Ok(())
}

/// Writes `dir/name` so that it is either absent or complete, even across a crash: a temp
/// file (0600), fsync, rename. (The caller fsyncs the directory, once per batch.)
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // A temp file left by an older version may exist with wider rights: `mode` only
        // applies to new files.
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process umask, restored on drop (tests in this module set it; nothing else does).
    struct Umask(libc::mode_t);
    impl Umask {
        fn set(m: libc::mode_t) -> Self {
            // SAFETY: umask only swaps the process file-creation mask.
            Self(unsafe { libc::umask(m) })
        }
    }
    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::umask(self.0) };
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_dirs_are_private_whatever_the_umask() {
        let _u = Umask::set(0o022);
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/spool");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        write_durably(&dir, "x.json", b"{}").unwrap();
        assert_eq!(mode(&dir.join("x.json")), 0o600);
        // An existing, world-readable directory of ours is tightened.
        let open = base.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        // A stale temp file with wide rights does not pass them on.
        fs::write(open.join("y.json.tmp"), b"old").unwrap();
        fs::set_permissions(open.join("y.json.tmp"), Permissions::from_mode(0o644)).unwrap();
        write_durably(&open, "y.json", b"{}").unwrap();
        assert_eq!(mode(&open.join("y.json")), 0o600);
    }
}
