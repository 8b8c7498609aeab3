//! Durable, atomic file writes: the one way this project replaces a file it must not lose.
//!
//! Write a private temporary file in the target's directory, fsync it, rename it over the target,
//! and (when the caller needs the rename itself to survive a power cut) fsync the directory. A
//! reader sees the old file or the new one, never half of one.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The directory a file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the renames and unlinks already done in `dir` durable.
///
/// On macOS `sync_all` is `fcntl(F_FULLFSYNC)` (std's choice), which also empties the drive's
/// write cache: a plain `fsync` there does not. Windows has no directory fsync (a directory
/// cannot be opened as a file, and `FlushFileBuffers` refuses one): NTFS records creates and
/// renames in its metadata journal, and this is a no-op there, as SQLite's directory sync is.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(windows)]
    return std::fs::metadata(dir).map(drop);
    #[cfg(not(windows))]
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically; the file is private (mode 0600). The directory is not
/// synced: callers writing several files sync it once at the end.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |file| file.write_all(bytes))
}

/// Copies `source` to a new file `path`, complete and fsynced before its name appears; fails
/// with `AlreadyExists` rather than replace a file (a queue file name is never reused).
pub fn copy_new(source: &Path, path: &Path) -> io::Result<()> {
    copy_new_prefix(source, u64::MAX, path)
}

/// `source` under the new name `path` without copying: a hard link, or a copy (as
/// [`copy_new`]) only where a link cannot be made (another filesystem). Any other error — above
/// all an existing `path` — is the answer: neither the link nor the copy ever replaces a file.
pub fn link_new(source: &Path, path: &Path) -> io::Result<()> {
    match std::fs::hard_link(source, path) {
        Err(err) if err.kind() == io::ErrorKind::CrossesDevices => copy_new(source, path),
        linked => linked,
    }
}

/// The first `len` bytes of `source` as the new file `path` (as [`copy_new`]).
pub fn copy_new_prefix(source: &Path, len: u64, path: &Path) -> io::Result<()> {
    write_new_with(path, |file| {
        io::copy(&mut io::Read::take(File::open(source)?, len), file).map(drop)
    })
}

/// A new file `path` with the content written by `fill`, complete and fsynced before its name
/// appears; fails with `AlreadyExists` rather than replace a file.
pub fn write_new_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let (mut file, temp_path) = private_temp(path)?;
    fill(&mut file)?;
    file.sync_all()?;
    temp_path.persist_noclobber(path).map_err(|err| err.error)
}

/// Like [`write_atomically`], with the content written by `fill`.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let (mut file, temp_path) = private_temp(path)?;
    fill(&mut file)?;
    file.sync_all()?;
    temp_path.persist(path).map_err(|err| err.error)
}

/// A private temporary file beside `path`, so that a rename to `path` is atomic.
fn private_temp(path: &Path) -> io::Result<(File, tempfile::TempPath)> {
    let temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent_dir(path))?;
    Ok(temp.into_parts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        copy_new(&path, &dir.path().join("g.json")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("g.json")).unwrap(), b"two");
        // Never over an existing file.
        write_atomically(&path, b"three").unwrap();
        let refused = copy_new(&path, &dir.path().join("g.json")).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.path().join("g.json")).unwrap(), b"two");
        sync_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary files left"
        );
    }
}
