//! The journal's directory: created if missing, and the usual reasons it
//! cannot be used (a file in the way, no write access, another tether
//! running on it) told in tether's words rather than RocksDB's.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::JournalError;

/// Why `journal.data_dir` cannot hold a journal.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Another process has the database open (RocksDB's `LOCK` file).
    #[error(
        "another tether holds this journal ({}/LOCK is locked): stop it, or give each tether its own journal.data_dir",
        .0.display()
    )]
    Locked(PathBuf),
    /// The path, or one of its parents, is a file.
    #[error("journal.data_dir {}: {}", .dir.display(), in_the_way(dir, file))]
    NotADirectory {
        /// `journal.data_dir`.
        dir: PathBuf,
        /// What is in the way.
        file: PathBuf,
    },
    /// tether's user may not create or write files there.
    #[error("journal.data_dir {}: permission denied (tether runs as uid {uid}): make it writable for that user", .0.display(), uid = euid())]
    PermissionDenied(PathBuf),
    /// The path is on a read-only file system (a container's root, say).
    #[error("journal.data_dir {}: read-only file system: point journal.data_dir at a writable volume", .0.display())]
    ReadOnly(PathBuf),
}

/// Creates `dir` if needed and checks tether can write there, so the
/// common mistakes get a line that says what to fix.
pub(super) fn prepare(dir: &Path) -> Result<(), JournalError> {
    if let Err(source) = std::fs::create_dir_all(dir) {
        return Err(explain_io(dir, source));
    }
    if !dir.is_dir() {
        return Err(DirError::NotADirectory { dir: dir.to_owned(), file: dir.to_owned() }.into());
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| JournalError::Io { path: dir.to_owned(), source: ErrorKind::InvalidInput.into() })?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(explain_io(dir, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// RocksDB's open error, in tether's words where it is a common one.
pub(super) fn explain_open(dir: &Path, e: rocksdb::Error) -> JournalError {
    let text = e.to_string();
    if text.contains("lock") && text.contains("LOCK") {
        return DirError::Locked(dir.to_owned()).into();
    }
    if text.contains("Permission denied") {
        return DirError::PermissionDenied(dir.to_owned()).into();
    }
    if text.contains("Read-only file system") {
        return DirError::ReadOnly(dir.to_owned()).into();
    }
    e.into()
}

fn explain_io(dir: &Path, source: std::io::Error) -> JournalError {
    match source.kind() {
        ErrorKind::PermissionDenied => DirError::PermissionDenied(dir.to_owned()).into(),
        ErrorKind::ReadOnlyFilesystem => DirError::ReadOnly(dir.to_owned()).into(),
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
            let file = dir.ancestors().find(|p| p.exists() && !p.is_dir()).unwrap_or(dir).to_owned();
            DirError::NotADirectory { dir: dir.to_owned(), file }.into()
        }
        _ => JournalError::Io { path: dir.to_owned(), source },
    }
}

fn in_the_way(dir: &Path, file: &Path) -> String {
    match dir == file {
        true => "is a file, not a directory".into(),
        false => format!("{} is a file, not a directory", file.display()),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
